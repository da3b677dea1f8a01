from __future__ import annotations

import optuna
import pytest

from tuner.space import SearchSpace, plain_params, trial_seed
from tuner.spec import parse_spec

OPTIMIZERS = {
    "optimizers": {
        "sgd": {"learning_rate": {"low": 0.001, "high": 1.0, "log": True}, "momentum": 0.9, "nesterov": True},
        "rmsprop": {"rho": {"low": 0.8, "high": 0.99}, "epsilon": 1e-6},
        "adam": {"beta_1": {"low": 0.8, "high": 0.99}, "amsgrad": {"choice": [True, False]}},
    },
    "model": {"units": {"choice": [32, 64]}, "layers": 2},
    "training": {"epochs": 3, "batch_size": 16},
}


def trial_for(study: optuna.Study, optimizer: str) -> optuna.Trial:
    study.enqueue_trial({"optimizer": optimizer})
    return study.ask()


@pytest.mark.parametrize(
    ("optimizer", "searched", "fixed"),
    [
        ("sgd", {"sgd/learning_rate"}, {"sgd/momentum": 0.9, "sgd/nesterov": True}),
        ("rmsprop", {"rmsprop/rho"}, {"rmsprop/epsilon": 1e-6}),
        ("adam", {"adam/beta_1", "adam/amsgrad"}, {}),
    ],
)
def test_a_trial_draws_only_its_optimizers_hyperparameters(optimizer: str, searched: set, fixed: dict) -> None:
    spec = parse_spec(OPTIMIZERS)
    study = optuna.create_study()
    trial = trial_for(study, optimizer)
    returned = SearchSpace(spec)(trial)
    assert set(trial.params) == {"optimizer", "units", *searched}
    assert returned["optimizer"] == optimizer and optimizer in returned
    drawn = {f"{optimizer}/{k}": v for k, v in returned[optimizer].items()}
    assert {k: v for k, v in drawn.items() if k not in trial.params} == fixed
    assert {k: v for k, v in drawn.items() if k in trial.params} == {k: trial.params[k] for k in searched}
    assert returned["units"] == trial.params["units"]
    assert SearchSpace(spec)(trial) == returned  # run again on the same trial: the same configuration
    assert returned["layers"] == 2 and returned["batch_size"] == 16 and returned["epochs"] == 3
    assert returned["seed"] == trial.user_attrs["seed"] == trial_seed(0, trial.number)
    assert returned["trial_number"] == trial.number


def test_seeds_differ_between_trials_and_repeat_for_the_same_study_seed() -> None:
    seeds = [trial_seed(0, n) for n in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [trial_seed(0, n) for n in range(100)]
    assert trial_seed(1, 0) != trial_seed(0, 0)
    assert all(0 <= s < 2**31 for s in seeds)


def test_plain_params_drop_the_optimizer_prefix() -> None:
    assert plain_params({"optimizer": "sgd", "sgd/momentum": 0.5, "units": 4}) == {
        "optimizer": "sgd",
        "momentum": 0.5,
        "units": 4,
    }


def test_grid_size_counts_the_conditional_grid() -> None:
    spec = parse_spec(
        {
            "study": {"sampler": "grid"},
            "optimizers": {
                "sgd": {"learning_rate": {"choice": [0.01, 0.1]}, "nesterov": {"choice": [True, False]}},
                "adam": {"beta_1": {"low": 0.8, "high": 0.95, "step": 0.05}},
            },
            "model": {"layers": {"low": 1, "high": 3}},
        }
    )
    # (sgd: 2 x 2 + adam: 4) x layers 3
    assert spec.grid_size() == (2 * 2 + 4) * 3
    assert spec.planned_trials == 20 and spec.override(trials=30).planned_trials == 24
