"""Does ``tuner lr-find`` pay for itself? The shipped ``search_spaces/optimizers.yaml`` as it is, against the same
spec narrowed by ``tuner lr-find --write``, at the same trial budget, over 5 seeds.

    pip install -e '.[bench]'
    python benchmarks/lr_find.py              # about 15 minutes on 2 cores
    python benchmarks/lr_find.py --seeds 2 --trials 12   # a quick look

Each seed runs the spec with ``study.seed`` set to it (the sampler, the split and the trials' weights), then
``tuner lr-find`` on that spec and seed, then the narrowed spec with the same seed. One local Ray serves all of
it, so no run pays Ray's start. Reported per seed and as medians over the seeds:

- the best val_loss of each run;
- counting lr-find's cost: the narrowed run's best among its first trials whose epochs, added to lr-find's
  steps counted in epochs (an epoch of ``N`` training rows at batch ``B`` is ``ceil(N / B)`` steps), fit in
  the epochs the shipped run's trials trained: the two at the same training work;
- the trials each run needed to reach the shipped run's final best (in the order Optuna numbered them);
- what lr-find cost: its wall time and its steps in epochs.

``--steps 100,300`` compares sweeps of different lengths on the same shipped runs.

Printed and written to ``benchmarks/results/lr_find.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, machine, write_report

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "optimizers.yaml"


def reached(values: list[float | None], target: float) -> int | None:
    """The number of trials (1-based, in trial order) after which the best so far is at most ``target``."""
    best = math.inf
    for i, value in enumerate(values, start=1):
        if value is not None and math.isfinite(value):
            best = min(best, value)
        if best <= target * (1 + 1e-9):
            return i
    return None


def best_within(values: list[float | None], epochs: list[int], budget: float) -> float | None:
    """The best value among the trials (in trial order) whose epochs, added up, fit in ``budget``."""
    spent, best = 0, math.inf
    for value, used in zip(values, epochs, strict=True):
        spent += used
        if spent > budget:
            break
        if value is not None and math.isfinite(value):
            best = min(best, value)
    return best if math.isfinite(best) else None


def run(spec: Any, workdir: Path) -> dict[str, Any]:
    from tuner import run_study

    result = run_study(spec, workdir=workdir)
    by_number = sorted(result.trials, key=lambda t: t.number)
    values = [t.value for t in by_number]
    return {
        "best": min(v for v in values if v is not None),
        "wall": result.wall_seconds,
        "values": values,
        "epochs": [t.epochs for t in by_number],
    }


def one_seed(seed: int, trials: int, steps: list[int], root: Path) -> dict[str, Any]:
    import yaml

    from tuner import lrfind
    from tuner.data import load_dataset
    from tuner.runner import RunOptions
    from tuner.spec import load_spec

    spec = load_spec(SPEC).override(seed=seed, trials=trials, name=f"optimizers-{seed}")
    plain = run(spec, root / f"plain-{seed}")
    target = plain["best"]
    plain["reached"] = reached(plain["values"], target)
    data = load_dataset(spec.data, seed=seed)
    steps_per_epoch = math.ceil(len(data.x_train) / int(spec.training.batch_size))  # type: ignore[arg-type]
    budget = sum(plain["epochs"])
    row: dict[str, Any] = {"seed": seed, "plain": plain, "epochs_per_trial": spec.training.epochs, "lr_find": {}}
    source = root / f"spec-{seed}.yaml"
    source.write_text(yaml.safe_dump(spec.to_doc(), sort_keys=False))
    for n in steps:
        started = time.monotonic()
        found = lrfind.find(spec, RunOptions(workdir=root / f"narrow-{seed}-{n}"), steps=n, log=False)
        cost_wall = time.monotonic() - started
        narrowed_file = root / f"narrowed-{seed}-{n}.yaml"
        narrowed_file.write_text(lrfind.narrowed(source, found.suggestions, spec))
        narrow = run(load_spec(narrowed_file), root / f"narrow-{seed}-{n}")
        narrow["reached"] = reached(narrow["values"], target)
        cost_epochs = sum(len(s.loss) + 1 for s in found.sweeps) / steps_per_epoch
        narrow["best_at_equal_epochs"] = best_within(narrow["values"], narrow["epochs"], budget - cost_epochs)
        row["lr_find"][str(n)] = {
            "suggested": {s.optimizer: [s.low, s.high] for s in found.suggestions},
            "wall": cost_wall,
            "epochs": cost_epochs,
            "narrowed": narrow,
        }
    return row


def markdown(report: dict[str, Any]) -> str:
    rows = report["runs"]
    lines = [
        f"{report['date']}, {report['machine']}; `search_spaces/optimizers.yaml`, {report['trials']} trials, "
        f"seeds {', '.join(str(r['seed']) for r in rows)}. Epochs: those the trials trained (ASHA stops most "
        "early), and lr-find's steps counted in epochs of the training data.",
        "",
        "| seed | lr-find steps | best val_loss: shipped / narrowed | narrowed, at the shipped run's epochs less "
        "lr-find's | trials to the shipped run's best: shipped / narrowed | epochs: shipped / narrowed + lr-find |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        plain = r["plain"]
        for n, lf in r["lr_find"].items():
            narrow = lf["narrowed"]
            equal = narrow["best_at_equal_epochs"]
            reached = narrow["reached"] if narrow["reached"] is not None else "never"
            cells = [
                str(r["seed"]),
                n,
                f"{plain['best']:.4f} / {narrow['best']:.4f}",
                f"{equal:.4f}" if equal is not None else "none within",
                f"{plain['reached']} / {reached}",
                f"{sum(plain['epochs'])} / {sum(narrow['epochs'])} + {lf['epochs']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for n, s in report["summary"].items():
        lines.append(
            f"- lr-find with {n} steps (median over seeds): best val_loss {s['plain_best']:.4f} shipped, "
            f"{s['narrowed_best']:.4f} narrowed, {s['narrowed_equal']:.4f} narrowed within the shipped run's epochs "
            f"less lr-find's ({s['equal_wins']} of {len(rows)} seeds better than shipped); trials to the shipped "
            f"run's best {s['plain_reached']} shipped, {s['narrowed_reached']} narrowed; lr-find "
            f"{s['lr_find_wall']:.1f} s, {s['lr_find_epochs']:.0f} epochs' worth of steps."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", default="300", help="lr-find's steps per sweep, comma-separated to compare")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    steps = [int(n) for n in args.steps.split(",")]
    import ray

    from tuner.trainable import WORKER_ENV

    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": dict(WORKER_ENV)})
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.seeds):
            rows.append(one_seed(seed, args.trials, steps, Path(root)))
            print(f"seed {seed}: done", file=sys.stderr)
    summary = {}
    inf = math.inf
    for n in map(str, steps):
        runs = [(r["plain"], r["lr_find"][n]) for r in rows]
        summary[n] = {
            "plain_best": statistics.median(p["best"] for p, _ in runs),
            "narrowed_best": statistics.median(lf["narrowed"]["best"] for _, lf in runs),
            "narrowed_equal": statistics.median(lf["narrowed"]["best_at_equal_epochs"] or inf for _, lf in runs),
            "equal_wins": sum(1 for p, lf in runs if (lf["narrowed"]["best_at_equal_epochs"] or inf) < p["best"]),
            "plain_reached": statistics.median(p["reached"] for p, _ in runs),
            "narrowed_reached": statistics.median(lf["narrowed"]["reached"] or inf for _, lf in runs),
            "lr_find_wall": statistics.median(lf["wall"] for _, lf in runs),
            "lr_find_epochs": statistics.median(lf["epochs"] for _, lf in runs),
        }
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "trials": args.trials, "runs": rows}
    report["summary"] = summary
    write_report("lr_find", report, markdown(report), args.out or RESULTS, indent=1)


if __name__ == "__main__":
    main()
