"""The optimizers a spec can search: one registry, each optimizer defined here once.

Each entry names its Keras class and its hyperparameters, with the values a spec may give them and Keras'
defaults (the values a trial takes for those the spec leaves out). Spec validation, the search space, the
trainer (:mod:`tuner.model`, :mod:`tuner.engine`), the loss-curve plot and the README's table all read it;
``tests/test_optimizers.py`` checks the defaults against Keras' own and the README against :func:`table`.

Light on purpose: no TensorFlow here, so that validating a spec stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["OPTIMIZERS", "Bounds", "Hyperparameter", "OptimizerType", "table"]


@dataclass(frozen=True)
class Bounds:
    """Where a number may lie: ``[low, high]``, each end open or closed, or absent (unbounded).

    The registry bounds each hyperparameter with it; the spec bounds its other numbers (``model.dropout``,
    ``study.trials``) with it too, so that every rule reads the same way in errors and in the README.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        """Whether a number is within the bounds (NaN never is)."""
        if math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def rule(self, *, integer: bool = False) -> str:
        """The bounds in words, as errors and the README say them: ``> 0``, ``in [0, 1)``, ``at least 1``."""
        if self.high is None:
            assert self.low is not None
            if integer and not self.low_open and self.low >= 1:
                return f"at least {self.low:g}"
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: a number within ``bounds``, or a flag (``bounds`` is ``None``); and Keras' default."""

    name: str
    default: float | bool
    bounds: Bounds | None = None

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)


@dataclass(frozen=True)
class OptimizerType:
    """An optimizer a spec names: its Keras class (``keras.optimizers.<keras_class>``), its hyperparameters,
    and the marker its trials get in the loss-curve plot."""

    name: str
    keras_class: str
    hyperparameters: tuple[Hyperparameter, ...]
    marker: str

    def hyperparameter(self, name: str) -> Hyperparameter:
        return next(h for h in self.hyperparameters if h.name == name)

    def defaults(self) -> dict[str, float | bool]:
        """Every hyperparameter at Keras' default."""
        return {h.name: h.default for h in self.hyperparameters}


def _positive(name: str, default: float) -> Hyperparameter:
    return Hyperparameter(name, default, Bounds(0.0, low_open=True))


def _fraction(name: str, default: float) -> Hyperparameter:
    """In [0, 1): a decay rate of a moving average (rho, beta_1, beta_2)."""
    return Hyperparameter(name, default, Bounds(0.0, 1.0, high_open=True))


#: ``decay`` keeps its classic Keras meaning, lr_t = lr / (1 + decay * t) with t the updates so far; 0 is off.
_DECAY = Hyperparameter("decay", 0.0, Bounds(0.0))
_MOMENTUM = Hyperparameter("momentum", 0.0, Bounds(0.0, 1.0))

#: Every optimizer a spec can name (``optimizers.<name>``), with its hyperparameters in the order shown.
OPTIMIZERS: dict[str, OptimizerType] = {
    o.name: o
    for o in (
        OptimizerType(
            "sgd",
            "SGD",
            (_positive("learning_rate", 0.01), _MOMENTUM, Hyperparameter("nesterov", False), _DECAY),
            marker="o",
        ),
        OptimizerType(
            "rmsprop",
            "RMSprop",
            (_positive("learning_rate", 0.001), _fraction("rho", 0.9), _MOMENTUM, _positive("epsilon", 1e-7), _DECAY),
            marker="s",
        ),
        OptimizerType(
            "adam",
            "Adam",
            (
                _positive("learning_rate", 0.001),
                _fraction("beta_1", 0.9),
                _fraction("beta_2", 0.999),
                _positive("epsilon", 1e-7),
                Hyperparameter("amsgrad", False),
                _DECAY,
            ),
            marker="^",
        ),
    )
}


def table() -> str:
    """The README's table of optimizers: each with its hyperparameters, Keras' defaults and bounds."""

    def cell(h: Hyperparameter) -> str:
        default = ("true" if h.default else "false") if h.is_flag else f"{h.default:g}".replace("e-0", "e-")
        return f"`{h.name}` ({default})" + (f" {h.bounds.rule().replace('>=', '≥')}" if h.bounds else "")

    rows = ["| optimizer | hyperparameters (Keras default) |", "| --- | --- |"]
    rows += [f"| `{o.name}` | {', '.join(cell(h) for h in o.hyperparameters)} |" for o in OPTIMIZERS.values()]
    return "\n".join(rows)
