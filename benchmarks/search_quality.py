"""Search quality per budget: how good a configuration a given number of training epochs buys.

    pip install -e '.[bench]'
    python benchmarks/search_quality.py                     # about 75 minutes on 2 cores
    python benchmarks/search_quality.py --seeds 2 --datasets breast_cancer --budgets 100,200   # a quick look
    python benchmarks/search_quality.py --runners keras_tuner --out /tmp/kt &   # Keras Tuner uses no Ray: it
    python benchmarks/search_quality.py --runners tuner_default,tuner_random,ray_optuna_asha --out /tmp/rest
    python benchmarks/search_quality.py --runners '' --merge /tmp/kt/search_quality.json \
        --merge /tmp/rest/search_quality.json                # can run beside the others; then one table

The same space for every runner: an MLP of one hidden layer of 128 relu units, batch 64, at most 20 epochs a
trial, and one of SGD (momentum), RMSprop (rho) or Adam (beta_1), each with a learning rate from 1e-4 to 1
(log), a range wide enough that a search must find where training works. The data are tuner's: the same split
(seeded by the run's seed) and the same standardised features for every runner. Runners:

1. ``tuner_default``: ``tuner.run_study`` with the spec saying nothing of the sampler or the pruning: tuner's
   defaults (TPE, ASHA, divergence stops), 2 trials at a time;
2. ``tuner_random``: tuner with random search, no scheduler and no divergence stop: the baseline;
3. ``keras_tuner``: Keras Tuner's Hyperband (max_epochs 20, factor 3), sequential;
4. ``ray_optuna_asha``: Ray Tune + OptunaSearch (Optuna's TPE as it comes) + ASHA (grace 2, factor 3),
   2 trials at a time, a Keras ``fit`` reporting each epoch.

Each runs once per seed, long enough to spend the largest budget. A run's trials are taken in the order they
started, their epochs one after another; the best validation loss *within a budget of B epochs* is the
lowest val_loss among the first B epochs so spent (with 2 trials at a time this is the order the search
chose them in, to within a trial). Reported per dataset and budget: the median best val_loss over the seeds
and its range, and the epochs each runner needed to reach the random baseline's best at that budget
(median over the seeds that reached it; "k/5" says how many did).

Printed and written to ``benchmarks/results/search_quality.{json,md}``.
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
import time
import zlib
from pathlib import Path
from typing import Any

from common import machine, write_report

HERE = Path(__file__).resolve().parent
RUNNERS = ("tuner_default", "tuner_random", "keras_tuner", "ray_optuna_asha")
#: Changes to tuner's defaults, tried as ``--runners tuner_default:NAME`` (with ``--first-seed 5``, on seeds
#: other than the table's, so that a choice among them is not fitted to it).
VARIANTS = {"grace1": "pruning.grace_epochs: 1", "startup5": "TPE with 5 random startup trials instead of 10"}
BASELINE = "tuner_random"
OPTIMIZERS = {"sgd": ("momentum", 0.0, 0.95), "rmsprop": ("rho", 0.8, 0.99), "adam": ("beta_1", 0.8, 0.99)}
LR = (1e-4, 1.0)
EPOCHS, BATCH, UNITS = 20, 64, 128


def pruned_trials(budget: int) -> int:
    """Trials a pruning runner is given: enough to spend ``budget`` (ASHA's trials here average 5 to 6 epochs)."""
    return math.ceil(budget / 4)


Curve = list[float | None]  # one trial's val_loss per epoch it trained (None: not finite)


# --------------------------------------------------------------------------------------------- tuner


def tuner_spec(runner: str, dataset: str, seed: int, budget: int) -> dict[str, Any]:
    runner, _, variant = runner.partition(":")
    lr = {"low": LR[0], "high": LR[1], "log": True}
    optimizers = {
        name: {"learning_rate": lr, key: {"low": low, "high": high}} for name, (key, low, high) in OPTIMIZERS.items()
    }
    doc: dict[str, Any] = {
        "study": {"name": f"{runner}-{variant}-{dataset}-{seed}", "concurrency": 2, "seed": seed},
        "data": {"dataset": dataset},
        "model": {"layers": 1, "units": UNITS, "activation": "relu"},
        "training": {"epochs": EPOCHS, "batch_size": BATCH},
        "optimizers": optimizers,
    }
    if runner == "tuner_random":
        # Two spare trials: a trial whose loss turns NaN stops early, and the run must still spend the budget.
        doc["study"].update(sampler="random", trials=math.ceil(budget / EPOCHS) + 2)
        doc["pruning"] = {"scheduler": "none", "divergence": False}
    else:
        doc["study"]["trials"] = pruned_trials(budget)
    if variant == "grace1":
        doc["pruning"] = {"grace_epochs": 1}
    return doc


def run_tuner(runner: str, dataset: str, seeds: list[int], budget: int, workdir: str) -> dict[str, list[Curve]]:
    import optuna
    import ray

    from tuner import run_study
    from tuner.spec import parse_spec

    if runner.endswith(":startup5"):  # this process's registry of samplers: a variant of tuner's TPE
        from tuner import plugins

        def startup5(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5
            )

        plugins.SAMPLERS["tpe"] = plugins.Sampler("tpe", VARIANTS["startup5"], startup5)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    for seed in seeds:
        result = run_study(parse_spec(tuner_spec(runner, dataset, seed, budget)), workdir=workdir)
        study = optuna.load_study(study_name=result.study, storage=result.storage)
        curves = []
        for trial in sorted(study.trials, key=lambda t: t.number):
            epochs = int(trial.user_attrs.get("epochs", 0))
            curves.append([_finite(trial.intermediate_values.get(e)) for e in range(1, epochs + 1)])
        out[str(seed)] = curves
    return out


# --------------------------------------------------------------------------------------------- peers


def arrays(dataset: str, seed: int) -> tuple[Any, ...]:
    """tuner's split and standardised features, for the peers to train on the same data."""
    from tuner.data import load_dataset
    from tuner.spec import parse_spec

    data = load_dataset(parse_spec({"data": {"dataset": dataset}, "optimizers": {"sgd": {}}}).data, seed=seed)
    return data.x_train, data.y_train, data.x_val, data.y_val


def keras_model(config: dict[str, Any], inputs: int, classes: int) -> Any:
    import keras

    name = config["optimizer"]
    params = {k: v for k, v in config.items() if k != "optimizer"}
    optimizer = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    net = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(UNITS, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    net.compile(optimizer=optimizer[name](**params), loss="sparse_categorical_crossentropy")
    return net


def optuna_space(trial: Any) -> None:
    """The space as an Optuna define-by-run function (module level: OptunaSearch pickles it)."""
    name = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
    trial.suggest_float("learning_rate", *LR, log=True)
    key, low, high = OPTIMIZERS[name]
    trial.suggest_float(key, low, high)


def ray_trainable(config: dict[str, Any], data: tuple[Any, ...]) -> None:
    import keras
    from ray import tune

    x, y, xv, yv = data
    started = time.time()

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            tune.report({"val_loss": float((logs or {})["val_loss"]), "epoch": epoch + 1, "started": started})

    keras.backend.clear_session()
    keras.utils.set_random_seed(zlib.crc32(json.dumps(config, sort_keys=True).encode()))
    net = keras_model(dict(config), x.shape[1], int(y.max()) + 1)
    net.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(xv, yv), verbose=0, callbacks=[Report()])


def run_ray(dataset: str, seeds: list[int], budget: int, workdir: str) -> dict[str, list[Curve]]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    for seed in seeds:
        sampler = optuna.samplers.TPESampler(seed=seed)
        search = OptunaSearch(optuna_space, metric="val_loss", mode="min", sampler=sampler)
        scheduler = ASHAScheduler(time_attr="epoch", max_t=EPOCHS, grace_period=2, reduction_factor=3)
        peer = tune.Tuner(
            tune.with_parameters(ray_trainable, data=arrays(dataset, seed)),
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", search_alg=search, scheduler=scheduler,
                num_samples=pruned_trials(budget), max_concurrent_trials=2, reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=workdir, name=f"{dataset}-{seed}", verbose=0),
        )  # fmt: skip
        results = peer.fit()
        frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and len(r.metrics_dataframe)]
        frames.sort(key=lambda f: float(f["started"].iloc[0]))
        out[str(seed)] = [[_finite(v) for v in f.sort_values("epoch")["val_loss"]] for f in frames]
    return out


