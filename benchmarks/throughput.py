"""tuner against the tools a user would pick instead, side by side on this machine, in one invocation.

    pip install -e '.[bench]'
    python benchmarks/throughput.py                # W2: 48 trials x 20 epochs; about 10 minutes on 2 cores
    python benchmarks/throughput.py --trials 12 --epochs 10 --skip-overhead   # a quicker look

Workload W2: digits, an MLP with one hidden layer of 128 relu units, batch 64, a mix of SGD / RMSprop / Adam
(learning rate 1e-3..1e-1, log), no pruning, 2 trials at a time where the runner allows it:

1. ``tuner``: ``tuner launch`` with tracking on (MLflow in SQLite): the real product path, cold: the launch
   starts its own Ray and opens the stores;
   ``tuner_warm``: the same launch in a work directory where ``tuner up`` runs a Ray head and an MLflow server
   (started before the measurement, as a user starts it once; its processes are not in the peak RSS);
2. ``keras_loop``: a plain sequential loop: build, compile, ``model.fit(epochs=20, validation_data=...)``;
3. ``ray_optuna``: Ray Tune + OptunaSearch, a function trainable reporting each epoch from a Keras callback,
   ``reuse_actors=True``;
4. ``keras_tuner``: Keras Tuner's RandomSearch.

Each runs in its own process tree; the parent measures wall seconds and peak memory (RSS summed over the
tree, Ray's processes included), and for tuner the seconds to its first trial's result and the driver's CPU
milliseconds per trial while trials run (``benchmarks/scale.py --profile`` shows where they go). Then: the fixed cost of
a launch, cold and warm (a 1-trial x 1-epoch launch on iris, three times each, median); tuner's wall seconds per
trial beyond the training itself (200 trials x 1 epoch on iris, tracking on), and how much a worker's memory
grows over 100 trials; and ``many_trials.py``'s 200 sleeping trials. Everything is printed and written to
``benchmarks/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine, write_report

HERE = Path(__file__).resolve().parent
RUNNERS = ("tuner", "tuner_warm", "keras_loop", "ray_optuna", "keras_tuner")
OPTIMIZERS = ("sgd", "rmsprop", "adam")


# --------------------------------------------------------------------------------------------- the workload


def spec_text(trials: int, epochs: int, dataset: str = "digits") -> str:
    lr = "{low: 1.0e-3, high: 1.0e-1, log: true}"
    return f"""
study: {{name: w2, trials: {trials}, concurrency: 2, sampler: random, seed: 0}}
data: {{dataset: {dataset}}}
model: {{layers: 1, units: 128, activation: relu}}
training: {{epochs: {epochs}, batch_size: 64}}
pruning: {{scheduler: none, divergence: false}}
optimizers:
  sgd: {{learning_rate: {lr}, momentum: {{low: 0.0, high: 0.9}}}}
  rmsprop: {{learning_rate: {lr}, rho: {{low: 0.8, high: 0.99}}}}
  adam: {{learning_rate: {lr}, beta_1: {{low: 0.8, high: 0.99}}}}
"""


def configs(trials: int) -> list[dict[str, Any]]:
    """The peers' configurations: the same space, drawn at random (seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(trials):
        name = str(rng.choice(OPTIMIZERS))
        params: dict[str, Any] = {"learning_rate": float(10 ** rng.uniform(-3, -1))}
        extra = {"sgd": ("momentum", 0.0, 0.9), "rmsprop": ("rho", 0.8, 0.99), "adam": ("beta_1", 0.8, 0.99)}[name]
        params[extra[0]] = float(rng.uniform(extra[1], extra[2]))
        out.append({"optimizer": name, **params})
    return out


def digits() -> tuple[Any, ...]:
    from tuner.data import load_dataset
    from tuner.spec import parse_spec

    data = load_dataset(parse_spec({"data": {"dataset": "digits"}, "optimizers": {"sgd": {}}}).data, seed=0)
    return data.x_train, data.y_train, data.x_val, data.y_val


