"""tuner: distributed hyperparameter tuning for TensorFlow models, on Optuna, Ray Tune and MLflow.

Importing ``tuner`` imports nothing heavy: Ray, Optuna and TensorFlow load when a study runs.

Example:
    >>> import tuner
    >>> spec = tuner.load_spec("search_spaces/adam.yaml").override(trials=4, epochs=3)  # doctest: +SKIP
    >>> result = tuner.run_study(spec, workdir="runs")  # doctest: +SKIP
    >>> result.best.params  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import SpecError, TunerError, UsageError
from tuner.spec import Spec, load_spec

if TYPE_CHECKING:
    from tuner.runner import StudyResult, run_study
    from tuner.search import TrialOutcome

__version__ = "0.1.0"

__all__ = [
    "Spec",
    "SpecError",
    "StudyResult",
    "TrialOutcome",
    "TunerError",
    "UsageError",
    "__version__",
    "load_spec",
    "run_study",
]

_LAZY = {"run_study": "tuner.runner", "StudyResult": "tuner.runner", "TrialOutcome": "tuner.search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
