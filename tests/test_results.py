"""The plain values a study produces: a launch's result ranks and counts its trials; curves are kept once."""

from __future__ import annotations

import math
import subprocess
import sys

from tuner.results import Curves, StudyResult, TrialOutcome


def outcome(number: int, state: str, value: float | None) -> TrialOutcome:
    return TrialOutcome(number=number, state=state, value=value, epochs=3)


def test_a_result_ranks_complete_trials_by_its_mode_then_the_rest() -> None:
    trials = (outcome(0, "pruned", None), outcome(1, "complete", 0.5), outcome(2, "complete", 0.2))
    low = StudyResult("s", "sqlite://", "val_loss", "min", trials, 1.0, "x")
    high = StudyResult("s", "sqlite://", "val_accuracy", "max", trials, 1.0, "x")
    assert [t.number for t in low.ranked()] == [2, 1, 0] and low.best == trials[2]
    assert [t.number for t in high.ranked()] == [1, 2, 0] and high.best == trials[1]
    assert low.counts() == {"complete": 2, "pruned": 1, "failed": 0}
    assert low.to_json()["best"] == {"number": 2, "value": 0.2, "params": {}}


def test_curves_keep_nan_for_the_diagnosis_and_finite_points_for_the_records() -> None:
    curves = Curves()
    curves.record(7, {"epoch": 2, "loss": 0.5, "val_loss": 0.6, "node_id": "x"})
    curves.record(7, {"epoch": 1, "loss": 1.0, "val_loss": 1.1, "accuracy": 0.3})
    curves.record(7, {"epoch": 3, "loss": None, "val_loss": float("inf"), "stop_reason": "diverged"})
    curves.record(7, {"epoch": 2, "loss": 0.4})  # a later record of an epoch replaces it
    loss = curves.values(7, "loss")
    assert loss[:2] == [1.0, 0.4] and math.isnan(loss[2])
    assert curves.history(7) == {"loss": [(1, 1.0), (2, 0.4)], "val_loss": [(1, 1.1), (2, 0.6)], "accuracy": [(1, 0.3)]}
    assert curves.last_epoch(7) == 3 and curves.last_epoch(8) is None and curves.history(8) == {}


def test_curves_forget_the_epochs_a_resumed_trial_trains_again() -> None:
    import numpy as np

    curves = Curves()
    for epoch in (1, 2, 3, 4):
        curves.record(3, {"epoch": epoch, "loss": np.float32(1.0 / epoch)})  # numpy numbers are numbers
    curves.truncate(3, after=2)
    assert curves.history(3) == {"loss": [(1, 1.0), (2, 0.5)]} and curves.last_epoch(3) == 2


def test_the_results_module_imports_nothing_heavy() -> None:
    heavy = "('ray', 'optuna', 'mlflow', 'tensorflow', 'matplotlib')"
    code = f"import sys, tuner.results; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
