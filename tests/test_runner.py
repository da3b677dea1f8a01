"""run_study end to end on a real local Ray, a real SQLite Optuna storage and real Keras training."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tuner import run_study, runner
from tuner.optimizers import OPTIMIZERS
from tuner.runner import QUIET_LOGGERS, RunOptions
from tuner.spec import load_spec, parse_spec
from tuner.trainable import train_trial

from .conftest import ROOT

pytestmark = pytest.mark.usefixtures("ray_local")


def load_trials(result: Any) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=result.study, storage=result.storage).trials


def test_optimizers_study_runs_and_optuna_holds_every_trial(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "search_spaces" / "optimizers.yaml").override(trials=6, epochs=2, concurrency=2)
    seen: list[Any] = []
    result = run_study(spec, workdir=tmp_path, progress=seen.append)

    trials = load_trials(result)
    assert result.storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert len(trials) == 6 and sorted(o.number for o in seen) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert result.counts() == {"complete": 6, "pruned": 0, "failed": 0}
    for t in trials:
        chosen = t.params["optimizer"]
        foreign = [p for p in t.params if "/" in p and not p.startswith(f"{chosen}/")]
        assert not foreign, (chosen, foreign)
        assert set(t.intermediate_values) == {1, 2} and t.value == t.intermediate_values[2]
        assert t.user_attrs["epochs"] == 2 and isinstance(t.user_attrs["seed"], int)
    best = min((t for t in trials), key=lambda t: t.value)
    assert result.best is not None and result.best.number == best.number
    assert result.to_json()["best"]["value"] == best.value
    # Ray Tune reused the two actors (concurrency 2) instead of starting a process per trial.
    client = MlflowClient(result.mlflow["tracking_uri"])
    children = client.search_runs([result.mlflow["experiment_id"]], "tags.`mlflow.parentRunId` != ''")
    pids = {run.data.tags["ray.pid"] for run in children}
    assert len(children) == 6 and 1 <= len(pids) <= 2
    # Checkpoints come by time (every 10 s of training): trials this short write one each, at their end.
    # Ray Tune numbers a trial's checkpoints from 0, so the last one's name counts them.
    checkpoints = sorted(p.name for p in tmp_path.glob("ray_results/*/trial-*/checkpoint_*"))
    assert checkpoints == ["checkpoint_000000"] * 6


def test_a_trial_that_raises_is_failed_and_the_study_goes_on(tmp_path: Path) -> None:
    def flaky(config: dict[str, Any], data: Any, **options: Any) -> None:
        if config["trial_number"] == 1:
            raise RuntimeError("boom in trial 1\nwhile doing this and that")  # fail_reason: type, first line
        train_trial(config, data, **options)

    spec = parse_spec({"study": {"name": "flaky", "trials": 3}, "training": {"epochs": 1}, "optimizers": {"adam": {}}})
    result = run_study(spec, workdir=tmp_path, trainable=flaky)
    states = {t.number: t for t in load_trials(result)}
    assert states[1].state == TrialState.FAIL
    assert states[1].user_attrs["fail_reason"] == "RuntimeError: boom in trial 1"
    assert states[0].state == states[2].state == TrialState.COMPLETE
    assert result.counts() == {"complete": 2, "pruned": 1 - 1, "failed": 1}


def test_diverging_trials_are_pruned_and_nan_never_reaches_optuna(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "study": {"name": "diverge", "trials": 4},
            "training": {"epochs": 8},
            "optimizers": {"sgd": {"learning_rate": {"low": 5.0, "high": 50.0}}},
        }
    )
    result = run_study(spec, workdir=tmp_path)
    for t in load_trials(result):
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["stop_reason"].startswith("diverged: ")
        assert t.user_attrs["epochs"] <= 2
        assert all(math.isfinite(v) for v in t.intermediate_values.values())
    assert result.best is None and result.counts()["pruned"] == 4


def test_a_study_leaves_the_callers_process_as_it_found_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import os
    import signal
    import warnings

    spec = parse_spec({"study": {"name": "tidy", "trials": 1}, "training": {"epochs": 1}, "optimizers": {"sgd": {}}})
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the caller's own value, which a quiet launch changes
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        environ, filters = dict(os.environ), list(warnings.filters)
        sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; so does the launch, while it runs
        result = run_study(spec, RunOptions(workdir=tmp_path, verbose=False))
        assert result.counts()["complete"] == 1
        assert signal.getsignal(signal.SIGTERM) is sigterm
        assert dict(os.environ) == environ
        assert list(warnings.filters) == filters
        assert {name: logging.getLogger(name).level for name in QUIET_LOGGERS} == dict.fromkeys(
            QUIET_LOGGERS, logging.DEBUG
        )
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_regression_study_on_diabetes(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "study": {"name": "reg", "trials": 2, "metric": "val_mae"},
            "data": {"dataset": "diabetes"},
            "training": {"epochs": 2},
            "optimizers": {"rmsprop": {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}},
        }
    )
    result = run_study(spec, workdir=tmp_path)
    assert result.counts()["complete"] == 2 and result.mode == "min"
    assert all(set(t.params) == {"optimizer", "learning_rate"} for t in result.trials)
    assert set(OPTIMIZERS["rmsprop"].defaults()) >= {"learning_rate"}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_driver_is_resumed_with_exactly_the_trials_it_asked_for(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kill -9 of `tuner launch` mid-study, then `tuner resume`: N trials in Optuna, N runs under one
    parent in MLflow, none RUNNING, none twice, and the interrupted trials continue from their checkpoints,
    kept in the work directory or in an S3 bucket (a real S3-compatible server on 127.0.0.1)."""
    import os
    import signal
    import subprocess
    import time

    from .conftest import tuner_command, write

    env, options = dict(os.environ), []
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        env.update(s3)
        endpoint = s3["TUNER_TEST_S3_ENDPOINT"]
        options = ["--storage-path", f"s3://tuner/{tmp_path.name}?endpoint_override={endpoint}&scheme=http"]

    spec = write(
        tmp_path / "long.yaml",
        "study: {name: kill, trials: 6, concurrency: 2}\ntraining: {epochs: 20, checkpoint_every: 1}\n"
        "pruning: {scheduler: none}\n"
        "optimizers:\n  adam: {learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}}\n",
    )
    workdir = tmp_path / "work"
    out = (tmp_path / "launch.txt").open("w")
    driver = subprocess.Popen(
        [tuner_command(), "launch", str(spec), "--workdir", str(workdir), *options], stdout=out, env=env
    )
    storage = f"sqlite:///{workdir / 'optuna.db'}"

    def checkpointed() -> bool:  # a later trial is running with a few epochs (and their checkpoints) behind it
        if "[2/6]" not in (tmp_path / "launch.txt").read_text():
            return False
        trials = optuna.load_study(study_name="kill", storage=storage).trials
        return any(t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3 for t in trials)

    deadline = time.monotonic() + 240
    while not checkpointed() and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = optuna.load_study(study_name="kill", storage=storage).trials
    assert any(t.state == TrialState.RUNNING for t in before)  # the kill left trials hanging

    done = subprocess.run(
        [tuner_command(), "resume", "kill", "--workdir", str(workdir), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trials"] == {"complete": 6, "pruned": 0, "failed": 0}

    trials = optuna.load_study(study_name="kill", storage=storage).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == list(range(1, 21)) for t in trials)
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([summary["mlflow"]["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow"]["parent_run_id"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert {r.info.status for r in runs} == {"FINISHED"}
    resumed = [r for r in children if "resumed_from_epoch" in r.data.tags]
    assert resumed and all(int(r.data.tags["resumed_from_epoch"]) >= 1 for r in resumed)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, 21))  # every epoch once: nothing lost, nothing twice
    if where == "s3":  # both launches kept their checkpoints in the bucket, not in the work directory
        import boto3

        client_s3 = boto3.client(
            "s3", endpoint_url=f"http://{endpoint}", region_name=s3["AWS_DEFAULT_REGION"],
            aws_access_key_id=s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip
        bucket = client_s3.list_objects_v2(Bucket="tuner")
        keys = [o["Key"] for o in bucket["Contents"] if o["Key"].startswith(f"{tmp_path.name}/kill-")]
        assert len({k.split("/")[1] for k in keys if "/checkpoint_" in k}) == 2  # two experiments
        assert not list(workdir.glob("**/checkpoint_*"))


def test_two_launches_at_once_into_a_fresh_workdir_both_succeed(tmp_path: Path) -> None:
    """Two real `tuner launch` processes, started together into an empty work directory, both create or open
    the stores (Optuna's and MLflow's tables are made on first use): 2 + 3 trials in Optuna, two parent runs in
    MLflow with their own children, none twice, none RUNNING."""
    import subprocess

    from .conftest import tuner_command, write

    spec = write(
        tmp_path / "s.yaml",
        "study: {name: twice}\ndata: {dataset: iris}\ntraining: {epochs: 2}\noptimizers: {adam: {}}\n",
    )
    workdir = tmp_path / "work"
    launches = [
        subprocess.Popen(
            [tuner_command(), "launch", str(spec), "--workdir", str(workdir), "--trials", str(n), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (2, 3)
    ]
    outputs = [launch.communicate(timeout=600) for launch in launches]
    for launch, (_, err) in zip(launches, outputs, strict=True):
        assert launch.returncode == 0, err[-3000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    trials = optuna.load_study(study_name="twice", storage=f"sqlite:///{workdir / 'optuna.db'}").trials
    assert sorted(t.number for t in trials) == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    client = MlflowClient(summaries[0]["mlflow"]["tracking_uri"])
    runs = client.search_runs([summaries[0]["mlflow"]["experiment_id"]])
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert parents == {s["mlflow"]["parent_run_id"] for s in summaries}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(5))
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_sigterm_before_ray_tunes_handler_is_in_place_still_stops_the_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM after connecting but before Ray Tune's loop has put in its own SIGINT handler (here sent the
    moment the search is made) is only recorded; the stopper's stop_all then ends the loop at its first step,
    and the launch reports itself terminated, with no trial left RUNNING and no run left open."""

    class SignalledSearch(runner.StudySearch):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread, before the next line

    monkeypatch.setattr(runner, "StudySearch", SignalledSearch)
    spec = load_spec(ROOT / "search_spaces" / "adam.yaml").override(trials=6, epochs=5, concurrency=1)
    result = run_study(spec, workdir=tmp_path)
    assert result.interrupted and result.terminated
    trials = load_trials(result)
    assert 0 < len(trials) < 6 and TrialState.RUNNING not in {t.state for t in trials}
    client = MlflowClient(result.mlflow["tracking_uri"])
    runs = client.search_runs([result.mlflow["experiment_id"]])
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {int(r.data.tags["optuna.trial_number"]) for r in children} == {t.number for t in trials}
    for run in children:  # a trial stopped before it started has a run like the others'
        assert {"optimizer", "learning_rate", "epochs", "batch_size", "units"} <= set(run.data.params), run.data.params
