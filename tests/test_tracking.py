"""MLflow records of real launches: a local SQLite store, a real `mlflow server`, and `tuner ui`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from PIL import Image, ImageStat

from tuner import outbox, run_study
from tuner.data import load_dataset
from tuner.optimizers import OPTIMIZERS
from tuner.report import MIN_TRIALS_FOR_IMPORTANCE
from tuner.sending import OUTBOX
from tuner.spec import load_spec, parse_spec
from tuner.trainable import train_trial

from .conftest import ROOT, MlflowServer, free_port, tuner_command, wait_for_http

ARTIFACTS = {"loss_curves.png", "optimization_history.png", "trials.csv", "best_params.yaml", "optimizers.yaml"}


def runs_of(client: MlflowClient, study: str) -> tuple[Run, list[Run]]:
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def check_study_records(client: MlflowClient, summary: dict[str, Any], epochs: int, download: Path) -> None:
    parent, children = runs_of(client, summary["study"])
    assert parent.info.run_id == summary["mlflow"]["parent_run_id"]
    assert len(children) == 6
    steps = None
    for child in children:
        assert child.info.status != "RUNNING"
        params = child.data.params
        chosen = params["optimizer"]
        takes = {o: set(OPTIMIZERS[o].defaults()) for o in OPTIMIZERS}
        others = set().union(*(takes[o] for o in takes if o != chosen)) - takes[chosen]
        assert not others & set(params), (chosen, params)
        number = int(child.data.tags["optuna.trial_number"])
        assert child.info.run_name == f"trial-{number:03d}-{chosen}"
        assert child.data.tags["seed"].isdigit() and child.data.tags["ray.trial_id"]
        # The training data is each run's input: the runs table's Dataset column.
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["digits"]
        if child.data.tags["state"] == "complete":
            assert child.info.status == "FINISHED"
            history = client.get_metric_history(child.info.run_id, "val_loss")
            assert len(history) == epochs
            steps = steps or sorted(m.step for m in history)
            assert sorted(m.step for m in history) == steps == list(range(1, epochs + 1))
            assert len(client.get_metric_history(child.info.run_id, "lr")) == epochs
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] == summary["trials"]["complete"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(summary["best"]["value"])
    assert parent.data.tags["best_trial"] == str(summary["best"]["number"])
    assert parent.data.params["study.sampler"] == "tpe" and parent.data.params["training.epochs"] == str(epochs)
    best = summary["best"]
    assert {k for k in parent.data.tags if k.startswith("best.")} == {f"best.{k}" for k in best["params"]}
    assert parent.data.tags["best.optimizer"] == best["params"]["optimizer"]
    assert parent.data.tags["best_model_uri"] == summary["mlflow"]["model_uri"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert names >= ARTIFACTS
    # Optuna's importance chart needs enough complete trials, and is there exactly when they are.
    assert ("param_importances.png" in names) == (summary["trials"]["complete"] >= MIN_TRIALS_FOR_IMPORTANCE)
    local = Path(client.download_artifacts(parent.info.run_id, "", str(download)))
    for png in local.glob("*.png"):
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
            assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, f"{png.name} is blank"
    with (local / "trials.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert sorted(int(r["number"]) for r in rows) == sorted(int(c.data.tags["optuna.trial_number"]) for c in children)
    columns = ["number", "state", "diagnosis", "reason", "epochs", "seed"]
    assert reader.fieldnames is not None and reader.fieldnames[: len(columns)] == columns
    assert {"optimizer", "learning_rate", "final_val_loss", "best_val_loss", "final_loss", "final_lr"} <= set(
        reader.fieldnames
    )
    assert {r["state"] for r in rows} <= {"complete", "pruned", "failed"} and all(r["seed"].isdigit() for r in rows)
    best_spec = load_spec(local / "best_params.yaml")
    assert best_spec.searched() == [] and [o.name for o in best_spec.optimizers] == [
        summary["best"]["params"]["optimizer"]
    ]


def test_a_launch_records_the_study_in_the_local_store(optimizers_launch: tuple[Path, dict], tmp_path: Path) -> None:
    workdir, summary = optimizers_launch
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"
    assert f"tuner ui --workdir {workdir}" in summary["_stdout"]
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    check_study_records(client, summary, epochs=3, download=tmp_path)
    # Everything the run wrote is in the work directory (MLflow's artifacts included).
    assert (workdir / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()


def test_the_best_model_is_an_mlflow_model_that_takes_raw_rows(
    optimizers_launch: tuple[Path, dict], tmp_path: Path
) -> None:
    """The best model loads with ``mlflow.pyfunc`` from its URI, takes rows as the data has them (not
    standardised), reproduces the best trial's val_loss, returns the class labels with the probabilities,
    carries a signature and an input example, and is a logged model of the experiment (its Models view)."""
    import numpy as np

    _, summary = optimizers_launch
    runs = summary["mlflow"]
    assert runs["model_uri"] == f"runs:/{runs['parent_run_id']}/best_model"
    # Fetch it with an explicit tracking URI: mlflow.set_tracking_uri would leak into later tests' env.
    local = mlflow.artifacts.download_artifacts(
        runs["model_uri"], tracking_uri=runs["tracking_uri"], dst_path=str(tmp_path)
    )
    model = mlflow.pyfunc.load_model(local)
    spec = load_spec(ROOT / "search_spaces" / "optimizers.yaml")
    data = load_dataset(spec.data, seed=spec.study.seed)
    raw = data.raw(data.x_val)
    assert not np.allclose(raw, data.x_val, atol=0.5)  # the rows as the data has them, pixels 0 to 16
    out = model.predict(raw)
    probabilities = np.asarray(out["probabilities"])
    loss = -np.mean(np.log(probabilities[np.arange(len(data.y_val)), data.y_val]))
    assert loss == pytest.approx(summary["best"]["value"], rel=1e-3)
    labels = [int(v) for v in np.asarray(out["label"])]
    assert labels == [data.classes[k] for k in probabilities.argmax(axis=1)]
    info = model.metadata
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.metadata["classes"] == list(data.classes)
    client = MlflowClient(runs["tracking_uri"])
    logged = client.search_logged_models([runs["experiment_id"]])
    assert [(m.source_run_id, str(m.status)) for m in logged] == [(runs["parent_run_id"], "READY")]
    assert logged[0].tags["tuner.trial"] == str(summary["best"]["number"])


def test_best_params_yaml_runs_as_a_one_trial_study(optimizers_launch: tuple[Path, dict], tmp_path: Path) -> None:
    workdir, summary = optimizers_launch
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    path = Path(client.download_artifacts(summary["mlflow"]["parent_run_id"], "best_params.yaml", str(tmp_path)))
    done = subprocess.run(
        [tuner_command(), "launch", str(path), "--trials", "1", "--epochs", "1", "--json", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout.strip().splitlines()[-1])
    assert again["study"] == "optimizers-digits-best" and again["trials"]["complete"] == 1
    assert again["best"]["params"] == {"optimizer": summary["best"]["params"]["optimizer"]}


def test_tuner_ui_serves_the_study(optimizers_launch: tuple[Path, dict]) -> None:
    workdir, summary = optimizers_launch
    port = free_port()
    ui = subprocess.Popen(
        [tuner_command(), "ui", "--port", str(port), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health")
        experiment = summary["mlflow"]["experiment_id"]
        found = requests.post(f"{base}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment]}, timeout=10)
        assert len(found.json()["runs"]) == 7  # the parent and its 6 trials
    finally:
        ui.terminate()
        out, _ = ui.communicate(timeout=30)
    assert f"optimizers-digits: {base}/#/experiments/{experiment}?workflowType=machine_learning" in out


def test_a_launch_against_a_real_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    spec = ROOT / "search_spaces" / "optimizers.yaml"
    args = ["launch", str(spec), "--trials", "6", "--epochs", "3", "--json", "--workdir", str(tmp_path)]
    done = subprocess.run(
        [tuner_command(), *args, "--tracking-uri", mlflow_server],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    runs = summary["mlflow"]
    assert runs["tracking_uri"] == mlflow_server
    link = f"{mlflow_server}/#/experiments/{runs['experiment_id']}/runs/{runs['parent_run_id']}"
    assert f"{link}?workflowType=machine_learning" in done.stdout
    check_study_records(MlflowClient(mlflow_server), summary, epochs=3, download=tmp_path / "dl")
    found = requests.post(
        f"{mlflow_server}/api/2.0/mlflow/runs/search", json={"experiment_ids": [runs["experiment_id"]]}, timeout=10
    )
    assert len(found.json()["runs"]) == 7
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_an_unreachable_server_fails_before_anything_starts(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    uri = f"http://127.0.0.1:{free_port()}"
    args = ["launch", str(ROOT / "search_spaces" / "adam.yaml"), "--workdir", str(workdir), "--tracking-uri", uri]
    done = subprocess.run(
        [tuner_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == f"error: cannot reach the MLflow tracking server at {uri} (ConnectionError)\n"
    assert not workdir.exists()


@pytest.mark.usefixtures("ray_local")
def test_no_run_is_left_running_when_trials_fail_or_diverge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One trial raises, one diverges; each run ends with its state, and every metric went in a batch."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("metrics are logged in batches, never one request per metric")

    monkeypatch.setattr(MlflowClient, "log_metric", refuse)

    def trainable(config: dict[str, Any], data: Any, **options: Any) -> None:
        if config["trial_number"] == 1:
            raise ValueError("a broken trial")
        if config["trial_number"] == 2:
            config = {**config, "optimizer": "sgd", "sgd": {"learning_rate": 1e6}}
        train_trial(config, data, **options)

    spec = parse_spec({"study": {"name": "mixed", "trials": 3}, "training": {"epochs": 2}, "optimizers": {"adam": {}}})
    result = run_study(spec, workdir=tmp_path, trainable=trainable)
    client = MlflowClient(result.mlflow["tracking_uri"])
    parent, children = runs_of(client, "mixed")
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert {n: c.info.status for n, c in by_number.items()} == {0: "FINISHED", 1: "FAILED", 2: "KILLED"}
    assert by_number[1].data.tags["state"] == "failed"
    assert by_number[1].data.tags["fail_reason"] == "ValueError: a broken trial"
    assert by_number[2].data.tags["state"] == "pruned"
    assert by_number[2].data.tags["stop_reason"].startswith("diverged: ")
    assert client.get_metric_history(by_number[2].info.run_id, "val_loss") == []
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_pruned"] == 1


@pytest.mark.usefixtures("ray_local")
def test_a_server_that_goes_away_and_comes_back_gets_every_record(tmp_path: Path) -> None:
    """The server is killed after the first trial ends and started again after the third: the study goes on
    meanwhile, and at its end MLflow holds what an undisturbed launch writes, with nothing left waiting."""
    server = MlflowServer(tmp_path / "server")
    server.start()
    ended: list[int] = []
    warnings: list[str] = []

    def progress(outcome: Any) -> None:  # on the driver, between trials: the server fails mid-study
        ended.append(outcome.number)
        if len(ended) == 1:
            server.stop(signal.SIGKILL)
        elif len(ended) == 3:
            server.start()

    spec = load_spec(ROOT / "search_spaces" / "optimizers.yaml").override(trials=6, epochs=3, name="outage-back")
    workdir = tmp_path / "work"
    try:
        result = run_study(spec, workdir=workdir, tracking_uri=server.url, progress=progress, warn=warnings.append)
        assert result.unsent_records == 0
        assert any(f"{server.url} does not answer (" in w for w in warnings), warnings
        assert any("answers again" in w for w in warnings), warnings
        assert not list((workdir / OUTBOX).iterdir())
        check_study_records(MlflowClient(server.url), result.to_json(), epochs=3, download=tmp_path / "dl")
    finally:
        server.stop()


def test_records_kept_while_the_server_is_down_are_sent_by_tuner_sync(tmp_path: Path) -> None:
    """The server dies after the first trial and stays down: the launch still ends with exit 0 and says how
    many records wait; once the server is back, ``tuner sync`` sends them, each once."""
    server = MlflowServer(tmp_path / "server")
    url = server.start()
    workdir = tmp_path / "work"
    spec = ROOT / "search_spaces" / "optimizers.yaml"
    args = ["launch", str(spec), "--trials", "6", "--epochs", "3", "--name", "outage-sync", "--json"]
    launch = subprocess.Popen(
        [tuner_command(), *args, "--workdir", str(workdir), "--tracking-uri", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert launch.stdout is not None
        lines = []
        for line in launch.stdout:
            lines.append(line)
            if line.startswith("[1/6]"):
                server.stop(signal.SIGKILL)
                break
        out, err = launch.communicate(timeout=300)  # MLflow's own retries would hold it for many minutes
        assert launch.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        waiting = summary["unsent_records"]
        assert waiting > 0
        assert f"mlflow: the tracking store did not take them; {waiting} records wait in {workdir}; " in err
        assert f"send them with: tuner sync outage-sync --workdir {workdir} --tracking-uri {url}\n" in err
        assert sum(summary["trials"].values()) == 6

        sync = [tuner_command(), "sync", "outage-sync", "--workdir", str(workdir)]
        down = subprocess.run(sync, capture_output=True, text=True, timeout=120)
        assert (down.returncode, down.stderr) == (1, f"error: cannot reach the MLflow tracking server at {url} "
                                                     "(connection refused)\n")  # fmt: skip
        other = subprocess.run([*sync, "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}"],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert other.returncode == 1 and f"does not hold run {summary['mlflow']['parent_run_id']}" in other.stderr
        assert sum(outbox.waiting(d) for d in outbox.outboxes(workdir / OUTBOX)) == waiting  # nothing lost

        server.start()
        done = subprocess.run([tuner_command(), "sync", "outage-sync", "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"mlflow: sent {waiting} records of study outage-sync\n"
        assert not list((workdir / OUTBOX).iterdir())
        check_study_records(MlflowClient(url), summary, epochs=3, download=tmp_path / "dl")
        again = subprocess.run([tuner_command(), "sync", "outage-sync", "--workdir", str(workdir)],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert again.stdout == f"mlflow: no records of study outage-sync wait in {workdir.resolve()}\n"
    finally:
        launch.kill()
        server.stop()


def test_the_registered_model_serves_predictions_over_http(tmp_path: Path) -> None:
    """A user's CSV with text labels, launched with ``--register-model``: ``mlflow models serve`` on
    127.0.0.1 answers a request of raw rows with the user's labels and the probabilities per class."""
    import numpy as np
    from sklearn.datasets import load_iris

    iris = load_iris()
    names = [str(n) for n in iris.target_names]
    rows = [",".join(f"{v:g}" for v in x) + f",{names[y]}" for x, y in zip(iris.data, iris.target, strict=True)]
    (tmp_path / "iris.csv").write_text("a,b,c,d,species\n" + "\n".join(rows) + "\n")
    spec = tmp_path / "iris.yaml"
    spec.write_text(
        "study: {name: iris-served, trials: 2, seed: 0}\n"
        "data: {dataset: 'csv:iris.csv', target: species}\n"
        "training: {epochs: 5}\n"
        "optimizers: {adam: {learning_rate: {low: 0.01, high: 0.05, log: true}}}\n"
        "pruning: {scheduler: none}\n"
    )
    workdir = tmp_path / "w"
    done = subprocess.run(
        [tuner_command(), "launch", str(spec), "--register-model", "iris-mlp", "--json", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mlflow"]["registered_model"] == "iris-mlp"
    store = summary["mlflow"]["tracking_uri"]
    versions = MlflowClient(store).search_model_versions("name = 'iris-mlp'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, summary["mlflow"]["parent_run_id"])]
    port = free_port()
    # As in the user's activated virtual environment: MLflow starts uvicorn from PATH.
    bin_dir = str(Path(tuner_command()).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    mlflow_command = str(Path(tuner_command()).with_name("mlflow"))
    serve = [mlflow_command, "models", "serve", "-m", "models:/iris-mlp/1", "--env-manager", "local"]
    server = subprocess.Popen(
        [*serve, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        raw = [list(x) for x in iris.data[[0, 60, 120]]]  # a setosa, a versicolor, a virginica, as in the file
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": raw}, timeout=30)
        assert answer.ok, answer.text
        predictions = answer.json()["predictions"]
        assert set(predictions["label"]) <= set(names) and len(predictions["label"]) == 3
        probabilities = np.asarray(predictions["probabilities"])
        assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        assert predictions["label"] == [names[k] for k in probabilities.argmax(axis=1)]
    finally:
        server.terminate()
        server.wait(timeout=30)
