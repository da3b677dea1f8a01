"""tuner's design rules, checked on its source by scripts/check_design.py: no import cycles among its modules
(top-level, TYPE_CHECKING and in-function imports alike) and no reaching into Ray's or Optuna's private state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, write

CHECK = ROOT / "scripts" / "check_design.py"


def check(package: Path | None = None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(CHECK), *([str(package)] if package else [])]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_tuner_has_no_import_cycle_and_uses_no_private_state() -> None:
    done = check()
    assert done.returncode == 0 and done.stdout == "", done.stdout
    assert "tuner: 0 findings" in done.stderr


def test_the_check_finds_cycles_and_private_uses(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    write(package / "__init__.py", "")
    write(package / "a.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    write(package / "b.py", "def f():\n    from pkg import c\n\nclass B: ...\n")
    write(package / "c.py", "from . import a\n")
    write(
        package / "search.py",
        "from ray._private import utils\n"
        "from ray.tune.search.optuna import OptunaSearch\n\n"
        "class Mine(OptunaSearch):\n"
        "    def __init__(self):\n"
        "        self._mine, self._also = 1, 2\n\n"
        "    def go(self, study):\n"
        "        return self._ot_trials, self._mine, self._also, study._storage\n",
    )
    done = check(package)
    assert done.returncode == 1
    assert "import cycle: pkg.a <-> pkg.b <-> pkg.c" in done.stdout
    assert "pkg/search.py:1: imports private _private from ray._private" in done.stdout
    assert "pkg/search.py:9: Mine reads self._ot_trials, private state of its base OptunaSearch" in done.stdout
    assert "pkg/search.py:9: reads study._storage, another object's private state" in done.stdout
    assert "_mine" not in done.stdout and "_also" not in done.stdout  # its own state, set in its own class
    assert len(done.stdout.splitlines()) == 4
