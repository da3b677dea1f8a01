"""The public surface is what __all__ says, and importing it stays light."""

from __future__ import annotations

import inspect
import subprocess
import sys

import tuner


def test_all_names_exactly_the_public_members() -> None:
    # As HTTPX's test_exported_members: every public name the package offers (lazy ones included), nothing more.
    members = [n for n in dir(tuner) if not n.startswith("_") and not inspect.ismodule(getattr(tuner, n))]
    assert sorted(tuner.__all__) == sorted([*members, "__version__"])
    assert len(set(tuner.__all__)) == len(tuner.__all__)
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None


def test_importing_tuner_imports_nothing_heavy() -> None:
    code = (
        "import sys, tuner; from tuner import StudyResult, TrialOutcome, Spec; "
        "print([m for m in ('ray', 'tensorflow', 'optuna', 'mlflow', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_carry_exit_codes() -> None:
    assert tuner.TunerError.exit_code == 1
    assert tuner.UsageError.exit_code == tuner.SpecError.exit_code == 2
    assert issubclass(tuner.SpecError, tuner.UsageError) and issubclass(tuner.UsageError, tuner.TunerError)
