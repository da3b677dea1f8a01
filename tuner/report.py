"""What a person reads: a line per finished trial, the table of the best trials, and the study's files (its
plots, ``trials.csv`` and ``best_params.yaml``), which :mod:`tuner.tracking` then logs to MLflow."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuner.optimizers import OPTIMIZERS
from tuner.results import CURVE_METRICS, Curve, Launch, StudyResult, TrialOutcome

if TYPE_CHECKING:
    import optuna
    from rich.table import Table

    from tuner.spec import Spec

__all__ = [
    "best_table",
    "fmt",
    "launch_line",
    "params_text",
    "plot_loss_curves",
    "plot_study",
    "summary_line",
    "trial_line",
    "write_best_params",
    "write_study_files",
    "write_trials_csv",
]

#: Optuna's parameter importances need a few complete trials to mean anything.
MIN_TRIALS_FOR_IMPORTANCE = 5
DIAGNOSIS_COLORS = {
    "good": "tab:green",
    "too_slow": "tab:blue",
    "plateau": "tab:purple",
    "oscillating": "tab:orange",
    "overfitting": "tab:brown",
    "diverged": "tab:red",
}


def fmt(value: Any) -> str:
    """A number short enough for a table: 4 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def launch_line(launch: Launch) -> str:
    """``study adam-digits: 16 trials, 2 at a time, tpe sampler (seed 0); digits: ...`` and the storage."""
    resumed = f" ({launch.resumed} resumed)" if launch.resumed else ""
    return (
        f"study {launch.study}: {launch.trials} trials{resumed}, {launch.concurrency} at a time, {launch.sampler} "
        f"sampler (seed {launch.seed}); {launch.data}; {launch.mode} {launch.metric}\n"
        f"optuna storage: {launch.storage}"
    )


def trial_line(outcome: TrialOutcome, metric: str, done: int, total: int) -> str:
    """``[ 3/30] trial #2   complete  val_loss=0.1234 (good)  20 epochs  optimizer=adam learning_rate=0.002``"""
    width = len(str(total))
    what = f"{metric}={fmt(outcome.value)}" if outcome.state == "complete" else outcome.reason or ""
    if outcome.diagnosis:
        what += f" ({outcome.diagnosis})"
    epochs = f"{outcome.epochs} epoch{'s' * (outcome.epochs != 1)}"
    return (
        f"[{done:>{width}}/{total}] trial #{outcome.number:<3} {outcome.state:<8}  {what}  {epochs}  "
        f"{params_text(outcome.params)}"
    )


def best_table(result: StudyResult, limit: int = 10) -> Table:
    """The best trials of a study, ranked by its metric; trials that did not complete come last."""
    from rich.table import Table

    rows = result.ranked()[:limit]
    names: list[str] = []
    for row in rows:
        names += [k for k in row.params if k not in names]
    arrow = "↓" if result.mode == "min" else "↑"
    table = Table(title=f"{result.study}: best trials by {result.metric} {arrow}", title_justify="left")
    left = ("state", "diagnosis", "optimizer", "activation")
    for column in ("rank", "trial", "state", "diagnosis", result.metric, "epochs", *names):
        table.add_column(column, justify="left" if column in left else "right")
    for rank, row in enumerate(rows, start=1):
        ranked = row.value is not None
        value = fmt(row.value) if ranked else (row.reason or "-")
        cells = [str(rank) if ranked else "-", f"#{row.number}", row.state, row.diagnosis or "", value, str(row.epochs)]
        table.add_row(*cells, *(fmt(row.params[n]) if n in row.params else "" for n in names))
    return table


def summary_line(result: StudyResult) -> str:
    counts = result.counts()
    text = f"{len(result.trials)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items())
    text += f" in {result.wall_seconds:.1f} s"
    best = result.best
    if best is not None:
        text += f"\nbest: trial #{best.number}  {result.metric}={fmt(best.value)}  {params_text(best.params)}"
    return text


