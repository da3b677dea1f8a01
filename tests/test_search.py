"""The search against real Optuna storages (SQLite in tmp_path): every sampler, truthful states."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tuner.errors import TunerError, UsageError
from tuner.optimizers import OPTIMIZERS
from tuner.plugins import SAMPLERS
from tuner.search import StudySearch, check_compatible, make_sampler, open_storage
from tuner.spec import Spec, parse_spec

CONTINUOUS = {
    "study": {"name": "s", "trials": 12},
    "optimizers": {
        "sgd": {"learning_rate": {"low": 0.001, "high": 1.0, "log": True}, "nesterov": {"choice": [True, False]}},
        "rmsprop": {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True}, "rho": {"low": 0.8, "high": 0.99}},
        "adam": {"learning_rate": {"low": 0.0001, "high": 0.1, "log": True}, "beta_1": {"low": 0.8, "high": 0.99}},
    },
    "model": {"units": {"low": 16, "high": 64}},
    "training": {"epochs": 4},
}
DISCRETE = {
    "study": {"name": "s", "trials": 12, "sampler": "grid"},
    "optimizers": {
        "sgd": {"learning_rate": {"choice": [0.01, 0.1]}, "momentum": {"low": 0.0, "high": 0.9, "step": 0.45}},
        "adam": {"learning_rate": {"choice": [0.001, 0.01]}},
    },
    "model": {"units": {"choice": [16, 32]}},
    "training": {"epochs": 4},
}


def spec_for(sampler: str) -> Spec:
    doc = DISCRETE if sampler == "grid" else CONTINUOUS
    return parse_spec({**doc, "study": {**doc["study"], "sampler": sampler}})


def search(spec: Spec, path: Path) -> StudySearch:
    storage = open_storage(f"sqlite:///{path}")
    return StudySearch(spec, storage=storage, sampler=make_sampler(spec.study.sampler, spec.study.seed))


def fake_loss(config: dict[str, Any]) -> float:
    """A deterministic stand-in for training, so that model-based samplers get the same history twice."""
    lr = config.get(config["optimizer"], {}).get("learning_rate", 0.01)
    return abs(math.log10(lr) + 2.5) + config["units"] / 100


def run(search: StudySearch, n: int) -> list[dict[str, Any]]:
    configs = []
    for i in range(n):
        config = search.suggest(f"t{i}")
        configs.append(config)
        for epoch in (1, 2, 3, 4):
            search.on_trial_result(f"t{i}", {"val_loss": fake_loss(config) / epoch, "epoch": epoch})
        search.on_trial_complete(f"t{i}", {"val_loss": fake_loss(config) / 4, "epoch": 4})
    return configs


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_gp_sampler_without_pytorch_says_how_to_install_it() -> None:
    if torch_installed():
        pytest.skip("PyTorch is installed here, so the gp sampler runs (tested with the other samplers)")
    with pytest.raises(TunerError, match=r"the gp sampler needs PyTorch .*pip install 'tuner\[gp\]'"):
        make_sampler("gp", 0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_repeats_its_proposals_and_keeps_the_space_conditional(sampler: str, tmp_path: Path) -> None:
    spec = spec_for(sampler)
    if sampler == "gp" and not torch_installed():
        pytest.skip("the gp sampler runs on PyTorch, which is not installed here (pip install -e '.[gp]')")
    first = run(search(spec, tmp_path / "a.db"), 12)
    second = run(search(spec, tmp_path / "b.db"), 12)
    assert first == second
    for config in first:
        chosen = config["optimizer"]
        assert set(config[chosen]) <= set(OPTIMIZERS[chosen].defaults())
        assert not any(name in config for name in OPTIMIZERS if name != chosen)
    if sampler == "grid":
        distinct = {
            repr(sorted((k, repr(v)) for k, v in c.items() if k not in ("seed", "trial_number"))) for c in first
        }
        assert len(distinct) == 12  # (sgd 2 x 3 + adam 2) x units 2 = 16 points, none proposed twice
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12


def test_a_different_seed_proposes_differently(tmp_path: Path) -> None:
    spec = spec_for("tpe")
    other = parse_spec({**CONTINUOUS, "study": {**CONTINUOUS["study"], "seed": 1}})
    assert run(search(spec, tmp_path / "a.db"), 3) != run(search(other, tmp_path / "b.db"), 3)


def test_states_told_to_optuna_are_the_truth(tmp_path: Path) -> None:
    s = search(spec_for("random"), tmp_path / "s.db")
    for i in range(5):
        s.suggest(f"t{i}")
    # t0 trains all 4 epochs (the trainer reports the training loss beside the metric, as tuner's does)
    for epoch in (1, 2, 3, 4):
        s.on_trial_result("t0", {"loss": 1.1 / epoch, "val_loss": 1.0 / epoch, "epoch": epoch})
    s.on_trial_complete("t0", {"loss": 1.1 / 4, "val_loss": 0.25, "epoch": 4})
    # t1 is stopped after 2 epochs (e.g. by a scheduler): a partial budget is not a result
    s.on_trial_result("t1", {"loss": 0.95, "val_loss": 0.9, "epoch": 1})
    s.on_trial_result("t1", {"loss": 0.85, "val_loss": 0.8, "epoch": 2})
    s.on_trial_complete("t1", {"loss": 0.85, "val_loss": 0.8, "epoch": 2})
    # t2 diverges in epoch 2: the NaN is never reported
    s.on_trial_result("t2", {"loss": 2.1, "val_loss": 2.0, "epoch": 1})
    s.on_trial_result("t2", {"loss": None, "val_loss": float("nan"), "epoch": 2})
    done = {"loss": None, "val_loss": None, "epoch": 2, "stop_reason": "diverged: loss=nan at epoch 2"}
    s.on_trial_complete("t2", done)
    # t3 raises; the callback brings the reason
    s.on_trial_complete("t3", error=True)
    s.tell_failure("t3", "RuntimeError: boom", 1)
    # t4 is still running when the run ends
    left = s.close("interrupted before it finished")

    trials = {t.user_attrs["ray_trial_id"]: t for t in s.study.trials}
    assert left == [trials["t4"].number]
    assert trials["t0"].state == TrialState.COMPLETE and trials["t0"].value == 0.25
    assert trials["t0"].intermediate_values == {1: 1.0, 2: 0.5, 3: 1 / 3, 4: 0.25}
    assert trials["t1"].state == TrialState.PRUNED
    assert trials["t1"].user_attrs["stop_reason"] == "stopped by asha at epoch 2 of 4"
    assert trials["t1"].intermediate_values == {1: 0.9, 2: 0.8}
    assert trials["t2"].state == TrialState.PRUNED
    assert trials["t2"].user_attrs["stop_reason"] == "diverged: loss=nan at epoch 2"
    assert trials["t2"].intermediate_values == {1: 2.0}
    assert trials["t3"].state == TrialState.FAIL and trials["t3"].user_attrs["fail_reason"] == "RuntimeError: boom"
    assert trials["t4"].state == TrialState.FAIL
    assert trials["t4"].user_attrs["fail_reason"] == "interrupted before it finished"
    assert {o.state for o in s.outcomes.values()} == {"complete", "pruned", "failed"}
    # Curves are diagnosed when they end; a trial that never reported an epoch has no curve.
    assert trials["t2"].user_attrs["diagnosis"] == "diverged" and "diagnosis" not in trials["t4"].user_attrs
    assert trials["t0"].user_attrs["diagnosis"] == "good"
    # Each curve is kept once, by Optuna number, NaN included for the diagnosis.
    assert s.curves.values(trials["t0"].number, "val_loss") == [1.0, 0.5, 1 / 3, 0.25]
    assert s.curves.history(trials["t2"].number) == {"loss": [(1, 2.1)], "val_loss": [(1, 2.0)]}
    assert s.outcomes["t0"].params["optimizer"] in OPTIMIZERS


def test_a_curve_stopped_early_is_diagnosed_against_the_others_at_the_same_epoch(tmp_path: Path) -> None:
    """A trial ASHA stops at epoch 2 is not `too_slow` for being above the best trial's final loss: what
    matters is where the others were at epoch 2."""
    s = search(spec_for("random"), tmp_path / "s.db")
    curves = {"t0": [1.0, 0.5, 0.3, 0.2], "t1": [1.0, 0.55], "t2": [2.3, 2.2]}
    for trial_id, values in curves.items():
        s.suggest(trial_id)
        for epoch, value in enumerate(values, 1):
            s.on_trial_result(trial_id, {"loss": value, "val_loss": value, "epoch": epoch})
        s.on_trial_complete(trial_id, {"loss": values[-1], "val_loss": values[-1], "epoch": len(values)})
    labels = {t.user_attrs["ray_trial_id"]: t.user_attrs["diagnosis"] for t in s.study.trials}
    # t1 at epoch 2 is level with t0 at epoch 2 (though 0.55 > 2 x t0's final 0.2); t2 is far behind it.
    assert labels == {"t0": "good", "t1": "good", "t2": "too_slow"}


def test_an_existing_study_with_another_space_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    run(search(spec_for("random"), tmp_path / "s.db"), 2)
    changed = parse_spec({**CONTINUOUS, "model": {"units": {"low": 16, "high": 64, "log": True}}})
    with pytest.raises(UsageError) as info:
        check_compatible(open_storage(url), changed)
    assert str(info.value).startswith("study 's' already exists with units searched as IntDistribution(")
    assert str(info.value).endswith(
        "Optuna cannot mix the two in one study: pick a new study name (study.name or --name) or another --storage"
    )
    flipped = parse_spec({**CONTINUOUS, "study": {**CONTINUOUS["study"], "mode": "max"}})
    with pytest.raises(UsageError, match="already exists and minimizes its metric; this spec maximizes"):
        check_compatible(open_storage(url), flipped)
    check_compatible(open_storage(url), spec_for("random"))  # the same space is fine
