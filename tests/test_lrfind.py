"""tuner lr-find: the suggestion rule on curves built to fool it, and the command end to end on digits."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tuner.lrfind import STEPS, Suggestion, narrowed, suggest
from tuner.spec import Range, load_spec

from .conftest import ROOT, tuner_command, write

# -- the rule

RATES = np.geomspace(1e-6, 10.0, STEPS)


def at(fraction: float) -> int:
    """The step a fraction of the way through the sweep."""
    return round(fraction * (len(RATES) - 1))


def range_test(rates: np.ndarray = RATES) -> np.ndarray:
    """A range test's loss as it looks on digits: flat at 2.5 while the rate is too small, falling between
    1e-4 and 1e-2, lowest near 3e-2, blowing up from 0.1."""
    x = np.log10(rates)
    loss = 0.1 + 2.4 / (1 + np.exp((x + 2.7) / 0.3))
    return loss + np.where(x > -1.5, 0.1 * (10 ** (3 * (x + 1.5)) - 1), 0.0)


def decades(a: float, b: float) -> float:
    return abs(math.log10(a / b))


def test_a_clean_curve_suggests_where_the_loss_falls() -> None:
    found = suggest(RATES, range_test())
    assert isinstance(found, tuple), found
    low, high = found
    # Half of the fall is at 10**-2.7 = 2e-3; the lowest loss near 3e-2, a third of which is 1e-2.
    assert decades(low, 2e-3) < 0.1 and 3e-3 < high < 2e-2 and low < high


@pytest.mark.parametrize(
    "spoil",
    [
        "noise",  # each batch's loss 15% off, as a small batch's is
        "an early spike",  # one batch at 10x, where the rate is still too small
        "an early dip",  # two batches near zero, early: a steepest-slope rule jumps to them
        "a long early dip",  # seven batches at 1.0, more than the median ignores: below half of the fall
        "a spike as it falls",  # one batch at 50x while the loss falls: a mean alone would stop the walk down
        "nan at the top",  # the sweep ends in NaN
        "spikes everywhere",  # a bad batch every 20
    ],
)
def test_the_suggestion_is_not_fooled(spoil: str) -> None:
    clean = suggest(RATES, range_test())
    loss = range_test().copy()
    rng = np.random.default_rng(0)
    if spoil == "noise":
        loss *= rng.lognormal(0.0, 0.15, len(loss))
    elif spoil == "an early spike":
        loss[at(0.13)] *= 10
    elif spoil == "an early dip":
        loss[at(0.2) : at(0.2) + 2] = 0.01
    elif spoil == "a long early dip":
        loss[at(0.2) : at(0.2) + 7] = 1.0
    elif spoil == "a spike as it falls":
        loss[at(0.54)] *= 50
    elif spoil == "nan at the top":
        loss[at(0.87) :] = math.nan
    elif spoil == "spikes everywhere":
        loss[:: max(2, len(loss) // 15)] *= 8
    found = suggest(RATES, loss)
    assert isinstance(found, tuple) and isinstance(clean, tuple), found
    assert decades(found[0], clean[0]) < 0.15 and decades(found[1], clean[1]) < 0.15, (found, clean)


def test_a_curve_that_never_falls_or_blows_up_at_once_suggests_nothing() -> None:
    assert "hardly fell" in str(suggest(RATES, np.full(len(RATES), 2.5)))
    early = range_test()
    early[at(0.1) :] = math.nan
    assert "began too high" in str(suggest(RATES, early))


def test_a_sweep_the_blow_up_rule_cut_short_began_too_high() -> None:
    """The sweep stops once the loss blows up: a curve of 17 of its 100 planned steps suggests nothing."""
    short = range_test()[:17]
    assert "began too high" in str(suggest(RATES[:17], short, planned=len(RATES)))


def test_narrowed_keeps_fixed_rates_filters_choices_and_finds_the_data_from_anywhere(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "a,b,y\n" + "\n".join(f"{i},{i % 7},{i % 2}" for i in range(40)) + "\n")
    source = write(
        tmp_path / "spec.yaml",
        "data: {dataset: 'csv:d.csv', target: y}\n"
        "optimizers:\n  sgd: {learning_rate: 0.1}\n  adam: {learning_rate: {choice: [0.0001, 0.003, 0.01, 0.3]}}\n",
    )  # no study section: its name is the default
    spec = load_spec(source)
    suggestions = [
        Suggestion("sgd", 0.05, 0.5, (1e-3, 10.0), "0.1 (fixed)", (), 0.1),
        Suggestion("adam", 0.002, 0.02, (1e-6, 30.0), "{0.0001, 0.003, 0.01, 0.3}", (), 0.1),
    ]
    elsewhere = write(tmp_path / "other" / "narrow.yaml", narrowed(source, suggestions, spec))
    new = load_spec(elsewhere)  # relative to its own folder, the data file would not be found
    assert new.study.name == f"{spec.study.name}-narrowed" and new.data.path == spec.data.path
    assert dict(new.optimizer("sgd").params)["learning_rate"] == 0.1
    adam = dict(new.optimizer("adam").params)["learning_rate"]
    assert adam.options == (0.003, 0.01)


def test_narrowed_writes_a_valid_spec_with_each_suggested_range(tmp_path: Path) -> None:
    source = ROOT / "search_spaces" / "optimizers.yaml"
    suggestions = [
        Suggestion("sgd", 0.05, 0.5, (1e-5, 100.0), "[0.001, 1]", (), 0.1),
        Suggestion("adam", None, None, (1e-6, 10.0), "[0.0001, 0.1]", (), None, note="the loss hardly fell"),
    ]
    original = load_spec(source)
    spec = load_spec(write(tmp_path / "narrow.yaml", narrowed(source, suggestions, original)))
    assert spec.study.name == f"{original.study.name}-narrowed"
    sgd = dict(spec.optimizer("sgd").params)["learning_rate"]
    assert isinstance(sgd, Range) and (sgd.low, sgd.high, sgd.log) == (0.05, 0.5, True)
    # Without a suggestion an optimizer keeps its range; everything else stays as it was.
    assert spec.optimizer("adam") == original.optimizer("adam")
    assert spec.model == original.model and spec.training == original.training


# -- the command


def lr_find(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tuner_command(), "lr-find", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "nadam"], "--optimizer: "),
        (["--write", "SPEC"], "--write: give a new file"),
        (["--write", "no/such/folder/new.yaml"], "--write: cannot write in"),
    ],
)
def test_bad_options_exit_2_and_create_nothing(args: list[str], message: str, tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.yaml", (ROOT / "search_spaces" / "optimizers.yaml").read_text())
    done = lr_find(str(spec), *[str(spec) if a == "SPEC" else a for a in args], "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "w").exists()


def test_a_data_file_that_cannot_be_read_is_exit_2_before_anything_starts(tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.yaml", "data: {dataset: 'csv:missing.csv', target: y}\noptimizers: {adam: {}}\n")
    done = lr_find(str(spec), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "missing.csv" in done.stderr and str(spec) in done.stderr, done.stderr
    assert not (tmp_path / "w").exists()


#: The issue's grid on digits (10 epochs, batch 64): the learning rates that are too slow, good, and diverge.
GRID = {
    "sgd": {"too_slow": 0.03, "good": (0.1, 1.0), "diverged": 3.0},
    "rmsprop": {"too_slow": 3e-4, "good": (1e-3, 1e-2), "diverged": 0.3},
    "adam": {"too_slow": 3e-4, "good": (3e-3, 1e-2), "diverged": 1.0},
}


def test_lr_find_on_digits_suggests_ranges_a_grid_agrees_with(tmp_path: Path) -> None:
    """The shipped optimizers spec, for real: each suggestion lies above the rates too slow for the grid, below
    those that diverge, and overlaps the good ones; the run lr-find holds the curves and the plot; --write
    gives a spec that loads."""
    new = tmp_path / "narrow.yaml"
    done = lr_find(str(ROOT / "search_spaces" / "optimizers.yaml"), "--json", "--write", str(new))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, rates in GRID.items():
        s = result["optimizers"][name]
        low, high = s["low"], s["high"]
        assert rates["too_slow"] < low <= high < rates["diverged"], (name, s)
        assert low <= rates["good"][1] and high >= rates["good"][0], (name, s)
        assert s["spread_decades"] < 0.5 and all(seed is not None for seed in s["seeds"]), (name, s)
        assert f"[{low:g}, {high:g}]" in done.stdout  # the terminal's table
    client = MlflowClient(result["mlflow"]["tracking_uri"])
    run = client.get_run(result["mlflow"]["run_id"])
    assert run.info.run_name == "lr-find" and run.info.status == "FINISHED"
    assert (
        run.data.params["adam.suggested"]
        == f"[{result['optimizers']['adam']['low']:g}, {result['optimizers']['adam']['high']:g}]"
    )
    assert {"lr_find.png", "lr_find.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    history = client.get_metric_history(run.info.run_id, "sgd_seed0_loss")
    assert len(history) > 50  # the curve, step by step
    narrow = load_spec(new)
    for name in GRID:
        lr = dict(narrow.optimizer(name).params)["learning_rate"]
        assert isinstance(lr, Range) and (lr.low, lr.high) == (
            result["optimizers"][name]["low"],
            result["optimizers"][name]["high"],
        )