def plot_loss_curves(curves: Mapping[int, Curve], path: Path, *, metric: str = "val_loss") -> None:
    """Every trial's validation and training loss against epoch, coloured by its diagnosis (marked by
    optimizer): the picture from which a person judges learning rates (smooth descent, oscillation,
    blow-up). Trials that did not complete are dotted and end in a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    positive = True
    for _, curve in sorted(curves.items()):
        color = DIAGNOSIS_COLORS.get(curve.diagnosis or "", "tab:gray")
        marker = _marker(curve.optimizer)
        done = curve.state == "complete"
        for ax, key in zip(axes, ("val_loss", "loss"), strict=True):
            points = curve.history.get(key)
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            positive = positive and min(ys) > 0
            style = {"linestyle": "-" if done else ":", "alpha": 0.85 if done else 0.6, "linewidth": 1.2}
            ax.plot(xs, ys, color=color, marker=marker, markersize=3, **style)
            if not done:
                ax.plot(xs[-1:], ys[-1:], color=color, marker="x", markersize=8)
    for ax, title in zip(axes, ("validation loss", "training loss"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if positive:
            ax.set_yscale("log")
    axes[0].set_ylabel("loss")
    labels = [d for d in DIAGNOSIS_COLORS if any(c.diagnosis == d for c in curves.values())]
    handles = [Line2D([], [], color=DIAGNOSIS_COLORS[d], label=d) for d in labels]
    optimizers = sorted({c.optimizer for c in curves.values()})
    handles += [Line2D([], [], color="gray", marker=_marker(o), label=o) for o in optimizers]
    handles += [
        Line2D([], [], color="black", label="complete"),
        Line2D([], [], color="black", linestyle=":", marker="x", label="pruned / failed"),
    ]
    axes[1].legend(handles=handles, loc="upper right", fontsize="small")
    fig.suptitle(f"{len(curves)} trials; the study ranks them by {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _marker(optimizer: str) -> str:
    return OPTIMIZERS[optimizer].marker if optimizer in OPTIMIZERS else "."


def plot_study(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's own charts of the study: ``optimization_history.png`` (best value so far against trial
    number) once a trial is complete and, once enough are, ``param_importances.png``. Returns the files
    written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as charts

    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:  # nothing to chart (Optuna would draw empty axes, and warn on stderr)
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        charts.plot_optimization_history(study)
        plt.savefig(out / "optimization_history.png", dpi=110, bbox_inches="tight")
        plt.close("all")
        written.append(out / "optimization_history.png")
        if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
            try:
                charts.plot_param_importances(study)
            except (ValueError, RuntimeError):  # e.g. no parameter took two values
                plt.close("all")
                return written
            plt.savefig(out / "param_importances.png", dpi=110, bbox_inches="tight")
            plt.close("all")
            written.append(out / "param_importances.png")
    return written


def write_study_files(
    out: Path, result: StudyResult, curves: Mapping[int, Curve], study: optuna.Study, spec: Spec
) -> list[Path]:
    """Write what a study leaves for a person into ``out``: ``loss_curves.png``, Optuna's charts,
    ``trials.csv`` and, if a trial completed, ``best_params.yaml``. Returns the files written."""
    written = [out / "loss_curves.png"]
    plot_loss_curves(curves, written[0], metric=result.metric)
    written += plot_study(study, out)
    written.append(write_trials_csv(out / "trials.csv", result, curves))
    if result.best is not None:
        written.append(write_best_params(out / "best_params.yaml", result, spec))
    return written


def write_trials_csv(path: Path, result: StudyResult, curves: Mapping[int, Curve]) -> Path:
    """A row per trial: how it ended, what it drew, and each metric's final and best value."""
    names: list[str] = []
    for outcome in result.trials:
        names += [k for k in outcome.params if k not in names]
    metric_keys = [k for k in CURVE_METRICS if any(k in c.history for c in curves.values())]
    header = ["number", "state", "diagnosis", "reason", "epochs", "seed", *names]
    header += [f"final_{k}" for k in metric_keys] + [f"best_{k}" for k in metric_keys if k != "lr"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for o in sorted(result.trials, key=lambda t: t.number):
            history = curves[o.number].history if o.number in curves else {}
            row = [o.number, o.state, o.diagnosis or "", o.reason or "", o.epochs, o.seed]
            row += [o.params.get(n, "") for n in names]
            row += [history[k][-1][1] if history.get(k) else "" for k in metric_keys]
            row += [_best(history.get(k), k) for k in metric_keys if k != "lr"]
            writer.writerow(row)
    return path


def write_best_params(path: Path, result: StudyResult, spec: Spec) -> Path:
    """The best trial's configuration as a spec of its own, every value fixed, to re-run it."""
    assert result.best is not None
    doc = spec.fixed_at(result.best.params).to_doc()
    path.write_text(
        f"# The best trial (#{result.best.number}) of study {result.study}, every value fixed.\n"
        f"# Re-run it with: tuner launch best_params.yaml --trials 1\n" + yaml.safe_dump(doc, sort_keys=False)
    )
    return path


def _best(points: list[tuple[int, float]] | None, key: str) -> Any:
    if not points:
        return ""
    values = [v for _, v in points]
    return max(values) if "accuracy" in key else min(values)
