"""Many short trials at once: the rate at which the driver can start, judge and record trials, with the
training taken out.

    python benchmarks/many_trials.py            # about 4 minutes on 2 cores

A trainable that only sleeps (5 epochs of 0.2 s, a loss that depends on the learning rate), 200 trials, 32
logical CPUs (``ray.init(num_cpus=32)``) on whatever this machine has, ASHA (grace 2 epochs, factor 3, as
tuner's default): ideal wall time about 7 s. Three runners, each in a process of its own:

1. ``tuner``: ``tuner.run_study(..., trainable=fake)``, TPE and MLflow tracking on (SQLite in a temporary
   work directory): everything a launch does but the training;
2. ``ray_optuna``: Ray Tune + OptunaSearch (TPE), no tracking;
3. ``ray_random``: Ray Tune with its own random search, no tracking.

Printed as a table and written to ``benchmarks/results/many_trials.{json,md}``; ``throughput.py`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUNNERS = ("tuner", "ray_optuna", "ray_random")
TRIALS, EPOCHS, EPOCH_SECONDS, CPUS = 200, 5, 0.2, 32


def loss(learning_rate: float, epoch: int) -> float:
    """Best near 3e-3, better with each epoch."""
    return abs(math.log10(learning_rate) + 2.5) + 1.0 / epoch


def fake_for_tuner(config: dict[str, Any], data: Any, **options: Any) -> None:
    """tuner's trainable interface, ``(config, data, *, threads, pruning)``, sleeping instead of training."""
    from ray import tune

    rate = float(config["adam"]["learning_rate"])
    for epoch in range(1, int(config["epochs"]) + 1):
        time.sleep(EPOCH_SECONDS)
        value = loss(rate, epoch)
        tune.report({"epoch": epoch, "val_loss": value, "loss": value})


def fake_for_tune(config: dict[str, Any]) -> None:
    from ray import tune

    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_SECONDS)
        tune.report({"epoch": epoch, "val_loss": loss(float(config["learning_rate"]), epoch)})


def run_tuner(workdir: str) -> dict[str, Any]:
    import ray

    from tuner import run_study
    from tuner.spec import parse_spec

    spec = parse_spec(
        {
            "study": {"name": "many", "trials": TRIALS, "sampler": "tpe", "seed": 0},
            "data": {"dataset": "iris"},
            "training": {"epochs": EPOCHS},
            "optimizers": {"adam": {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}}},
        }
    )
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    result = run_study(spec, workdir=workdir, trainable=fake_for_tuner)
    return {"trials": len(result.trials), "best": result.best.value if result.best else None}


def run_ray(workdir: str, searcher: str) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=EPOCHS, grace_period=2, reduction_factor=3)
    if searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        space = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
        search: Any = OptunaSearch(space, metric="val_loss", mode="min", sampler=optuna.samplers.TPESampler(seed=0))
        param_space = None
    else:
        search, param_space = None, {"learning_rate": tune.loguniform(1e-4, 1e-1)}
    tuner = tune.Tuner(
        fake_for_tune,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", search_alg=search, scheduler=scheduler, num_samples=TRIALS,
            max_concurrent_trials=CPUS, reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=workdir, verbose=0),
    )  # fmt: skip
    results = tuner.fit()
    return {"trials": len(results), "best": results.get_best_result().metrics["val_loss"]}


def child(name: str) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        if name == "tuner":
            result = run_tuner(workdir)
        elif name in ("ray_optuna", "ray_random"):
            result = run_ray(workdir, name.removeprefix("ray_"))
        else:
            raise SystemExit(f"unknown runner {name}")
    print(json.dumps(result))


def measure(name: str) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_AIR_NEW_OUTPUT": "0"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--run", name], capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    # Ray's raylet prints its warnings to the driver's stdout too: the result is the last JSON line.
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return {**result, "wall_seconds": round(wall, 1), "trials_per_second": round(result["trials"] / wall, 1)}


def run_all() -> dict[str, Any]:
    runs = {}
    for name in RUNNERS:
        print(f"running {name} (200 sleeping trials) ...", flush=True)
        runs[name] = measure(name)
    return runs


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        f"{TRIALS} trials x {EPOCHS} epochs of {EPOCH_SECONDS} s (sleep), {CPUS} logical CPUs, ASHA; "
        f"ideal {TRIALS * EPOCHS * EPOCH_SECONDS / CPUS:.0f} s",
        "",
        "| runner | wall s | trials/s | best val_loss |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall_seconds']} | {r['trials_per_second']} | {r['best']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.run:
        child(args.run)
        return
    runs = run_all()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "runs": runs}
    (args.out / "many_trials.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(runs)
    (args.out / "many_trials.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
