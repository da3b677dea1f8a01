"""A spec as an Optuna define-by-run search space, conditional on the optimizer type.

Each optimizer's hyperparameters are their own Optuna parameters, named ``OPTIMIZER/NAME``
(``adam/learning_rate``, ``sgd/learning_rate``): a good learning rate for SGD says nothing about one for
Adam, and Optuna refuses one name with two different distributions. Ray Tune's ``OptunaSearch``
unflattens the ``/`` into a nested config: ``{"optimizer": "adam", "adam": {"learning_rate": ...}}``.
Everything tuner shows a person uses the plain names, since a trial has exactly one optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.spec import Choice, Range, Spec, Value

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchSpace", "plain_params", "trial_seed"]


class SearchSpace:
    """The define-by-run function for a spec: optimizer type first, then only that type's hyperparameters,
    then the model and training values that are ranges or choices.

    It returns the fixed values too, so that each Tune config is the trial's whole configuration, plus the
    trial's seed (also an Optuna user attribute) and its Optuna number.

    Example:
        >>> import optuna
        >>> space = SearchSpace(load_spec("search_spaces/optimizers.yaml"))  # doctest: +SKIP
        >>> optuna.create_study().ask()  # then space(trial) -> {"epochs": 20, "seed": ..., ...}  # doctest: +SKIP
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        spec = self.spec
        optimizer = trial.suggest_categorical("optimizer", [o.name for o in spec.optimizers])
        fixed: dict[str, Any] = {}
        for key, value in spec.optimizer(str(optimizer)).params:
            _draw(trial, f"{optimizer}/{key}", value, fixed)
        for key, value in spec.model_values():
            _draw(trial, key, value, fixed)
        seed = trial_seed(spec.study.seed, trial.number)
        trial.set_user_attr("seed", seed)
        training = {"epochs": spec.training.epochs, "checkpoint_every": spec.training.checkpoint_every}
        return {**fixed, **training, "seed": seed, "trial_number": trial.number}


def _draw(trial: optuna.Trial, name: str, value: Value, fixed: dict[str, Any]) -> None:
    if isinstance(value, Range):
        if value.integer:
            step = int(value.step or 1)
            trial.suggest_int(name, int(value.low), int(value.high), step=step, log=value.log)
        else:
            trial.suggest_float(name, value.low, value.high, step=value.step, log=value.log)
    elif isinstance(value, Choice):
        trial.suggest_categorical(name, list(value.options))
    else:
        fixed[name] = value


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number``: distinct per trial, the same for the same study seed."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0] >> 1)


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna names to the names a person reads: ``adam/learning_rate`` -> ``learning_rate``."""
    return {key.rpartition("/")[2]: value for key, value in params.items()}
