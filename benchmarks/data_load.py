"""How long a large CSV dataset takes to validate and to load, as ``tuner launch`` does both in one process.

    python benchmarks/data_load.py                      # a 200 MB file: 50 float features and a class target
    python benchmarks/data_load.py --baseline HEAD~1    # and the same with tuner/data.py as it was at a git revision
    python benchmarks/data_load.py --mb 20 --repeat 1   # a quicker look

Writes the file (numbers with up to 6 decimals, a target of 5 classes) and a spec naming it in a temporary
directory, reads the file once into the page cache, then, in a fresh process for each run: (a) ``tuner.load_spec``
on the spec, which reads the file to validate it and find its task, and (b) ``load_dataset`` on its ``data``, which
trains would get (split and standardised). Wall seconds are the best of ``--repeat`` runs; peak RSS is the process's.
A baseline runs the same with ``tuner/data.py`` taken from a git revision (``git show REV:tuner/data.py``), in place
of tuner's own. Everything is printed and written to ``benchmarks/results/data_load.{json,md}``. A benchmark, not a
test: the figures are reported, not asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURES = 50
CLASSES = 5


def write_csv(path: Path, mb: float) -> dict[str, Any]:
    """A CSV file of about ``mb`` megabytes: FEATURES normal floats rounded to 6 decimals, then a class label."""
    import numpy as np
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    rng = np.random.default_rng(0)
    rows = int(mb * 1e6 / (FEATURES * 9.5 + 2))  # a cell is about 9.5 characters, with its comma
    columns: dict[str, Any] = {f"f{i}": rng.normal(size=rows).round(6) for i in range(FEATURES)}
    columns["label"] = rng.integers(0, CLASSES, size=rows)
    with path.open("wb") as file:
        file.write((",".join(columns) + "\n").encode())  # pyarrow would quote the names
        pa_csv.write_csv(pa.table(columns), file, pa_csv.WriteOptions(include_header=False))
    return {"rows": rows, "features": FEATURES, "mb": round(path.stat().st_size / 1e6, 1)}


def run(spec: Path, baseline: str | None) -> dict[str, Any]:
    """In this process: validate the spec, then load its data, as a launch does."""
    import tuner.spec

    datamod: Any = tuner.data
    if baseline:  # the other data.py stands in for tuner.data wherever the spec reads it
        show = ["git", "show", f"{baseline}:tuner/data.py"]
        source = subprocess.run(show, cwd=ROOT, capture_output=True, text=True, check=False)
        if source.returncode != 0:
            raise SystemExit(f"git show {baseline}:tuner/data.py failed: {source.stderr.strip()}")
        module = Path(tempfile.mkdtemp()) / "baseline_data.py"
        module.write_text(source.stdout)
        found = importlib.util.spec_from_file_location("baseline_data", module)
        assert found is not None and found.loader is not None
        datamod = sys.modules["baseline_data"] = importlib.util.module_from_spec(found)  # dataclasses look it up
        found.loader.exec_module(datamod)
        tuner.spec.datamod = datamod
    started = time.perf_counter()
    loaded = tuner.spec.load_spec(spec)
    validated = time.perf_counter()
    dataset = datamod.load_dataset(loaded.data, seed=loaded.study.seed, source=loaded.source)
    done = time.perf_counter()
    return {
        "validate_seconds": round(validated - started, 2),
        "load_dataset_seconds": round(done - validated, 2),
        "total_seconds": round(done - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "examples": len(dataset.x_train) + len(dataset.x_val),
    }


def measure(spec: Path, baseline: str | None, repeat: int) -> dict[str, Any]:
    """The best of ``repeat`` runs, each in a fresh process (so that nothing is cached between them)."""
    runs = []
    for _ in range(repeat):
        args = [sys.executable, __file__, "--run", str(spec), *(["--baseline", baseline] if baseline else [])]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["total_seconds"])
    return {**best, "runs": [r["total_seconds"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="size of the CSV file to write (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, in fresh processes; the best is kept")
    parser.add_argument("--baseline", help="also run tuner/data.py as it is at this git revision")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run, args.baseline)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a {args.mb:g} MB CSV file ...", flush=True)
        data = write_csv(Path(tmp) / "data.csv", args.mb)
        spec = Path(tmp) / "spec.yaml"
        spec.write_text("data: {dataset: 'csv:data.csv', target: label}\noptimizers: {adam: {}}\n")
        (Path(tmp) / "data.csv").read_bytes()  # into the page cache: every run reads it from memory
        report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "file": data, "runs": {}}
        variants: list[tuple[str, str | None]] = [("tuner", None)]
        if args.baseline:  # named by its commit, which stays true when HEAD moves on
            rev_parse = ["git", "rev-parse", "--short", args.baseline]
            commit = subprocess.run(rev_parse, cwd=ROOT, capture_output=True, text=True, check=False)
            variants.append((f"tuner/data.py at {commit.stdout.strip() or args.baseline}", args.baseline))
        for name, baseline in variants:
            print(f"running {name} ({args.repeat}x) ...", flush=True)
            report["runs"][name] = measure(spec, baseline, args.repeat)
    write_report("data_load", report, markdown(report), args.out)


def markdown(report: dict[str, Any]) -> str:
    f = report["file"]
    lines = [
        f"{report['date']}, {report['machine']}; a {f['mb']} MB CSV file, {f['rows']} rows x {f['features']} float "
        f"features + a class target, read from the page cache",
        "",
        "| data.py | (a) validate s | (b) load_dataset s | total s | peak RSS MB | total s of each run |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['validate_seconds']} | {r['load_dataset_seconds']} | {r['total_seconds']} | "
            f"{r['peak_rss_mb']} | {', '.join(map(str, r['runs']))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