def keras_model(config: dict[str, Any]) -> Any:
    """What a user writes: a Sequential MLP compiled with the optimizer of the configuration."""
    import keras

    name = config["optimizer"]
    params = {k: v for k, v in config.items() if k != "optimizer"}
    optimizer = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    net = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    net.compile(optimizer=optimizer[name](**params), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


# --------------------------------------------------------------------------------------------- the runners


def run_keras_loop(trials: int, epochs: int) -> dict[str, Any]:
    import keras

    x, y, xv, yv = digits()
    for i, config in enumerate(configs(trials)):
        keras.backend.clear_session()
        keras.utils.set_random_seed(i)
        keras_model(config).fit(x, y, batch_size=64, epochs=epochs, validation_data=(xv, yv), verbose=0)
    return {"trials": trials, "epochs": trials * epochs}


def optuna_space(trial: Any) -> None:
    """The W2 space as an Optuna define-by-run function (module level: OptunaSearch pickles it)."""
    name = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
    trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
    low, high = (0.0, 0.9) if name == "sgd" else (0.8, 0.99)
    trial.suggest_float({"sgd": "momentum", "rmsprop": "rho", "adam": "beta_1"}[name], low, high)


def run_ray_optuna(trials: int, epochs: int, workdir: str) -> dict[str, Any]:
    import keras
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict[str, Any], data: tuple[Any, ...]) -> None:
        x, y, xv, yv = data

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                tune.report({"val_loss": float((logs or {})["val_loss"]), "epoch": epoch + 1})

        keras.backend.clear_session()
        keras_model(dict(config)).fit(
            x, y, batch_size=64, epochs=epochs, validation_data=(xv, yv), verbose=0, callbacks=[Report()]
        )

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    search = OptunaSearch(optuna_space, metric="val_loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0))
    tuner = tune.Tuner(
        tune.with_parameters(trainable, data=digits()),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=workdir, verbose=0),
    )
    results = tuner.fit()
    epochs_run = sum(int(r.metrics.get("epoch", 0)) for r in results)
    ray.shutdown()
    return {"trials": trials, "epochs": epochs_run}


def run_keras_tuner(trials: int, epochs: int, workdir: str) -> dict[str, Any]:
    import keras_tuner as kt

    def build(hp: kt.HyperParameters) -> Any:
        name = hp.Choice("optimizer", list(OPTIMIZERS))
        config = {"optimizer": name, "learning_rate": hp.Float("learning_rate", 1e-3, 1e-1, sampling="log")}
        key, low, high = {"sgd": ("momentum", 0.0, 0.9), "rmsprop": ("rho", 0.8, 0.99), "adam": ("beta_1", 0.8, 0.99)}[
            name
        ]
        with hp.conditional_scope("optimizer", [name]):
            config[key] = hp.Float(key, low, high)
        return keras_model(config)

    x, y, xv, yv = digits()
    search = kt.RandomSearch(
        build, objective="val_loss", max_trials=trials, seed=0, directory=workdir, project_name="w2", overwrite=True
    )
    search.search(x, y, batch_size=64, epochs=epochs, validation_data=(xv, yv), verbose=0)
    return {"trials": len(search.oracle.trials), "epochs": len(search.oracle.trials) * epochs}


def tuner_cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("tuner")), *args]


