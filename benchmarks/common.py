"""What every benchmark shares: the machine line of its report, and where reports go."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The machine a report was measured on, in one line."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB, Python {platform.python_version()}"


def write_report(name: str, report: dict[str, Any], text: str, out: Path = RESULTS, *, indent: int | None = 2) -> None:
    """Keep the report as ``out/NAME.json`` and ``out/NAME.md``, and print ``text``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=indent) + "\n")
    (out / f"{name}.md").write_text(text if text.endswith("\n") else text + "\n")
    print(text)
