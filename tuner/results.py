"""What a study produces, as plain values: a trial's outcome, a launch's plan and result, a loss curve.

The bottom of the package: it imports nothing from tuner and nothing heavy, so that every module (and a
program reading a result) can use these types without loading Ray, Optuna, MLflow or TensorFlow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CURVE_METRICS", "STATES", "Curve", "Curves", "Launch", "StudyResult", "TrialOutcome"]

#: How a trial can end, in the words tuner prints, tags and counts (Optuna's COMPLETE, PRUNED and FAIL).
STATES = ("complete", "pruned", "failed")
#: What a trial reports each epoch and tuner keeps as its curves (logged to MLflow, plotted, tabulated).
CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae", "lr")


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended, as told to Optuna. ``params`` use the plain names (``learning_rate``)."""

    number: int
    state: str
    value: float | None
    epochs: int
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    reason: str | None = None
    trial_id: str | None = None
    diagnosis: str | None = None


@dataclass(frozen=True)
class StudyResult:
    """What a launch did: its trials as Optuna records them, best first."""

    study: str
    storage: str
    metric: str
    mode: str
    trials: tuple[TrialOutcome, ...]
    wall_seconds: float
    experiment_path: str
    interrupted: bool = False
    #: Interrupted by SIGTERM rather than Ctrl-C.
    terminated: bool = False
    mlflow: dict[str, str] | None = None
    #: MLflow records the launch kept in its work directory, unsent: the server did not answer at the end.
    unsent_records: int = 0

    def counts(self) -> dict[str, int]:
        states = [t.state for t in self.trials]
        return {state: states.count(state) for state in STATES}

    def ranked(self) -> list[TrialOutcome]:
        """Complete trials best first, then the others by number."""
        sign = 1.0 if self.mode == "min" else -1.0
        done = sorted((t for t in self.trials if t.value is not None), key=lambda t: sign * (t.value or 0.0))
        return done + [t for t in self.trials if t.value is None]

    @property
    def best(self) -> TrialOutcome | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].value is not None else None

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "study": self.study,
            "storage": self.storage,
            "trials": self.counts(),
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
            "wall_seconds": round(self.wall_seconds, 3),
            "metric": self.metric,
            "mode": self.mode,
            "interrupted": self.interrupted,
            "terminated": self.terminated,
            "mlflow": self.mlflow,
            "unsent_records": self.unsent_records,
        }


@dataclass(frozen=True)
class Launch:
    """What a launch is about to run, for the caller to show: given to ``announce``."""

    study: str
    trials: int
    resumed: int
    concurrency: int
    sampler: str
    seed: int
    data: str
    metric: str
    mode: str
    storage: str


@dataclass(frozen=True)
class Curve:
    """One trial's per-epoch metrics, ``{"val_loss": [(epoch, value), ...], ...}``, and how it ended."""

    optimizer: str
    state: str
    history: Mapping[str, list[tuple[int, float]]]
    diagnosis: str | None = None


class Curves:
    """Every trial's per-epoch metrics (:data:`CURVE_METRICS`) by Optuna trial number, kept once on the driver.

    The search records every result it is given (each epoch's, the last through ``on_trial_complete``) and
    diagnoses each curve from here; on resume the MLflow records add what an earlier launch logged; the plots
    and ``trials.csv`` read it. A metric a result holds but not as a number (a diverged epoch's) is NaN.
    """

    def __init__(self) -> None:
        self._points: dict[int, dict[str, dict[int, float]]] = {}

    def record(self, number: int, result: Mapping[str, Any]) -> None:
        """One epoch of trial ``number`` (``result["epoch"]``); a later record of the same epoch replaces it."""
        epoch = int(result["epoch"])
        points = self._points.setdefault(number, {})
        for key in CURVE_METRICS:
            if key in result:
                value = result[key]
                points.setdefault(key, {})[epoch] = float(value) if isinstance(value, numbers.Real) else math.nan

    def truncate(self, number: int, after: int) -> None:
        """Forget trial ``number``'s epochs after ``after``: it trains them again (from a checkpoint, or anew)."""
        for points in self._points.get(number, {}).values():
            for epoch in [e for e in points if e > after]:
                del points[epoch]

    def values(self, number: int, key: str) -> list[float]:
        """A metric's values by epoch, NaN included (what the diagnosis reads)."""
        points = self._points.get(number, {}).get(key, {})
        return [points[epoch] for epoch in sorted(points)]

    def last_epoch(self, number: int) -> int | None:
        epochs = [e for points in self._points.get(number, {}).values() for e in points]
        return max(epochs, default=None)

    def history(self, number: int) -> dict[str, list[tuple[int, float]]]:
        """Each metric's finite values as ``(epoch, value)`` pairs in order: what is plotted and tabulated."""
        out = {}
        for key, points in self._points.get(number, {}).items():
            finite = [(epoch, points[epoch]) for epoch in sorted(points) if math.isfinite(points[epoch])]
            if finite:
                out[key] = finite
        return out