def run_keras_tuner(dataset: str, seeds: list[int], budget: int, workdir: str) -> dict[str, list[Curve]]:
    return {str(seed): keras_tuner_curves(dataset, seed, budget, workdir) for seed in seeds}


def keras_tuner_curves(dataset: str, seed: int, budget: int, workdir: str) -> list[Curve]:
    import keras
    import keras_tuner as kt

    x, y, xv, yv = arrays(dataset, seed)
    curves: list[Curve] = []

    class Record(keras.callbacks.Callback):
        """Each fit is one trial's (or one Hyperband round's) epochs: kept in the order they ran."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            curves.append([])

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            curves[-1].append(_finite((logs or {}).get("val_loss")))

    def build(hp: kt.HyperParameters) -> Any:
        name = hp.Choice("optimizer", list(OPTIMIZERS))
        config = {"optimizer": name, "learning_rate": hp.Float("learning_rate", *LR, sampling="log")}
        key, low, high = OPTIMIZERS[name]
        with hp.conditional_scope("optimizer", [name]):
            config[key] = hp.Float(key, low, high)
        return keras_model(config, x.shape[1], int(y.max()) + 1)

    # One Hyperband iteration with max_epochs 20 and factor 3 spends about 230 epochs: enough iterations to
    # spend the budget.
    search = kt.Hyperband(
        build, objective="val_loss", max_epochs=EPOCHS, factor=3, hyperband_iterations=math.ceil(budget / 200),
        seed=seed, directory=workdir, project_name=f"{dataset}-{seed}", overwrite=True,
    )  # fmt: skip
    search.search(x, y, batch_size=BATCH, validation_data=(xv, yv), verbose=0, callbacks=[Record()])
    return curves


def rounded(seeds: dict[str, list[Curve]]) -> dict[str, list[Curve]]:
    """Curves at 4 decimals: plenty for a loss, and what a report keeps for ``--merge``."""
    return {seed: [[None if v is None else round(v, 4) for v in c] for c in curves] for seed, curves in seeds.items()}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


# --------------------------------------------------------------------------------------------- scoring


def spent(curves: list[Curve]) -> list[float]:
    """The running best val_loss after each epoch spent, the trials' epochs one after another."""
    best, out = math.inf, []
    for curve in curves:
        for value in curve:
            if value is not None:
                best = min(best, value)
            out.append(best)
    return out