def run_tuner(trials: int, epochs: int, workdir: str, dataset: str = "digits") -> dict[str, Any]:
    """``tuner launch`` in ``workdir`` (warm when ``tuner up`` runs there); the seconds to its first trial's
    result are read off its progress lines as they come, and the driver's CPU time at each (the launch process
    alone: the trials run in Ray's worker processes), for its CPU time per trial while trials run."""
    import psutil

    spec = Path(workdir) / "w2.yaml"
    spec.write_text(spec_text(trials, epochs, dataset))
    started = time.monotonic()
    first = None
    launch = subprocess.Popen(
        tuner_cli("launch", str(spec), "--workdir", workdir, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    driver = psutil.Process(launch.pid)
    lines, cpu = [], []
    for line in launch.stdout or ():
        if line.startswith("["):  # [ 1/48] trial #0 complete ...
            first = first or time.monotonic() - started
            with contextlib.suppress(psutil.Error):
                cpu.append(sum(driver.cpu_times()[:2]))
        lines.append(line)
    err = launch.stderr.read() if launch.stderr else ""
    if launch.wait() != 0:
        raise SystemExit(f"tuner launch failed: {err}")
    summary = json.loads(lines[-1])
    import optuna

    study = optuna.load_study(study_name="w2", storage=summary["storage"])
    epochs_run = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
    per_trial = (cpu[-1] - cpu[0]) / (len(cpu) - 1) * 1000 if len(cpu) > 1 else None
    return {
        "trials": len(study.trials),
        "epochs": epochs_run,
        "first_result_seconds": round(first or 0.0, 2),
        "driver_cpu_ms_per_trial": None if per_trial is None else round(per_trial, 1),
    }


class Service:
    """``tuner up`` in a work directory of its own for as long as the ``with`` block runs."""

    def __enter__(self) -> str:
        self.workdir = tempfile.mkdtemp(prefix="w2-warm-")
        subprocess.run(tuner_cli("up", "--workdir", self.workdir), check=True, capture_output=True)
        return self.workdir

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(tuner_cli("down", "--workdir", self.workdir), check=True, capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def epoch_seconds(dataset: str) -> dict[str, Any]:
    """tuner's own training time for one epoch (train and validate), warm, in this process."""
    from tuner import engine
    from tuner.data import load_dataset
    from tuner.spec import parse_spec

    data = load_dataset(parse_spec({"data": {"dataset": dataset}, "optimizers": {"sgd": {}}}).data, seed=0)
    config = {"optimizer": "adam", "adam": {}, "layers": 1, "units": 128, "activation": "relu", "dropout": 0.0}
    config.update(batch_size=64, epochs=1, seed=0)
    engine.train(data, config, lambda m, e: None)  # trace once
    started = time.perf_counter()
    for seed in range(20):
        engine.train(data, {**config, "seed": seed}, lambda m, e: None)
    return {"epoch_seconds": (time.perf_counter() - started) / 20}


def rss_growth(trials: int = 100) -> dict[str, Any]:
    """A worker's memory after its 5th trial and after its last (tuner's trainer, one process)."""
    import psutil

    from tuner import engine
    from tuner.data import load_dataset
    from tuner.spec import parse_spec

    data = load_dataset(parse_spec({"data": {"dataset": "digits"}, "optimizers": {"sgd": {}}}).data, seed=0)
    me = psutil.Process()
    after = {}
    for i in range(1, trials + 1):
        name = OPTIMIZERS[i % 3]
        config = {"optimizer": name, name: {"learning_rate": 0.01}, "layers": 1, "units": 128, "activation": "relu"}
        config.update(dropout=0.0, batch_size=64, epochs=2, seed=i)
        engine.train(data, config, lambda m, e: None)
        if i in (5, trials):
            after[i] = me.memory_info().rss
    return {"rss_after_5_mb": after[5] / 2**20, f"rss_after_{trials}_mb": after[trials] / 2**20,
            "rss_growth_mb": (after[trials] - after[5]) / 2**20}  # fmt: skip


# --------------------------------------------------------------------------------------------- measuring


def measure(args: list[str]) -> dict[str, Any]:
    """Run ``args`` as a child process tree; its last stdout line is JSON. Adds wall seconds and peak RSS."""
    import psutil

    started = time.monotonic()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.monotonic() - started
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_seconds": round(wall, 2), "peak_rss_mb": round(peak / 2**20)}


def child(name: str, trials: int, epochs: int, dataset: str, served: str | None) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        if name in ("tuner", "tuner_warm"):
            result = run_tuner(trials, epochs, served or workdir, dataset)
        elif name == "keras_loop":
            result = run_keras_loop(trials, epochs)
        elif name == "ray_optuna":
            result = run_ray_optuna(trials, epochs, workdir)
        elif name == "keras_tuner":
            result = run_keras_tuner(trials, epochs, workdir)
        elif name == "epoch_seconds":
            result = epoch_seconds(dataset)
        elif name == "rss_growth":
            result = rss_growth()
        else:
            raise SystemExit(f"unknown runner {name}")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ", ".join(RUNNERS))
    parser.add_argument("--skip-overhead", action="store_true", help="skip the per-trial overhead and memory runs")
    parser.add_argument("--skip-many", action="store_true", help="skip the 200 sleeping trials (many_trials.py)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="digits", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)  # a warm run's, where tuner up runs
    args = parser.parse_args()
    if args.run:
        child(args.run, args.trials, args.epochs, args.dataset, args.workdir)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    me = [sys.executable, __file__]
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "workload": {}}
    report["workload"] = {"trials": args.trials, "epochs": args.epochs, "dataset": "digits", "concurrency": 2}
    runs: dict[str, Any] = {}
    for name in args.runners.split(","):
        print(f"running {name} ...", flush=True)
        command = [*me, "--run", name, "--trials", str(args.trials), "--epochs", str(args.epochs)]
        if name == "tuner_warm":
            with Service() as served:
                runs[name] = measure([*command, "--workdir", served])
        else:
            runs[name] = measure(command)
        runs[name]["epochs_per_second"] = round(runs[name]["epochs"] / runs[name]["wall_seconds"], 1)
    report["runs"] = runs
    if "keras_loop" in runs:
        for r in runs.values():
            r["x_keras_loop"] = round(r["wall_seconds"] / runs["keras_loop"]["wall_seconds"], 2)
    if not args.skip_overhead:
        print("running the fixed cost of a launch, cold and warm ...", flush=True)
        one = [*me, "--run", "tuner", "--trials", "1", "--epochs", "1", "--dataset", "iris"]
        cold = [measure(one) for _ in range(3)]
        with Service() as served:
            warm = [measure([*one, "--workdir", served]) for _ in range(3)]
        report["fixed_cost"] = {
            kind: {
                "wall_seconds": sorted(r["wall_seconds"] for r in runs_)[1],
                "first_result_seconds": sorted(r["first_result_seconds"] for r in runs_)[1],
            }
            for kind, runs_ in (("cold", cold), ("warm", warm))
        }
        print("running the per-trial overhead and memory runs ...", flush=True)
        many = measure([*me, "--run", "tuner", "--trials", "200", "--epochs", "1", "--dataset", "iris"])
        few = measure([*me, "--run", "tuner", "--trials", "2", "--epochs", "1", "--dataset", "iris"])
        epoch = measure([*me, "--run", "epoch_seconds", "--dataset", "iris"])["epoch_seconds"]
        per_trial = (many["wall_seconds"] - few["wall_seconds"]) / (200 - 2)
        report["overhead"] = {
            "wall_200_trials": many["wall_seconds"],
            "wall_2_trials": few["wall_seconds"],
            "training_seconds_per_trial": round(epoch, 4),
            "wall_seconds_per_trial": round(per_trial, 4),
            "overhead_ms_per_trial": round((per_trial - epoch) * 1000, 1),
        }
        report["memory"] = {
            k: round(v, 1) for k, v in measure([*me, "--run", "rss_growth"]).items() if k.endswith("_mb")
        }
    if not args.skip_many:
        import many_trials  # beside this file

        report["many"] = many_trials.run_all()
    write_report("throughput", report, markdown(report), args.out)


def markdown(report: dict[str, Any]) -> str:
    w = report["workload"]
    lines = [
        f"{report['date']}, {report['machine']}; {w['trials']} trials x {w['epochs']} epochs on {w['dataset']}",
        "",
        "| runner | wall s | first result s | driver CPU ms/trial | epochs | epochs/s | peak RSS MB | x Keras loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['wall_seconds']} | {r.get('first_result_seconds', '')} | "
            f"{r.get('driver_cpu_ms_per_trial') or ''} | {r['epochs']} | "
            f"{r['epochs_per_second']} | {r['peak_rss_mb']} | {r.get('x_keras_loop', '')} |"
        )
    if "fixed_cost" in report:
        c = report["fixed_cost"]
        lines += [
            "",
            "Fixed cost of a launch (1 trial x 1 epoch on iris, median of 3): "
            f"cold {c['cold']['wall_seconds']} s (first result at {c['cold']['first_result_seconds']} s), "
            f"warm {c['warm']['wall_seconds']} s (first result at {c['warm']['first_result_seconds']} s).",
        ]
    if "overhead" in report:
        o, m = report["overhead"], report["memory"]
        lines += [
            "",
            f"Per-trial overhead (200 x 1 epoch on iris, tracking on): {o['wall_seconds_per_trial'] * 1000:.0f} ms of "
            f"wall time per trial, of which {o['training_seconds_per_trial'] * 1000:.0f} ms training: "
            f"**{o['overhead_ms_per_trial']:.0f} ms overhead** (target 50 ms).",
            f"Worker memory over 100 trials: {m['rss_after_5_mb']:.0f} MB after 5, "
            f"{m['rss_after_100_mb']:.0f} MB after 100: **{m['rss_growth_mb']:+.1f} MB** (target 50 MB).",
        ]
    if "many" in report:
        import many_trials

        lines += ["", many_trials.markdown(report["many"]).rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
