"""What a person reads: a line per finished trial and the table of the best trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

    from tuner.runner import StudyResult
    from tuner.search import TrialOutcome

__all__ = ["best_table", "fmt", "params_text", "summary_line", "trial_line"]


def fmt(value: Any) -> str:
    """A number short enough for a table: 4 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def trial_line(outcome: TrialOutcome, metric: str, done: int, total: int) -> str:
    """``[ 3/30] trial #2   complete  val_loss=0.1234  20 epochs  optimizer=adam learning_rate=0.002``"""
    width = len(str(total))
    what = f"{metric}={fmt(outcome.value)}" if outcome.state == "complete" else outcome.reason or ""
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
    for column in ("rank", "trial", "state", result.metric, "epochs", *names):
        table.add_column(column, justify="right" if column not in ("state", "optimizer", "activation") else "left")
    for rank, row in enumerate(rows, start=1):
        ranked = row.value is not None
        value = fmt(row.value) if ranked else (row.reason or "-")
        cells = [str(rank) if ranked else "-", f"#{row.number}", row.state, value, str(row.epochs)]
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
