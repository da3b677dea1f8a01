"""How much early stopping saves, and what it costs: the same wide search with and without it.

    python benchmarks/pruning.py [--trials 20] [--epochs 15] [--out benchmarks/results]

Runs a study over learning rates from 1e-6 to 10 for SGD, RMSprop and Adam on digits twice, from the same
seed: once as tuner runs it by default (ASHA, divergence rule on) and once with ``scheduler: none`` and the
divergence rule off. It prints and writes (JSON and a markdown table) the epochs each one trained and the best
validation loss each one found. A benchmark, not a test: the figures are reported, not asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from common import machine, write_report

from tuner import run_study
from tuner.spec import parse_spec

WIDE = {"learning_rate": {"low": 1e-6, "high": 10.0, "log": True}}


def spec_for(trials: int, epochs: int, pruning: dict[str, Any], name: str) -> Any:
    return parse_spec(
        {
            "study": {"name": name, "trials": trials, "seed": 0},
            "data": {"dataset": "digits"},
            "training": {"epochs": epochs},
            "optimizers": {"sgd": WIDE, "rmsprop": WIDE, "adam": WIDE},
            "pruning": pruning,
        },
        source=f"benchmarks/pruning.py:{name}",
    )


def run(trials: int, epochs: int, pruning: dict[str, Any], name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        result = run_study(spec_for(trials, epochs, pruning, name), workdir=workdir)
        wall = time.monotonic() - started
        study = optuna.load_study(study_name=name, storage=result.storage)
        epochs_run = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
    best = result.best
    return {
        "pruning": pruning or "defaults (asha, divergence on)",
        "trials": result.counts(),
        "epochs_trained": epochs_run,
        "epochs_budget": trials * epochs,
        "best_val_loss": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    pruned = run(args.trials, args.epochs, {}, "pruned")
    full = run(args.trials, args.epochs, {"scheduler": "none", "divergence": False}, "full")
    ratio = pruned["epochs_trained"] / full["epochs_trained"]
    gap = None
    if pruned["best_val_loss"] is not None and full["best_val_loss"] is not None:
        gap = pruned["best_val_loss"] / full["best_val_loss"] - 1
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "pruned": pruned,
        "full": full,
        "epochs_ratio": round(ratio, 3),
        "best_val_loss_gap": None if gap is None else round(gap, 4),
    }
    rows = [
        "| run | epochs trained | of budget | best val_loss | complete / pruned / failed | wall s |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for label, r in (("ASHA + divergence rule (default)", pruned), ("no scheduler, no divergence rule", full)):
        counts = r["trials"]
        rows.append(
            f"| {label} | {r['epochs_trained']} | {r['epochs_budget']} | {r['best_val_loss']:.4f} | "
            f"{counts['complete']} / {counts['pruned']} / {counts['failed']} | {r['wall_seconds']} |"
        )
    summary = f"epochs with pruning / without: {ratio:.0%} (target < 60%)"
    if gap is not None:
        summary += f"; best val_loss with pruning {gap:+.1%} against without (target: at most +2%)"
    text = "\n".join([f"{report['date']}, {report['machine']}", "", *rows, "", summary]) + "\n"
    write_report("pruning", report, text, args.out)


if __name__ == "__main__":
    main()
