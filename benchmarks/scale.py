"""A thousand trials: does a study keep its pace and its memory as trials accumulate?

    python benchmarks/scale.py                 # about 3 minutes on 2 cores
    python benchmarks/scale.py --trials 300    # a quicker look
    python benchmarks/scale.py --trials 300 --profile    # where the driver's time goes (py-spy)

Two measurements:

1. **The launch.** ``tuner launch`` of 1,000 trials x 1 epoch on iris, TPE, 2 at a time, tracking on (MLflow and
   Optuna in SQLite in a temporary work directory), as a user runs it. The parent reads the launch's progress
   lines as they come and samples the driver process's memory (RSS of the ``tuner launch`` process alone; Ray's
   processes are not in it) and its CPU time every 0.2 s. Reported: the wall time and the driver's CPU time per
   trial over the first 100 and the last 100 trials, and the driver's memory at the first result, at the 100th
   and at the end. With ``--profile``, py-spy samples the driver meanwhile (every thread that is not idle) and
   the functions that take the most of it are listed, in milliseconds per trial.
2. **The sampler.** Optuna's TPE slows as trials accumulate: each ask fits its Parzen estimators to every
   finished trial. The same space, asked and told 1,000 times in a fresh SQLite study (tuner's storage, and
   tuner's sampler settings) with a synthetic objective, timed per ask; RandomSampler beside it for the part
   that is storage and bookkeeping. Reported per 100 trials.

Printed and written to ``benchmarks/results/scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import machine, write_report

HERE = Path(__file__).resolve().parent
WINDOW = 100


def spec_doc(trials: int, sampler: str = "tpe") -> dict[str, Any]:
    lr = {"low": 1e-4, "high": 1e-1, "log": True}
    return {
        "study": {"name": "scale", "trials": trials, "concurrency": 2, "sampler": sampler, "seed": 0},
        "data": {"dataset": "iris"},
        "model": {"layers": 1, "units": 32},
        "training": {"epochs": 1, "batch_size": 32},
        "optimizers": {
            "sgd": {"learning_rate": lr, "momentum": {"low": 0.0, "high": 0.9}},
            "adam": {"learning_rate": lr, "beta_1": {"low": 0.8, "high": 0.99}},
        },
    }


# --------------------------------------------------------------------------------------------- the launch


def launch(trials: int, profile: Path | None = None) -> dict[str, Any]:
    import psutil
    import yaml

    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        spec = Path(workdir) / "scale.yaml"
        spec.write_text(yaml.safe_dump(spec_doc(trials)))
        tuner = str(Path(sys.executable).with_name("tuner"))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        started = time.monotonic()
        errors = open(Path(workdir) / "stderr.txt", "w+")  # noqa: SIM115 (read below): a pipe could fill and stall
        child = subprocess.Popen(
            [tuner, "launch", str(spec), "--workdir", workdir, "--json"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        driver = psutil.Process(child.pid)
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(child.pid), "-f", "raw",
                 "--nolineno", "-r", str(PROFILE_RATE), "-o", str(profile)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        samples: list[tuple[float, int, float]] = []  # (seconds since start, driver RSS bytes, CPU seconds)

        def sample() -> None:
            while child.poll() is None:
                try:
                    cpu = driver.cpu_times()
                    samples.append((time.monotonic() - started, driver.memory_info().rss, cpu.user + cpu.system))
                except psutil.Error:
                    return
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ended: list[float] = []  # seconds since start at which each trial's progress line came
        lines = []
        for line in child.stdout or ():
            if line.startswith("["):  # [  1/1000] trial #0 complete ...
                ended.append(time.monotonic() - started)
            lines.append(line)
        errors.seek(0)
        err = errors.read()
        errors.close()
        if child.wait() != 0:
            raise SystemExit(f"tuner launch failed:\n{err[-3000:]}")
        wall = time.monotonic() - started
        sampler.join()
        if spy is not None and spy.wait(timeout=120) != 0:
            raise SystemExit(f"py-spy could not sample the driver (exit {spy.returncode}; it needs ptrace rights)")
        summary = json.loads(lines[-1])

    def at(t: float) -> tuple[float, int, float]:
        before = [s for s in samples if s[0] <= t]
        return before[-1] if before else samples[0]

    def rss_at(t: float) -> float:
        return at(t)[1] / 2**20

    def cpu_ms_per_trial(start: float, end: float) -> float:
        return round((at(end)[2] - at(start)[2]) / (WINDOW - 1) * 1000, 1)

    first, hundredth = ended[0], ended[min(WINDOW, len(ended)) - 1]
    during = max(rss for t, rss, _ in samples if hundredth <= t <= ended[-1]) / 2**20
    after = max((rss for t, rss, _ in samples if t > ended[-1]), default=0) / 2**20
    return {
        "trials": len(ended),
        "complete": summary["trials"]["complete"],
        "wall_seconds": round(wall, 1),
        "first_result_seconds": round(first, 1),
        "ms_per_trial_first_100": round((ended[WINDOW - 1] - ended[0]) / (WINDOW - 1) * 1000, 1),
        "ms_per_trial_last_100": round((ended[-1] - ended[-WINDOW]) / (WINDOW - 1) * 1000, 1),
        "driver_cpu_ms_per_trial_first_100": cpu_ms_per_trial(ended[0], ended[WINDOW - 1]),
        "driver_cpu_ms_per_trial_last_100": cpu_ms_per_trial(ended[-WINDOW], ended[-1]),
        "driver_rss_mb": {
            "first_result": round(rss_at(first)),
            "trial_100": round(rss_at(hundredth)),
            "last_trial": round(rss_at(ended[-1])),
            "peak_from_trial_100_to_last": round(during),
            "peak_after_last_trial": round(after),  # the study's report: tables, plots, artifacts
        },
        "driver_rss_growth_mb": round(during - rss_at(hundredth), 1),
        "driver_rss_growth_to_end_mb": round(max(during, after) - rss_at(hundredth), 1),
    }


PROFILE_RATE = 50  # py-spy samples per second
#: Where the driver's time goes: (what, the frame that starts it). A sample counts for each of these that is on
#: its stack. tuner's own code is counted apart: samples whose innermost frame of tuner's or a library's is tuner's.
POINTS = (
    ("Tune's loop (all of the below that runs in it)", "TuneController.step"),
    ("the searcher's suggestion (tuner's StudySearch.suggest)", "StudySearch.suggest"),
    ("Optuna's ask", "Study.ask"),
    ("TPE's sampling", "TPESampler._sample"),
    ("Optuna reading trials back from the storage", "_CachedStorage._read_trials_from_remote_storage"),
    ("Tune's handling of a result", "TuneController._schedule_trial_task.<locals>._on_result"),
    ("Tune's experiment checkpoint", "TuneController.checkpoint"),
    ("the outbox's thread (sending to MLflow)", "Outbox._loop"),
    ("SQLAlchemy commits (Optuna's and MLflow's)", "Session.commit"),
)
LIBRARIES = ("optuna/", "ray/", "mlflow/", "sqlalchemy/", "numpy/", "pandas/", "pyarrow/", "click/", "matplotlib/")


def profile_summary(path: Path, trials: int) -> list[dict[str, Any]]:
    """The driver's time under each of :data:`POINTS`, in ms per trial (the whole launch's samples over its
    trials, start and end included) and as a share of all samples (every thread that was not idle).

    py-spy's raw format is one line per distinct stack, ``frame;frame;...;frame COUNT``, each frame
    ``function (module/file.py)``.
    """
    under = dict.fromkeys((label for label, _ in POINTS), 0)
    own = total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        for label, start in POINTS:
            if any(frame.startswith(f"{start} (") for frame in frames):
                under[label] += n
        ours = [f for f in frames if "(tuner/" in f or any(f"({lib}" in f for lib in LIBRARIES)]
        if ours and "(tuner/" in ours[-1]:
            own += n
    under["tuner's own code, with the standard library it calls"] = own
    ms = 1000 / PROFILE_RATE / trials
    share = 1 / max(total, 1)
    return [{"what": k, "ms_per_trial": round(v * ms, 1), "share": round(v * share, 3)} for k, v in under.items()]


# --------------------------------------------------------------------------------------------- the sampler


def objective(config: dict[str, Any]) -> float:
    """Best near a learning rate of 3e-3, a little better with Adam; deterministic."""
    name = config["optimizer"]
    rate = float(config[name]["learning_rate"])
    return abs(math.log10(rate) + 2.5) + (0.1 if name == "sgd" else 0.0)


def sampler_times(trials: int, sampler_name: str) -> list[float]:
    """Seconds per ask (ask, plus drawing the configuration the way a launch does), trial by trial."""
    import optuna

    from tuner.search import make_sampler, open_storage
    from tuner.space import SearchSpace
    from tuner.spec import parse_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_spec(spec_doc(trials, sampler_name))
    space = SearchSpace(spec)
    with tempfile.TemporaryDirectory(prefix="scale-sampler-") as workdir:
        storage = open_storage(f"sqlite:///{workdir}/optuna.db")
        study = optuna.create_study(study_name="scale", storage=storage, sampler=make_sampler(sampler_name, 0))
        times = []
        for _ in range(trials):
            started = time.perf_counter()
            trial = study.ask()
            config = space(trial)
            times.append(time.perf_counter() - started)
            study.tell(trial, objective(config))
        storage.engine.dispose()
    return times


def per_window(times: list[float]) -> list[float]:
    """Median milliseconds per ask in each window of 100 trials."""
    return [round(statistics.median(times[i : i + WINDOW]) * 1000, 1) for i in range(0, len(times), WINDOW)]


# --------------------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    run, rss = report["launch"], report["launch"]["driver_rss_mb"]
    windows = report["sampler_ms_per_ask"]
    lines = [
        f"{report['date']}, {report['machine']}; {run['trials']} trials x 1 epoch on iris, TPE, 2 at a time, "
        "tracking on",
        "",
        "| | first 100 trials | last 100 trials |",
        "| --- | ---: | ---: |",
        f"| wall ms per trial | {run['ms_per_trial_first_100']} | {run['ms_per_trial_last_100']} |",
        f"| driver CPU ms per trial | {run['driver_cpu_ms_per_trial_first_100']} | "
        f"{run['driver_cpu_ms_per_trial_last_100']} |",
        f"| driver RSS MB | {rss['trial_100']} (at trial 100) | {rss['last_trial']} (at the last; peak "
        f"{rss['peak_from_trial_100_to_last']}) |",
        "",
        f"Launch: {run['wall_seconds']} s in all, first result at {run['first_result_seconds']} s, "
        f"{run['complete']} of {run['trials']} trials COMPLETE; driver memory grew "
        f"**{run['driver_rss_growth_mb']:+.0f} MB** at most from trial 100 to the last (limit 100 MB); "
        f"{run['driver_rss_growth_to_end_mb']:+.0f} MB at most counting the study's report after the last trial "
        f"(peak {rss['peak_after_last_trial']} MB).",
    ]
    if windows:
        count = len(next(iter(windows.values())))
        lines += [
            "",
            "Sampler: median ms per ask, by window of 100 trials (SQLite storage, tuner's settings):",
            "",
            "| sampler | " + " | ".join(f"{i * WINDOW + 1}-{(i + 1) * WINDOW}" for i in range(count)) + " |",
            "| --- | " + " | ".join("---:" for _ in range(count)) + " |",
        ]
    for name, values in windows.items():
        lines.append(f"| {name} | " + " | ".join(str(v) for v in values) + " |")
    if report.get("profile"):
        lines += [
            "",
            "Driver profile (py-spy, every thread that is not idle; the launch above ran under it, so its times"
            " are a little longer than without):",
            "",
            "| where | ms per trial | share of samples |",
            "| --- | ---: | ---: |",
        ]
        for row in report["profile"]:
            lines.append(f"| {row['what']} | {row['ms_per_trial']} | {row['share']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--profile", action="store_true", help="sample the driver with py-spy (in the bench extra)")
    parser.add_argument("--skip-sampler", action="store_true", help="skip timing the samplers' asks")
    args = parser.parse_args()
    if args.trials < 2 * WINDOW:
        parser.error(f"--trials: at least {2 * WINDOW}, to compare the first {WINDOW} with the last")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"launching {args.trials} trials ...", flush=True)
    # A profiled run is slowed by its sampling: its report has files of its own, beside the plain run's.
    stem = "scale-profiled" if args.profile else "scale"
    profile = args.out / "scale-profile.txt" if args.profile else None
    report["launch"] = launch(args.trials, profile)
    if profile is not None:
        report["profile"] = profile_summary(profile, args.trials)
    report["sampler_ms_per_ask"] = {}
    if not args.skip_sampler:
        print("timing the samplers' asks ...", flush=True)
        report["sampler_ms_per_ask"] = {n: per_window(sampler_times(args.trials, n)) for n in ("tpe", "random")}
    write_report(stem, report, markdown(report), args.out)


if __name__ == "__main__":
    main()