def best_within(curves: list[Curve], budget: int) -> float | None:
    trace = spent(curves)
    if len(trace) < budget or not math.isfinite(trace[budget - 1]):
        return None  # the run did not spend the budget (or found no finite loss): no figure rather than a guess
    return trace[budget - 1]


def epochs_to_reach(curves: list[Curve], target: float, budget: int) -> int | None:
    for spent_epochs, best in enumerate(spent(curves)[:budget], start=1):
        if best <= target:
            return spent_epochs
    return None


def score(runs: dict[str, dict[str, list[Curve]]], budgets: list[int]) -> dict[str, Any]:
    """Per budget and runner: the median best val_loss over seeds, its range, and the epochs to reach the
    baseline's best (per seed, within the same budget)."""
    table: dict[str, Any] = {}
    for budget in budgets:
        row = {}
        for runner, seeds in runs.items():
            bests = [best_within(curves, budget) for curves in seeds.values()]
            got = [b for b in bests if b is not None]
            reach = []
            if BASELINE in runs:
                for seed, curves in seeds.items():
                    target = best_within(runs[BASELINE].get(seed, []), budget)
                    if target is not None:
                        reach.append(epochs_to_reach(curves, target, budget))
            reached = [r for r in reach if r is not None]
            row[runner] = {
                "median": round(statistics.median(got), 4) if got else None,
                "min": round(min(got), 4) if got else None,
                "max": round(max(got), 4) if got else None,
                "seeds": len(got),
                "epochs_to_baseline": statistics.median(reached) if reached else None,
                "reached_baseline": f"{len(reached)}/{len(reach)}",
            }
        table[str(budget)] = row
    return table


# --------------------------------------------------------------------------------------------- running


def child(runner: str, dataset: str, seeds: list[int], budget: int) -> None:
    with tempfile.TemporaryDirectory(prefix="quality-") as workdir:
        if runner.startswith("tuner_"):
            curves = run_tuner(runner, dataset, seeds, budget, workdir)
        elif runner == "ray_optuna_asha":
            curves = run_ray(dataset, seeds, budget, workdir)
        elif runner == "keras_tuner":
            curves = run_keras_tuner(dataset, seeds, budget, workdir)
        else:
            raise SystemExit(f"unknown runner {runner}")
    print(json.dumps(curves))


