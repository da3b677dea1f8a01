"""A spec as an Optuna define-by-run search space, conditional on the optimizer type.

Each optimizer's hyperparameters are their own Optuna parameters, named ``OPTIMIZER/NAME``
(``adam/learning_rate``, ``sgd/learning_rate``): a good learning rate for SGD says nothing about one for
Adam, and Optuna refuses one name with two different distributions. A trial's configuration nests them
under the optimizer's name: ``{"optimizer": "adam", "adam": {"learning_rate": ...}, "units": ...}``.
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

    It returns the trial's whole configuration, drawn and fixed values alike, nested as the trainer reads
    it, plus the trial's seed (also an Optuna user attribute) and its Optuna number. Run again on a trial
    that has drawn its values, it returns the same configuration (Optuna returns a drawn value as it is).

    Example:
        >>> import optuna
        >>> space = SearchSpace(load_spec("search_spaces/optimizers.yaml"))  # doctest: +SKIP
        >>> space(optuna.create_study().ask())  # doctest: +SKIP
        {'optimizer': 'adam', 'adam': {'learning_rate': 0.0031}, 'layers': 1, ..., 'seed': ..., 'trial_number': 0}
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        spec = self.spec
        optimizer = str(trial.suggest_categorical("optimizer", [o.name for o in spec.optimizers]))
        params = {key: _draw(trial, f"{optimizer}/{key}", value) for key, value in spec.optimizer(optimizer).params}
        model = {key: _draw(trial, key, value) for key, value in spec.model_values()}
        seed = trial_seed(spec.study.seed, trial.number)
        trial.set_user_attr("seed", seed)
        t = spec.training
        training = {
            "epochs": t.epochs,
            "checkpoint_every": t.checkpoint_every,
            "checkpoint_interval_s": t.checkpoint_interval_s,
        }
        return {
            "optimizer": optimizer,
            optimizer: params,
            **model,
            **training,
            "seed": seed,
            "trial_number": trial.number,
        }


def _draw(trial: optuna.Trial, name: str, value: Value) -> Any:
    """The value a trial takes for one hyperparameter: drawn for a range or choice, else the fixed value."""
    if isinstance(value, Range):
        if value.integer:
            step = int(value.step or 1)
            return trial.suggest_int(name, int(value.low), int(value.high), step=step, log=value.log)
        return trial.suggest_float(name, value.low, value.high, step=value.step, log=value.log)
    if isinstance(value, Choice):
        return trial.suggest_categorical(name, list(value.options))
    return value


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number``: distinct per trial, the same for the same study seed."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0] >> 1)


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna names to the names a person reads: ``adam/learning_rate`` -> ``learning_rate``."""
    return {key.rpartition("/")[2]: value for key, value in params.items()}
