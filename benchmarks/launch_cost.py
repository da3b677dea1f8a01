"""Where a launch's fixed cost goes, cold and warm (``tuner up``): one trial of one epoch on iris, timed step
by step on the driver and in the worker.

    python benchmarks/launch_cost.py [--repeat 3]

Each launch runs in a fresh process, as ``tuner launch`` does. The steps: importing tuner's runner (Ray,
Optuna, MLflow), the data read and the stores open, Ray ready (started, or reached; beside the stores), the
trial's worker process started (Ray starts workers for each job), TensorFlow imported there, the trial done
(its first and only result), the launch done (records closed, Ray stopped or left). Printed as a table
(medians) and written to ``benchmarks/results/launch_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPEC = {
    "study": {"name": "cost", "trials": 1, "seed": 0},
    "data": {"dataset": "iris"},
    "training": {"epochs": 1},
    "optimizers": {"adam": {}},
}
STEPS = ("imports", "stores", "ray", "worker", "tensorflow", "trial", "launch")


def timed_trainable(out: Path) -> Any:
    """tuner's trainer, noting in ``out`` when its worker process started and when TensorFlow was imported
    there (a worker of tuner up's Ray does not share the driver's environment: the path travels with it)."""

    def trainable(config: dict[str, Any], data: Any, **options: Any) -> None:
        import psutil

        from tuner.trainable import train_trial

        marks = {"worker": psutil.Process().create_time()}
        import tuner.engine  # noqa: F401  (TensorFlow)

        marks["tensorflow"] = time.time()
        out.write_text(json.dumps(marks))
        train_trial(config, data, **options)

    return trainable


def one_launch(workdir: str) -> None:
    """In a child process: one launch, its steps as seconds since the process started."""
    import psutil

    began = psutil.Process().create_time()
    from tuner import service

    served = service.find(workdir)
    if served is not None:
        os.environ.update(service.auth_environment(served))
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"  # as the CLI does
    from tuner import runner
    from tuner.spec import parse_spec

    marks: dict[str, float] = {"imports": time.time()}
    prepare, init_ray = runner._prepare, runner._init_ray

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        out = prepare(*args, **kwargs)
        marks["stores"] = time.time()
        return out

    def timed_init_ray(*args: Any, **kwargs: Any) -> None:  # in the launch's Ray thread, beside the stores
        init_ray(*args, **kwargs)
        marks["ray"] = time.time()

    runner._prepare, runner._init_ray = timed_prepare, timed_init_ray
    worker_marks = Path(workdir) / "worker-marks.json"

    def progress(outcome: Any) -> None:
        marks["trial"] = time.time()

    runner.run_study(
        parse_spec(SPEC), workdir=workdir, service=served, trainable=timed_trainable(worker_marks), progress=progress
    )
    marks["launch"] = time.time()
    marks.update(json.loads(worker_marks.read_text()))
    print(json.dumps({k: round(v - began, 2) for k, v in marks.items()}))


def measure(workdir: str) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", workdir], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the launch failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_launch(args.child)
        return
    tuner = str(Path(sys.executable).with_name("tuner"))
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as workdir:
            runs["cold"].append(measure(workdir))
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run([tuner, "up", "--workdir", workdir], check=True, capture_output=True)
        try:
            for _ in range(args.repeat):
                runs["warm"].append(measure(workdir))
        finally:
            subprocess.run([tuner, "down", "--workdir", workdir], check=True, capture_output=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs",
        "runs": runs,
        "median": {kind: {s: median([r[s] for r in found]) for s in STEPS} for kind, found in runs.items()},
    }
    lines = [
        f"{report['date']}, {report['machine']}: seconds since the launch's process started (median of {args.repeat})",
        "",
        "| step | cold | warm |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {s} | {report['median']['cold'][s]} | {report['median']['warm'][s]} |" for s in STEPS]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "launch_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "launch_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
