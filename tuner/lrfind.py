"""The learning-rate range test (``tuner lr-find``): which learning rates are worth searching, per optimizer.

For each optimizer in a spec, a network trains while its learning rate rises exponentially, one step per batch,
from 100x below the spec's lowest rate to 100x above its highest (Smith 2015, "Cyclical Learning Rates";
fastai's ``lr_find``, Lightning's ``Tuner.lr_find``). Its loss creeps at first, then falls, then blows up. Each
sweep runs as a Ray task, for several seeds, so that it runs on a cluster as studies do.

The suggestion, read off each seed's curve (:func:`suggest`), then the median over seeds:

- The curve is smoothed where it lies, without lag: a running median over a quarter of a decade of learning
  rates, at least 5 steps (a spike of a batch or two is gone), then a running mean over the same window
  (noise). It stops at the first NaN or infinite loss.
- ``high``: the learning rate of the lowest smoothed loss, divided by 3. At that rate the loss is about to
  climb: it is the edge of stability, and training there for a whole study is not safe.
- ``low``: going down from the lowest point, the last learning rate at which the smoothed loss is still below
  half of its fall (half-way from its starting level to its lowest). Below it the loss hardly moves: the rate is
  too small for the steps a study takes.
- No suggestion when the loss fell less than 10% of its starting level (nothing learned in the sweep), or
  blew up within the first quarter of the sweep.

What fastai's and Lightning's suggestions trip on, and why this does not: their steepest-slope point comes
from a derivative of a noisy curve, so that one early spike or dip moves it by decades; here nothing depends
on a derivative, the median ignores spikes, ``low`` is found walking back from the lowest point (a dip early
in the sweep is never reached), and a NaN only ends the curve. The seeds' suggestions are reported with how
far apart they lie, in decades.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tuner.errors import Terminated, TunerError
from tuner.optimizers import OPTIMIZERS
from tuner.spec import Choice, Range, Spec, Value, load_spec

__all__ = ["LrFind", "Suggestion", "Sweep", "find", "narrowed", "suggest", "table"]

#: The sweep spans this many decades below the spec's lowest learning rate and above its highest.
MARGIN_DECADES = 2.0
#: Steps (batches) of one sweep, if the loss does not blow up first: 100, as fastai and Lightning take. Longer
#: sweeps suggest wider ranges and cost more than they save (benchmarks/lr_find.py: 300 steps cost 88 epochs of
#: digits, most of what a 24-trial study trains, and the narrowed study no longer came out ahead).
STEPS = 100
#: A sweep stops once the average of its recent losses passes this many times its lowest.
BLOW_UP = 4.0
#: The smoothing window, in decades of learning rate.
WINDOW_DECADES = 0.25
#: ``low`` is where the smoothed loss has made this fraction of its way down to its lowest.
FALL = 0.5
#: ``high`` is the learning rate of the lowest smoothed loss divided by this.
BACK_OFF = 3.0
#: A curve that fell less than this fraction of its starting level suggests nothing.
MIN_FALL = 0.1
SEEDS = 3


@dataclass(frozen=True)
class Sweep:
    """One seed's curve: ``loss[i]`` is the training loss after the steps at ``rates[:i + 1]``."""

    optimizer: str
    seed: int
    rates: tuple[float, ...]
    loss: tuple[float, ...]


@dataclass(frozen=True)
class Suggestion:
    """What the sweeps of one optimizer suggest: ``[low, high]`` (``None`` with a ``note`` saying why)."""

    optimizer: str
    low: float | None
    high: float | None
    swept: tuple[float, float]
    spec: str  # the spec's learning rate, in words: a range, a choice, a fixed value or Keras' default
    seeds: tuple[tuple[float, float] | None, ...]
    spread_decades: float | None  # how far apart the seeds' ends lie, at most, in decades
    note: str = ""


