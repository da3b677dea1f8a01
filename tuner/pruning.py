"""Stopping trials early, and reading each loss curve the way a person would.

- :class:`Divergence`: the rule a trainer applies to its own loss (NaN/inf at once, inside the epoch; a loss
  ``max_ratio`` times its first measured loss for ``patience`` epochs).
- :func:`make_scheduler`: Ray Tune's ASHA, (asynchronous) Hyperband or median stopping, over epochs.
- :func:`diagnose`: a label for a finished or stopped curve: diverged, oscillating, overfitting, too_slow,
  plateau or good.

The trainer (on a worker) uses the rule, the driver the rest; neither imports TensorFlow here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuner.plugins import SCHEDULERS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    from tuner.spec import Pruning

__all__ = ["LABELS", "Divergence", "diagnose", "finite_only", "make_scheduler"]

LABELS = ("diverged", "oscillating", "overfitting", "too_slow", "plateau", "good")

#: A rise of the training loss by more than this fraction from one epoch to the next counts as a swing,
#: if it is also more than SWING_FLOOR of the curve's first value (wiggles near zero loss are not swings).
SWING = 0.10
SWING_FLOOR = 0.005
#: A curve oscillates with at least this many swings (and a fifth of its steps), one in its second half.
MIN_SWINGS = 3
#: Unstable: a training loss that ends having given back more than this fraction of its way down (from its
#: first value to its lowest) has been thrown out of its minimum by too large a step.
GIVE_BACK = 0.25
#: Overfitting: a validation loss that ends more than this fraction above its own lowest, while the training
#: loss has gone on falling since.
OVERFIT = 0.25
#: "Far from the best trials": a validation loss above this many times the best the others had at that epoch.
FAR = 2.0
#: Without other trials to compare with, a curve is far if it has not made this much of its way down.
PROGRESS = 0.5
#: Still learning the training set: a training loss at least this fraction of the validation loss (below it
#: the trial fits its training data and the gap is overfitting, not slowness).
UNDERFIT = 0.5
#: A second half that moves less than this fraction is flat.
FLAT = 0.05
#: A loss this many times its first epoch's loss has blown up, even with the divergence rule off.
BLOW_UP = 10.0


@dataclass
class Divergence:
    """The divergence rule, applied by the trainer as it trains (it holds the state of one trial).

    Example:
        >>> rule = Divergence(max_ratio=10.0, patience=1)
        >>> rule.first(2.3)
        >>> rule.check(epoch=1, loss=1.9) is None
        True
        >>> rule.check(epoch=2, loss=57.1)
        'diverged: loss 57.1 > 10 x 2.3'
    """

    max_ratio: float | None = 10.0
    patience: int = 1
    _first: float | None = field(default=None, init=False, repr=False)
    _above: int = field(default=0, init=False, repr=False)

    def first(self, loss: float) -> None:
        """Record the first measured loss (the first batch's); later calls do nothing."""
        if self._first is None and math.isfinite(loss):
            self._first = loss

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the rule, so that a resumed trial judges as it would have."""
        return {"first": self._first, "above": self._above}

    def restore(self, state: dict[str, Any]) -> None:
        self._first, self._above = state["first"], int(state["above"])

    def check(self, epoch: int, loss: float) -> str | None:
        """The reason to stop after this epoch's loss, or ``None``."""
        if not math.isfinite(loss):
            return f"diverged: loss={loss:g} at epoch {epoch}"
        if self.max_ratio is None or self._first is None:
            return None
        self._above = self._above + 1 if loss > self.max_ratio * self._first else 0
        if self._above >= self.patience:
            return f"diverged: loss {loss:.3g} > {self.max_ratio:g} x {self._first:.3g}"
        return None


def make_scheduler(pruning: Pruning, *, metric: str, mode: str, epochs: int) -> TrialScheduler:
    """The Ray Tune scheduler a spec asks for (see :data:`tuner.plugins.SCHEDULERS`), deciding by epochs, not
    wall-clock, and only ever shown finite values (see :func:`finite_only`)."""
    build = SCHEDULERS[pruning.scheduler].build
    inner = build(metric, mode, epochs, pruning.grace_epochs, pruning.reduction_factor)
    return FIFOScheduler() if inner is None else finite_only(inner, metric)


def finite_only(scheduler: TrialScheduler, metric: str) -> TrialScheduler:
    """Wrap a Ray Tune scheduler so that a result without a finite ``metric`` never reaches it.

    A diverged trial's last result holds no number for its metric; ASHA would multiply it (and crash),
    the median rule would average it. Such a trial leaves the scheduler as a removed trial.
    """
    return FiniteOnly(scheduler, metric)


class FiniteOnly(TrialScheduler):
    """A Ray Tune scheduler that sees only results with a finite metric (built by :func:`finite_only`)."""

    def __init__(self, inner: TrialScheduler, metric: str) -> None:
        self.inner, self._finite_metric = inner, metric

    @property
    def metric(self) -> str | None:
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.inner.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> str:
        if not _finite(result.get(self._finite_metric)):
            return TrialScheduler.CONTINUE
        return self.inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> None:
        if _finite(result.get(self._finite_metric)):
            self.inner.on_trial_complete(tune_controller, trial, result)
        else:
            self.inner.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def diagnose(
    loss: Sequence[float],
    val_loss: Sequence[float] = (),
    *,
    stop_reason: str | None = None,
    best_val_loss: float | None = None,
) -> str:
    """Label a finished or stopped trial's curves (one value per epoch) as a person reads them after the lecture
    on learning rates. The first rule that holds wins:

    1. ``diverged``: the divergence rule stopped it, a value is NaN/inf, or the loss rose to 10x its first.
    2. ``oscillating``: the learning rate is too large for the loss to settle. Either the loss goes up and
       down: at least 3 rises of more than 10% from one epoch to the next (and in a fifth of the steps), one
       of them in the second half; a rise counts if it is also more than 0.5% of the first loss, so that
       wiggles near zero are not swings. Or it ends having given back more than a quarter of its way down
       (from its first value to its lowest), and more than 10% of its lowest.
    3. ``overfitting``: the validation loss ends more than 25% above its own lowest (and by more than 0.5% of
       its first), while the training loss has gone on falling since that lowest epoch.
    4. ``too_slow``: still descending steadily at the end (every step of the last third lower), still
       underfitting (training loss at least half the validation loss), and far from the best trials (a
       validation loss above 2x the lowest other trials had at the same epoch; with none to compare,
       less than half of its starting loss gone): the learning rate is probably too small.
    5. ``plateau``: stuck at a high loss: not descending at the end, the second half within 5%, and
       far from the best trials as above.
    6. ``good``: none of these. A curve of a single epoch has no shape: it is ``diverged`` or ``good``.

    Args:
        loss: training loss per epoch.
        val_loss: validation loss per epoch (the training loss stands in where it is missing).
        stop_reason: why the trial stopped early, if it did.
        best_val_loss: the lowest validation loss the study's ended trials had at this curve's last epoch
            (a curve stopped at epoch 2 is compared with the others' epoch 2, not with their end), if any.
    """
    values = list(loss)
    if (stop_reason or "").startswith("diverged") or any(not math.isfinite(v) for v in values):
        return "diverged"
    if not values:
        return "good"
    first, last = values[0], values[-1]
    if max(values) >= BLOW_UP * first and last > first:
        return "diverged"
    if len(values) < 2:
        return "good"
    steps = len(values) - 1
    floor = SWING_FLOOR * abs(first)
    swings = [
        i
        for i in range(1, len(values))
        if values[i] > values[i - 1] * (1 + SWING) and values[i] - values[i - 1] > floor
    ]
    if len(swings) >= max(MIN_SWINGS, 0.2 * steps) and swings[-1] >= len(values) / 2:
        return "oscillating"
    lowest = min(values)
    if last - lowest > max(GIVE_BACK * (first - lowest), SWING * lowest, floor):
        return "oscillating"
    validation = [v for v in val_loss if math.isfinite(v)] or values
    if len(validation) == len(values) and _overfits(values, validation):
        return "overfitting"
    tail = min(steps, max(2, len(values) // 3))
    descending = all(values[i] < values[i - 1] for i in range(len(values) - tail, len(values)))
    if best_val_loss is not None:
        far = validation[-1] > FAR * best_val_loss
    else:
        far = first > 0 and (first - last) / first < PROGRESS
    underfit = last >= UNDERFIT * validation[-1]
    if descending and underfit and far:
        return "too_slow"
    middle = values[len(values) // 2]
    flat = middle > 0 and abs(last - middle) / middle < FLAT
    if not descending and flat and far:
        return "plateau"
    return "good"


def _overfits(loss: Sequence[float], val_loss: Sequence[float]) -> bool:
    """Whether the validation loss ends well above its own lowest while the training loss went on falling."""
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    end = min(val_loss[-2:])  # above in both of the last two epochs: one noisy epoch is not a trend
    rise = end - val_loss[best]
    return rise > OVERFIT * val_loss[best] and rise > SWING_FLOOR * abs(val_loss[0]) and loss[-1] < loss[best]
