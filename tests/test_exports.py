"""The public surface is what __all__ says, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import tuner


def test_public_names() -> None:
    assert tuner.__all__ == [
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
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None


def test_importing_tuner_imports_nothing_heavy() -> None:
    code = "import sys, tuner; print([m for m in ('ray', 'tensorflow', 'optuna', 'mlflow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_carry_exit_codes() -> None:
    assert tuner.TunerError.exit_code == 1
    assert tuner.UsageError.exit_code == tuner.SpecError.exit_code == 2
    assert issubclass(tuner.SpecError, tuner.UsageError) and issubclass(tuner.UsageError, tuner.TunerError)
