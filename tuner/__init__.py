"""tuner: distributed hyperparameter tuning for TensorFlow models, on Optuna, Ray Tune and MLflow.

Importing ``tuner`` imports nothing heavy: Ray, Optuna and TensorFlow load when a study runs.

Example:
    >>> import tuner
    >>> spec = tuner.load_spec("search_spaces/adam.yaml").override(trials=4, epochs=3)  # doctest: +SKIP
    >>> result = tuner.run_study(spec, workdir="runs")  # doctest: +SKIP
    >>> result.best.params  # doctest: +SKIP
"""

# Every public name here is exported (tests/test_exports.py checks it): helpers are imported as private names.
import importlib as _importlib
import typing as _typing

from tuner.errors import SpecError, TunerError, UsageError
from tuner.results import StudyResult, TrialOutcome
from tuner.spec import Spec, load_spec

if _typing.TYPE_CHECKING:
    from tuner.runner import RunOptions, run_study

__version__ = "0.1.0"

__all__ = [
    "RunOptions",
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

#: Names that load their module on first use: it imports Ray and Optuna.
_LAZY = {"RunOptions": "tuner.runner", "run_study": "tuner.runner"}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