def measure(runner: str, dataset: str, seeds: list[int], budget: int) -> tuple[dict[str, list[Curve]], float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_AIR_NEW_OUTPUT": "0"}
    args = [sys.executable, __file__, "--run", runner, "--dataset", dataset, "--budget", str(budget)]
    args += ["--seed-list", ",".join(map(str, seeds))]
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{runner} on {dataset} failed:\n{done.stderr[-3000:]}")
    # Ray's raylet prints its warnings to the driver's stdout too: the result is the last JSON line.
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line), time.monotonic() - started


def markdown(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    first = report.get("first_seed", 0)
    lines = [
        f"{report['date']}, {report['machine']}; seeds {first} to {first + seeds - 1}, at most {EPOCHS} epochs a trial",
        "",
    ]
    for dataset, result in report["datasets"].items():
        lines += [
            f"**{dataset}**: best val_loss within the budget, median over seeds [min, max]; epochs to reach "
            f"{BASELINE}'s best at that budget (median; seeds that reached it)",
            "",
            "| runner | " + " | ".join(f"{b} epochs | to reach" for b in result["table"]) + " |",
            "| --- | " + " | ".join("---: | ---:" for _ in result["table"]) + " |",
        ]
        for runner in result["table"][next(iter(result["table"]))]:
            cells = []
            for row in result["table"].values():
                r = row[runner]
                best = "n/a" if r["median"] is None else f"{r['median']:.4f} [{r['min']:.4f}, {r['max']:.4f}]"
                if r["median"] is not None and r["seeds"] < seeds:
                    best += f" ({r['seeds']} seeds)"
                reach = "" if r["epochs_to_baseline"] is None else f"{r['epochs_to_baseline']:.0f} "
                counted = f"({r['reached_baseline']})" if r["reached_baseline"] != "0/0" else ""  # no baseline run
                cells.append(f"{best} | {reach}{counted}")
            lines.append(f"| {runner} | " + " | ".join(cells) + " |")
        wall = ", ".join(f"{k} {v:.0f} s" for k, v in result["wall_seconds"].items())
        lines += ["", f"Wall time for all seeds: {wall}.", ""] if wall else [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budgets", default="200,600", help="comma-separated epoch budgets")
    parser.add_argument("--datasets", default="digits,breast_cancer")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma-separated subset of " + ", ".join(RUNNERS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--merge", type=Path, action="append", default=[],
        help="a report of an earlier invocation (same seeds and budgets): its runners' curves join this one's",
    )  # fmt: skip
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed-list", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args.run, args.dataset, [int(s) for s in args.seed_list.split(",")], args.budget)
        return

    budgets = sorted(int(b) for b in args.budgets.split(","))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for runner in filter(None, args.runners.split(",")):
        base, _, variant = runner.partition(":")
        if base not in RUNNERS or (variant and (base != "tuner_default" or variant not in VARIANTS)):
            parser.error(f"--runners: {runner!r} is none of {', '.join(RUNNERS)} (tuner_default:{'|'.join(VARIANTS)})")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "seeds": args.seeds}
    report["first_seed"] = args.first_seed
    report["budgets"], report["datasets"] = budgets, {}
    earlier = [json.loads(path.read_text()) for path in args.merge]
    for old in earlier:
        if (old["seeds"], old.get("first_seed", 0), old["budgets"]) != (args.seeds, args.first_seed, budgets):
            parser.error(f"--merge: a report of other seeds or budgets ({old['seeds']} seeds, {old['budgets']})")
    for dataset in args.datasets.split(","):
        runs, wall = {}, {}
        for old in earlier:
            if dataset in old["datasets"]:
                runs.update(old["datasets"][dataset]["curves"])
                wall.update(old["datasets"][dataset]["wall_seconds"])
        for runner in filter(None, args.runners.split(",")):
            print(f"running {runner} on {dataset}, {len(seeds)} seeds ...", flush=True)
            runs[runner], wall[runner] = measure(runner, dataset, seeds, budgets[-1])
        # The table's order; curves at 4 decimals (as kept for --merge), so merged and new runs score alike.
        order = sorted(runs, key=lambda name: (RUNNERS.index(name.partition(":")[0]), name))
        runs = {name: rounded(runs[name]) for name in order}
        report["datasets"][dataset] = {"table": score(runs, budgets), "wall_seconds": wall, "curves": runs}
    write_report("search_quality", report, markdown(report), args.out, indent=None)


if __name__ == "__main__":
    main()