@dataclass(frozen=True)
class LrFind:
    """The outcome of ``tuner lr-find``."""

    study: str
    suggestions: tuple[Suggestion, ...]
    sweeps: tuple[Sweep, ...] = field(repr=False)
    steps: int = STEPS
    seconds: float = 0.0
    mlflow: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"study": self.study, "seconds": round(self.seconds, 1)}
        out["optimizers"] = {
            s.optimizer: {k: v for k, v in asdict(s).items() if k != "optimizer"} for s in self.suggestions
        }
        if self.mlflow:
            out["mlflow"] = self.mlflow
        return out


# -- the rule


def smooth(loss: Sequence[float], window: int) -> np.ndarray:
    """A centred running median, then a centred running mean, each over ``window`` points (fewer at the ends)."""
    values = np.asarray(loss, dtype=float)
    half = max(1, window // 2)

    def run(values: np.ndarray, reduce: Callable[[np.ndarray], Any]) -> np.ndarray:
        return np.array([reduce(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])

    return run(run(values, np.median), np.mean)


def _window(rates: Sequence[float]) -> int:
    """The smoothing window for a sweep's rates: a quarter of a decade of them, odd, at least 5."""
    per_decade = (len(rates) - 1) / math.log10(rates[-1] / rates[0]) if len(rates) > 1 else 1.0
    return max(5, round(per_decade * WINDOW_DECADES) | 1)


def _finite(loss: Sequence[float]) -> int:
    """How many of the losses come before the first NaN or infinite one."""
    count = 0
    while count < len(loss) and math.isfinite(loss[count]):
        count += 1
    return count


def _smoothed(sweep: Sweep) -> tuple[Sequence[float], np.ndarray]:
    finite = _finite(sweep.loss)
    return sweep.rates[:finite], smooth(sweep.loss[:finite], _window(sweep.rates)) if finite else np.array([])


def suggest(rates: Sequence[float], loss: Sequence[float], planned: int | None = None) -> tuple[float, float] | str:
    """The ``[low, high]`` one sweep suggests (see the module's rule), or why it suggests nothing. ``planned``:
    the steps the sweep was to take (it stops early when the loss blows up); by default ``len(rates)``."""
    if len(rates) < 2:
        return "nothing was swept"
    finite = _finite(loss)
    window = _window(rates)
    if finite < max(3 * window, (planned or len(rates)) // 4):
        return f"the loss blew up at lr {rates[max(finite - 1, 0)]:.2g}, early in the sweep: it began too high"
    curve = smooth(loss[:finite], window)
    start = float(np.median(loss[: 2 * window]))
    lowest = int(np.argmin(curve))
    fall = start - float(curve[lowest])
    if not fall > MIN_FALL * start:
        return f"the loss hardly fell ({start:.3g} to {curve[lowest]:.3g}): no rate in the sweep trains this network"
    level = curve[lowest] + FALL * fall
    first = lowest
    while first > 0 and curve[first - 1] < level:
        first -= 1
    low, high = float(rates[first]), float(rates[lowest]) / BACK_OFF
    return low, max(low, high)


def _combine(optimizer: str, sweeps: list[Sweep], rates: np.ndarray, spec: str) -> Suggestion:
    """The suggestion of one optimizer's sweeps, all planned over ``rates``; ``spec``: its rate in the spec."""
    swept = _round(float(rates[0])), _round(float(rates[-1]))
    found = [suggest(s.rates, s.loss, len(rates)) for s in sweeps]
    ranges = [f for f in found if isinstance(f, tuple)]
    seeds = tuple(f if isinstance(f, tuple) else None for f in found)
    if len(ranges) * 2 <= len(found):  # most seeds suggest nothing: say why, as the first of them says
        reason = next(f for f in found if isinstance(f, str))
        return Suggestion(optimizer, None, None, swept, spec, seeds, None, note=reason)
    low = float(np.median([r[0] for r in ranges]))
    high = float(np.median([r[1] for r in ranges]))
    spread = max(math.log10(max(r[i] for r in ranges) / min(r[i] for r in ranges)) for i in (0, 1))
    notes = [] if len(ranges) == len(found) else [f"{len(found) - len(ranges)} of {len(found)} seeds suggest nothing"]
    if any(_still_falling(s, len(rates)) for s in sweeps):
        notes.append("the loss still fell at the top of the sweep: higher rates may train too")
    low, high = _round(low), _round(max(low, high))
    return Suggestion(optimizer, low, high, swept, spec, seeds, round(spread, 2), "; ".join(notes))


def _still_falling(sweep: Sweep, planned: int) -> bool:
    """Whether a sweep ran to its end without the loss turning up: its lowest point in its last window."""
    rates, curve = _smoothed(sweep)
    return len(sweep.loss) >= planned - 1 and len(curve) > 0 and int(np.argmin(curve)) >= len(curve) - _window(rates)


def _round(value: float) -> float:
    return float(f"{value:.2g}")


# -- what is swept


def _learning_rates(value: Value | None, default: float) -> tuple[float, float, str]:
    """The lowest and highest learning rate a spec's value allows, and the value in words."""
    if isinstance(value, Range):
        return float(value.low), float(value.high), f"[{value.low:g}, {value.high:g}]"
    if isinstance(value, Choice):
        low, high = float(min(value.options)), float(max(value.options))
        return low, high, "{" + ", ".join(f"{v:g}" for v in value.options) + "}"
    if isinstance(value, (int, float)):
        return float(value), float(value), f"{value:g} (fixed)"
    return default, default, f"{default:g} (Keras' default)"


def _representative(value: Value) -> Any:
    """A searched model value's stand-in during a sweep: a range's low end, a choice's first option."""
    if isinstance(value, Range):
        return value.low
    if isinstance(value, Choice):
        return value.options[0]
    return value


def _plan(spec: Spec, optimizer: str, steps: int) -> tuple[dict[str, Any], np.ndarray, str]:
    """One optimizer's sweep: the trial configuration (the spec's fixed values, Keras' defaults for the rest),
    the learning rates, and the spec's learning rate in words."""
    entry = spec.optimizer(optimizer)
    params = dict(entry.params)
    default = float(OPTIMIZERS[optimizer].hyperparameter("learning_rate").default)
    low, high, words = _learning_rates(params.get("learning_rate"), default)
    rates = np.geomspace(low / 10**MARGIN_DECADES, high * 10**MARGIN_DECADES, steps)
    hyper = {k: v for k, v in params.items() if k != "learning_rate" and not isinstance(v, (Range, Choice))}
    config = {k: _representative(v) for k, v in spec.model_values()}
    config.update(optimizer=optimizer, **{optimizer: hyper})
    return config, rates, words


# -- running it


def find(
    spec: Spec,
    options: Any,
    *,
    optimizers: Sequence[str] | None = None,
    seeds: int = SEEDS,
    steps: int = STEPS,
    log: bool = True,
) -> LrFind:
    """Sweep the learning rate of each of the spec's optimizers (or of ``optimizers``) over ``seeds`` seeds, as Ray
    tasks, and suggest a range for each; record it as the run ``lr-find`` in the study's MLflow experiment.

    ``options`` is a :class:`tuner.runner.RunOptions`: where Ray and MLflow are, as a launch finds them.

    Raises:
        TunerError: Ray or the MLflow server cannot be reached, or the cluster has too few CPUs for a sweep.
    """
    import ray

    from tuner import runner
    from tuner.data import load_dataset
    from tuner.trainable import sweep_task

    names = list(optimizers or [o.name for o in spec.optimizers])
    started = time.monotonic()
    dataset = load_dataset(spec.data, seed=spec.study.seed, source=spec.source)  # a bad file: before Ray starts
    with runner.connected(options) as (stores, signals):
        cpus = spec.resources.cpus_per_trial
        if ray.cluster_resources().get("CPU", 0) < cpus:
            raise TunerError(
                f"the Ray cluster has fewer than {cpus} CPUs, which a sweep takes (resources.cpus_per_trial)"
            )
        remote: Any = ray.remote(num_cpus=cpus, num_gpus=spec.resources.gpus_per_trial or 0)  # Ray's stubs know
        task = remote(sweep_task)  # only functions without arguments
        data = ray.put(dataset)
        plans = {name: _plan(spec, name, steps) for name in names}
        threads = max(1, int(cpus))  # as a trial's (runner._fit)
        refs = {
            task.remote(data, config, rates, BLOW_UP, seed=spec.study.seed + seed, threads=threads): (name, seed)
            for name, (config, rates, _) in plans.items()
            for seed in range(seeds)
        }
        losses: dict[tuple[str, int], np.ndarray] = {}
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1, timeout=1.0)
            if signals:
                raise Terminated
            for ref in done:
                losses[refs[ref]] = ray.get(ref)
        sweeps = []
        for (name, seed), loss in sorted(losses.items(), key=lambda item: (names.index(item[0][0]), item[0][1])):
            rates = plans[name][1]
            # The i-th loss was measured after the steps at rates[:i]: it belongs to rates[i - 1].
            sweeps.append(Sweep(name, seed, tuple(rates[: len(loss) - 1].tolist()), tuple(loss[1:].tolist())))
        suggestions = tuple(
            _combine(name, [s for s in sweeps if s.optimizer == name], plans[name][1], plans[name][2]) for name in names
        )
        result = LrFind(spec.study.name, suggestions, tuple(sweeps), steps, time.monotonic() - started)
        if log:
            result = _record(result, spec, stores, options)
    return result


def _record(result: LrFind, spec: Spec, stores: Any, options: Any) -> LrFind:
    """The run ``lr-find`` in the study's experiment: the curves, the suggestions, the plot. MLflow failing only
    costs the record (a warning)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tuner import runner, sending, tracking

    warn = options.warn or (lambda text: None)
    try:
        with sending.client_settings():
            client = MlflowClient(tracking_uri=stores.tracking_uri)
            stores.workdir.mkdir(parents=True, exist_ok=True)
            with runner.creating(stores.tracking_uri):  # a launch may be making the same fresh store
                experiment_id = tracking.study_experiment(client, spec.study.name, stores.artifact_root)
            run = client.create_run(
                experiment_id, run_name="lr-find", tags={"tuner.study": spec.study.name, "tuner.kind": "lr-find"}
            )
            run_id = run.info.run_id
            params: dict[str, Any] = {
                "lr_find.steps": result.steps,
                "lr_find.seeds": len({s.seed for s in result.sweeps}),
            }
            for s in result.suggestions:
                params[f"{s.optimizer}.swept"] = f"[{s.swept[0]:g}, {s.swept[1]:g}]"
                params[f"{s.optimizer}.suggested"] = f"[{s.low:g}, {s.high:g}]" if s.low is not None else s.note
            client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
            now = int(time.time() * 1000)
            for sweep in result.sweeps:
                key = f"{sweep.optimizer}_seed{sweep.seed}"
                metrics = [Metric(f"{key}_loss", v, now, i) for i, v in enumerate(sweep.loss) if math.isfinite(v)]
                metrics += [Metric(f"{key}_lr", v, now, i) for i, v in enumerate(sweep.rates)]
                for chunk in range(0, len(metrics), 1000):
                    client.log_batch(run_id, metrics=metrics[chunk : chunk + 1000])
            with tempfile.TemporaryDirectory() as directory:
                plot(result, Path(directory) / "lr_find.png")
                (Path(directory) / "lr_find.json").write_text(json.dumps(result.to_json(), indent=1))
                client.log_artifacts(run_id, directory)
            client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # the suggestion stands without its record
        warn(f"mlflow: the lr-find run was not recorded: {sending.first_line(exc)}")
        return result
    runs = {"tracking_uri": stores.tracking_uri, "experiment_id": experiment_id, "run_id": run_id}  # as a launch says
    return dataclasses.replace(result, mlflow=runs)


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value))


# -- output


def table(result: LrFind) -> str:
    """The terminal's table: per optimizer, what was swept, the spec's range, the suggestion, the seeds."""
    rows = [("optimizer", "swept", "the spec's rate", "suggested", "seeds agree within", "")]
    for s in result.suggestions:
        suggested = f"[{s.low:g}, {s.high:g}]" if s.low is not None else "-"
        spread = f"{s.spread_decades:.2f} decades" if s.spread_decades is not None else "-"
        rows.append((s.optimizer, f"[{s.swept[0]:g}, {s.swept[1]:g}]", s.spec, suggested, spread, s.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    seconds = f"{len(result.sweeps)} sweeps in {result.seconds:.0f} s"
    return "\n".join([f"lr-find {result.study}: learning rates worth searching ({seconds})", *lines])


def plot(result: LrFind, path: Path) -> None:
    """Loss against learning rate (log x-axis), one panel per optimizer: each seed's curve, its smoothed
    median, and the suggested range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(result.suggestions)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    for ax, s in zip(axes[0], result.suggestions, strict=True):
        top = 0.0
        for sweep in (w for w in result.sweeps if w.optimizer == s.optimizer):
            finite = [(r, v) for r, v in zip(sweep.rates, sweep.loss, strict=True) if math.isfinite(v)]
            if finite:
                rates, loss = zip(*finite, strict=True)
                ax.plot(rates, loss, lw=0.6, alpha=0.5, label=f"seed {sweep.seed}")
                top = max(top, 1.5 * float(np.median(loss[: max(1, len(loss) // 5)])))
        smoothed = [_smoothed(w) for w in result.sweeps if w.optimizer == s.optimizer]
        smoothed = [c for c in smoothed if len(c[0])]
        if smoothed:
            n = min(len(c[0]) for c in smoothed)
            median = np.median([c[1][:n] for c in smoothed], axis=0)
            ax.plot(smoothed[0][0][:n], median, color="black", lw=1.5, label="smoothed, median of seeds")
        if s.low is not None and s.high is not None:
            ax.axvspan(s.low, s.high, color="tab:green", alpha=0.2, label=f"suggested [{s.low:g}, {s.high:g}]")
        ends = {s.swept[0] * 10**MARGIN_DECADES, s.swept[1] / 10**MARGIN_DECADES}  # what the sweep was made from
        for i, end in enumerate(sorted(ends)):
            ax.axvline(end, color="gray", ls=":", lw=1, label="the spec's rate" if i == 0 else None)
        ax.set_xscale("log")
        ax.set_ylim(0, top or None)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(s.optimizer + ("" if s.low is not None else f": {s.note}"), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def narrowed(source: str | Path, suggestions: Sequence[Suggestion], spec: Spec) -> str:
    """The spec file ``source`` (loaded as ``spec``) with each searched ``learning_rate`` narrowed to its
    optimizer's suggestion, as YAML text, checked by the spec's own rules before it is returned.

    A range becomes the suggested log range; a choice keeps the options within it (all of them if none is); a
    fixed or unset rate stays as it is. The study is renamed ``NAME-narrowed`` (Optuna refuses a study whose
    search space changed under the same name), and a data file's path is written whole, so that the new file
    reads the same data wherever it is saved.
    """
    doc = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    for s in suggestions:
        params = doc["optimizers"].get(s.optimizer) or {}
        rate = params.get("learning_rate")
        if s.low is None or s.high is None or not isinstance(rate, dict):
            continue
        if "choice" in rate:
            within = [v for v in rate["choice"] if s.low <= v <= s.high]
            rate["choice"] = within or rate["choice"]
        else:
            low, high = (s.low, s.high) if s.high > s.low else (s.low / 1.5, s.low * 1.5)
            params["learning_rate"] = {"low": low, "high": high, "log": True}
        doc["optimizers"][s.optimizer] = params
    doc.setdefault("study", {})["name"] = f"{spec.study.name}-narrowed"
    if spec.data.path is not None:
        doc["data"]["dataset"] = f"{spec.data.dataset}:{spec.data.path}"
    text = f"# {Path(source).name}, with each learning_rate narrowed by tuner lr-find\n"
    text += yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    with tempfile.TemporaryDirectory() as directory:
        check = Path(directory) / Path(source).name
        check.write_text(text, encoding="utf-8")
        load_spec(check)
    return text
