"""What a person reads: here, Optuna's charts of a study (the rest is checked on real launches' artifacts)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.report import plot_study


def test_optunas_charts_wait_for_a_complete_trial(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A launch stopped before any trial completed writes no empty chart, and Optuna prints no warning."""
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert plot_study(study, tmp_path) == [] and not list(tmp_path.iterdir())
    assert "There are no complete trials" not in capfd.readouterr().err
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    assert plot_study(study, tmp_path) == [tmp_path / "optimization_history.png"]
