"""The divergence rule, the schedulers, the curve diagnosis, and truthful states end to end."""

from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

from tuner import run_study
from tuner.pruning import LABELS, Divergence, FiniteOnly, diagnose, make_scheduler
from tuner.spec import Pruning, parse_spec

from .conftest import ROOT, tuner_command, write

RECORDED = json.loads((Path(__file__).parent / "curves" / "recorded.json").read_text())["curves"]


def curve(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# -- the divergence rule


def test_a_nan_or_infinite_loss_diverges_at_once() -> None:
    rule = Divergence(max_ratio=None)
    assert rule.check(epoch=3, loss=float("nan")) == "diverged: loss=nan at epoch 3"
    assert rule.check(epoch=1, loss=float("inf")) == "diverged: loss=inf at epoch 1"


def test_the_ratio_rule_waits_for_its_patience() -> None:
    rule = Divergence(max_ratio=10.0, patience=2)
    rule.first(2.3)
    rule.first(99.0)  # only the first measured loss counts
    assert rule.check(1, 1.0) is None
    assert rule.check(2, 30.0) is None  # one epoch above 23
    assert rule.check(3, 5.0) is None  # back below: the count restarts
    assert rule.check(4, 24.0) is None
    assert rule.check(5, 57.1) == "diverged: loss 57.1 > 10 x 2.3"


def test_the_ratio_rule_can_be_off() -> None:
    rule = Divergence(max_ratio=None)
    rule.first(1.0)
    assert rule.check(1, 1e9) is None


# -- schedulers


def test_schedulers_decide_by_epoch_with_the_specs_settings() -> None:
    asha = make_scheduler(Pruning(grace_epochs=3, reduction_factor=2), metric="val_loss", mode="min", epochs=20)
    assert isinstance(asha, FiniteOnly) and isinstance(asha.inner, AsyncHyperBandScheduler)
    assert asha.metric == "val_loss" and asha.inner._time_attr == "epoch" and asha.inner._max_t == 20
    assert [b._rungs[-1][0] for b in asha.inner._brackets] == [3] and asha.inner._reduction_factor == 2
    hyperband = make_scheduler(Pruning(scheduler="hyperband"), metric="val_loss", mode="min", epochs=18)
    assert len(hyperband.inner._brackets) == 3
    median = make_scheduler(Pruning(scheduler="median", grace_epochs=4), metric="val_accuracy", mode="max", epochs=9)
    assert isinstance(median.inner, MedianStoppingRule) and median.inner._grace_period == 4
    assert type(make_scheduler(Pruning(scheduler="none"), metric="loss", mode="min", epochs=5)) is FIFOScheduler


# -- diagnosis


SYNTHETIC: list[tuple[str, list[float], list[float], float | None, str | None, str]] = [
    ("smooth decay", [2.3 * math.exp(-0.6 * t) + 0.02 for t in range(15)], [], None, None, "good"),
    ("decay, best known", [2.3 * math.exp(-0.6 * t) + 0.02 for t in range(15)], [], 0.05, None, "good"),
    ("straight and slow", [2.3 - 0.005 * t for t in range(15)], [], None, None, "too_slow"),
    ("straight, far from best", [2.3 - 0.08 * t for t in range(15)], [], 0.1, None, "too_slow"),
    ("nan in epoch 3", [2.3, 1.2, math.nan], [], None, None, "diverged"),
    ("stopped by the rule", [2.3, 60.0], [], None, "diverged: loss 60 > 10 x 2.3", "diverged"),
    ("grows without bound", [1.0 * 3**t for t in range(8)], [], None, None, "diverged"),
    ("zig-zag", [1.0, 0.5, 0.8, 0.4, 0.9, 0.3, 0.7, 0.35, 0.8, 0.3, 0.75, 0.4], [], None, None, "oscillating"),
    ("swings that grow", [0.6, 0.4, 0.5, 0.45, 0.7, 0.6, 1.1, 0.9, 1.6, 1.3, 2.2], [], None, None, "oscillating"),
    (
        "stuck at chance",
        [2.6, 2.31, 2.302, 2.303, 2.302, 2.3025, 2.302, 2.303, 2.302, 2.3021],
        [],
        None,
        None,
        "plateau",
    ),
    ("stuck, best known", [2.4, 1.9, 1.85, 1.86, 1.85, 1.851, 1.852, 1.85], [], 0.1, None, "plateau"),
    ("one epoch", [2.3], [], 0.1, None, "good"),
    ("validation flat while training falls", [1.0 / (t + 1) ** 2 for t in range(12)], [0.3] * 12, 0.1, None, "good"),
    # The two curves of issue #13 the earlier rules read as good: Adam at lr 0.1 on digits, whose loss falls
    # to 0.61 and climbs back to 1.54; Adam at lr 0.03, whose validation loss rises while its loss falls.
    (
        "gives back its way down",
        [2.47, 1.8, 1.3, 0.95, 0.75, 0.61, 0.62, 1.2, 1.5, 1.54],
        [2.7, 2.2, 1.7, 1.4, 1.19, 1.3, 2.4, 3.9, 5.0, 5.66],
        None,
        None,
        "oscillating",
    ),
    (
        "overfits",
        [0.9, 0.3, 0.15, 0.08, 0.05, 0.035, 0.025, 0.018, 0.014, 0.012],
        [0.5, 0.36, 0.33, 0.35, 0.38, 0.42, 0.45, 0.48, 0.51, 0.54],
        0.1,
        None,
        "overfitting",
    ),
    (
        "validation up in its last epoch only",
        [1.0 / (t + 1) for t in range(10)],
        [*[0.5 - 0.03 * t for t in range(9)], 0.6],
        None,
        None,
        "good",
    ),
    ("a rise far below the fall", [2.5, 1.0, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1, 0.2, 0.3], [], None, None, "good"),
    ("wiggles near zero", [0.6, 0.02, 1e-4, 2e-4, 1e-4, 3e-4, 1e-4, 2e-4, 1e-4], [], None, None, "good"),
]


@pytest.mark.parametrize(("name", "loss", "val", "best", "reason", "label"), SYNTHETIC, ids=[c[0] for c in SYNTHETIC])
def test_synthetic_curves(
    name: str, loss: list[float], val: list[float], best: float | None, reason: str | None, label: str
) -> None:
    assert diagnose(loss, val, stop_reason=reason, best_val_loss=best) == label


def test_the_recorded_curves_are_read_as_a_person_reads_them() -> None:
    """Curves from real runs on digits, wine and breast cancer, labelled by eye (tests/curves/record.py), every
    label among them. The README says how many the rules read as the person did: that figure is this count,
    exactly, so a change to the rules or to the curves that gains or loses one must say so there too."""
    assert {c["label"] for c in RECORDED} == set(LABELS) and len(RECORDED) >= 100
    wrong = []
    for c in RECORDED:
        got = diagnose(curve(c["loss"]), curve(c["val_loss"]), best_val_loss=c["best_val_loss"])
        if got != c["label"]:
            wrong.append((c["source"], c["label"], got))
    agree = len(RECORDED) - len(wrong)
    figure = f"checked against {len(RECORDED)} curves", f"they agree on {agree} ({round(100 * agree / len(RECORDED))}%)"
    stated = " ".join((ROOT / "README.md").read_text().split())  # the figure may wrap at any space
    assert all(part in stated for part in figure), (figure, wrong)
    # Every label the recordings hold is recognised most of the time, not only the common ones, and the
    # README's table says how often.
    for label, n in Counter(c["label"] for c in RECORDED).items():
        missed = sum(1 for _, expected, _ in wrong if expected == label)
        assert missed / n <= 0.25, (label, wrong)
        assert f"| `{label}` | {n} | {n - missed} |" in stated, (label, n, n - missed)


def test_the_issue_13_curves_are_read_as_a_person_reads_them() -> None:
    """On the learning-rate grid (digits, 10 epochs), Adam at lr 0.1 climbs back up and Adam at lr 0.03
    overfits: the rules before issue #13 read both as good."""
    grid = {c["source"]: c for c in RECORDED if c["source"].startswith("digits seed 0: adam") and "grid" in c["source"]}

    def label(rate: str) -> str:
        c = grid[f"digits seed 0: adam {{'learning_rate': {rate}}}, grid"]
        return diagnose(curve(c["loss"]), curve(c["val_loss"]), best_val_loss=c["best_val_loss"])

    assert label("0.1") not in ("good", "overfitting")
    assert label("0.03") == "overfitting"


# -- end to end


def launch(spec: Path, workdir: Path, *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [tuner_command(), "launch", str(spec), "--json", "--workdir", str(workdir), *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_learning_rates_far_too_large_are_all_pruned_as_diverged(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "blowup.yaml",
        "study: {name: blowup, trials: 6}\ndata: {dataset: digits}\ntraining: {epochs: 10}\n"
        "optimizers:\n  sgd: {learning_rate: {low: 5, high: 50}}\n",
    )
    summary = launch(spec, tmp_path)
    assert summary["trials"] == {"complete": 0, "pruned": 6, "failed": 0} and summary["best"] is None
    study = optuna.load_study(study_name="blowup", storage=summary["storage"])
    for t in study.trials:
        assert t.state == TrialState.PRUNED and t.user_attrs["stop_reason"].startswith("diverged")
        assert t.user_attrs["epochs"] <= 2 and t.user_attrs["diagnosis"] == "diverged"
        assert all(math.isfinite(v) for v in t.intermediate_values.values())
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([summary["mlflow"]["experiment_id"]], "tags.state = 'pruned'")
    assert len(runs) == 6
    for run in runs:
        for key in ("loss", "val_loss", "accuracy", "val_accuracy", "lr"):
            assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_optuna_mlflow_and_the_json_agree_on_every_trial(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "wide.yaml",
        "study: {name: wide, trials: 8}\ndata: {dataset: digits}\ntraining: {epochs: 6}\n"
        "optimizers:\n  sgd: {learning_rate: {low: 1.0e-6, high: 10, log: true}}\n"
        "  adam: {learning_rate: {low: 1.0e-6, high: 10, log: true}}\n",
    )
    summary = launch(spec, tmp_path)
    study = optuna.load_study(study_name="wide", storage=summary["storage"])
    states = {t.number: {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state] for t in study.trials}
    assert summary["trials"] == {s: list(states.values()).count(s) for s in ("complete", "pruned", "failed")}
    assert summary["trials"]["pruned"] >= 1 and summary["trials"]["complete"] >= 1
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([summary["mlflow"]["experiment_id"]], "tags.`mlflow.parentRunId` != ''")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert set(by_number) == set(states)
    status = {"complete": "FINISHED", "pruned": "KILLED"}
    for t in study.trials:
        run = by_number[t.number]
        assert run.data.tags["state"] == states[t.number] and run.info.status == status[states[t.number]]
        assert run.data.tags["diagnosis"] == t.user_attrs["diagnosis"] in LABELS
        assert run.data.tags.get("stop_reason") == t.user_attrs.get("stop_reason")
        if states[t.number] == "pruned":
            assert t.user_attrs["epochs"] < 6
        else:
            assert t.user_attrs["epochs"] == 6 and t.value == t.intermediate_values[6]


@pytest.mark.usefixtures("ray_local")
def test_a_tiny_learning_rate_is_too_slow_and_a_huge_one_diverged(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "study": {"name": "extremes", "trials": 2, "sampler": "grid"},
            "data": {"dataset": "digits"},
            "training": {"epochs": 5},
            "pruning": {"scheduler": "none"},
            "optimizers": {"sgd": {"learning_rate": {"choice": [1e-6, 30.0]}}},
        }
    )
    result = run_study(spec, workdir=tmp_path)
    labels = {t.params["learning_rate"]: t.diagnosis for t in result.trials}
    assert labels == {1e-6: "too_slow", 30.0: "diverged"}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("scheduler", ["asha", "hyperband", "median"])
def test_a_trial_the_scheduler_stops_is_pruned_in_optuna_and_killed_in_mlflow(scheduler: str, tmp_path: Path) -> None:
    """A real launch (local Ray, SQLite Optuna and MLflow) in which the scheduler really stops a trial.

    One trial at a time over a grid of SGD learning rates on iris: the seeded grid runs three that learn
    (0.1, 0.2, 0.3) and then a hopeless one (1e-6), whose validation loss after its first epoch (the grace
    period) is far behind the others' at that epoch, so each scheduler stops it there: ASHA at its first rung,
    the median rule (which wants 3 other trials) against the others' median, Hyperband at the first rung of the
    bracket it drew for it (from NumPy's global generator, seeded here, with the others already in it). Without
    a scheduler it would train on; any other trial a scheduler stops must say the same things.
    """
    epochs = 4
    spec = parse_spec(
        {
            "study": {"name": f"stopped-{scheduler}", "trials": 4, "concurrency": 1, "sampler": "grid", "seed": 11},
            "data": {"dataset": "iris"},
            "model": {"layers": 1, "units": 16},
            "training": {"epochs": epochs, "batch_size": 16},
            "pruning": {"scheduler": scheduler, "grace_epochs": 1, "reduction_factor": 2},
            "optimizers": {"sgd": {"learning_rate": {"choice": [0.1, 0.2, 0.3, 1e-6]}}},
        }
    )
    saved = np.random.get_state()
    np.random.seed(0)
    try:
        result = run_study(spec, workdir=tmp_path)
    finally:
        np.random.set_state(saved)

    trials = optuna.load_study(study_name=result.study, storage=result.storage).trials
    hopeless = next(t for t in trials if t.params["sgd/learning_rate"] == 1e-6)
    assert hopeless.number == 3, "the grid's order changed: the hopeless trial must come after the others"
    assert hopeless.state == TrialState.PRUNED, hopeless.user_attrs
    assert hopeless.user_attrs["epochs"] == 1
    assert hopeless.user_attrs["stop_reason"] == f"stopped by {scheduler} at epoch 1 of {epochs}"
    assert list(hopeless.intermediate_values) == [1]  # it keeps what it reported

    assert result.mlflow is not None
    client = MlflowClient(result.mlflow["tracking_uri"])
    runs = client.search_runs([result.mlflow["experiment_id"]], "tags.`mlflow.parentRunId` != ''")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert sorted(by_number) == [0, 1, 2, 3]
    for t in trials:  # the hopeless trial, and any other the scheduler stopped, say the same everywhere
        run = by_number[t.number]
        if t.state == TrialState.PRUNED:
            at = t.user_attrs["epochs"]
            assert t.user_attrs["stop_reason"] == f"stopped by {scheduler} at epoch {at} of {epochs}" and at < epochs
            assert run.info.status == "KILLED" and run.data.tags["state"] == "pruned"
            assert run.data.tags["stop_reason"] == t.user_attrs["stop_reason"]
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["epochs"] == epochs
            assert run.info.status == "FINISHED" and "stop_reason" not in run.data.tags
    assert result.counts()["pruned"] >= 1 and result.counts()["failed"] == 0
