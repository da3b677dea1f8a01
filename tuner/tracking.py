"""The MLflow records of a launch: one parent run per launch, a nested run per trial, batched metrics.

Tracking happens on the driver, in a Ray Tune callback fed by the trials' results; workers never talk to
MLflow, so nothing changes when the trials run on a cluster. The records go through an outbox;
:mod:`tuner.sending` makes them MLflow calls.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from tuner import outbox, sending
from tuner.errors import TunerError
from tuner.results import CURVE_METRICS, Curve, Curves, StudyResult, TrialOutcome
from tuner.service import MLFLOW_SERVER_ENV, mlflow_server_command, store_uri
from tuner.trainable import EXPORT_DIR

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from tuner.data import Dataset
    from tuner.spec import Spec

__all__ = [
    "BEST",
    "Tracker",
    "TrackingCallback",
    "check_reachable",
    "dataset_record",
    "experiment_url",
    "resolve_tracking_uri",
    "serve_ui",
    "study_experiments",
    "ui_url",
]

#: A trial's metrics wait at most this long on the driver before one log_batch sends them (and always go
#: when the trial ends): a request per epoch would cost more than a small trial's training.
FLUSH_SECONDS = 2.0
#: MLflow takes at most 1000 metrics per log_batch.
MAX_BATCH = 1000
#: Trial state -> the MLflow status its run ends with.
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
#: Tags MLflow's UI reads: nesting, and the experiment's view (runs table, not the GenAI traces view).
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "mlflow.experimentKind"
#: Where the parent run keeps the best trial's network, an MLflow Model (``runs:/PARENT/best_model``).
BEST = "best_model"
#: The end of a launch waits this long for MLflow to take its records, once none goes through.
PATIENCE_SECONDS = 30.0


def resolve_tracking_uri(uri: str | None, workdir: Path) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default placed in the work directory
    (``sqlite:///WORKDIR/mlflow.db``), so that ``mlflow ui`` started there shows the study."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or store_uri(workdir)


#: The address a person's browser opens MLflow at, when it is not the tracking URI: a cluster's processes
#: reach the server by a name only the cluster resolves (``http://mlflow:5000``); docker/compose.yaml sets
#: this to the address it publishes on the host.
UI_URL_VARIABLE = "TUNER_MLFLOW_UI_URL"


def ui_url(tracking_uri: str) -> str:
    """Where a browser opens the tracking server at ``tracking_uri``: ``TUNER_MLFLOW_UI_URL`` if set."""
    return os.environ.get(UI_URL_VARIABLE) or tracking_uri


def experiment_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link that opens the study in MLflow's runs table (its default view is the GenAI one)."""
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}{path}?workflowType=machine_learning"


def study_experiments(uri: str) -> list[tuple[str, str]]:
    """``(name, id)`` of every experiment in a store that tuner wrote (it tags them as model development)."""
    client = MlflowClient(tracking_uri=uri)
    return [
        (e.name, e.experiment_id)
        for e in client.search_experiments(filter_string=f"tags.`{KIND_TAG}` = 'custom_model_development'")
    ]


def serve_ui(uri: str, artifacts: Path, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run MLflow's tracking server and UI on the store at ``uri`` until Ctrl-C or SIGTERM; its exit code.

    The server runs in its own process group (MLflow starts uvicorn under it); stopping this process, by
    Ctrl-C or SIGTERM, stops the whole group.
    """
    import signal
    import subprocess

    command = mlflow_server_command(uri, artifacts, host=host, port=port)
    server = subprocess.Popen(command, start_new_session=True, env={**os.environ, **MLFLOW_SERVER_ENV})

    def stop(*_: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        stop()
        return server.wait()


def check_reachable(uri: str) -> None:
    """Fail fast, before any trial starts, when a tracking server does not answer.

    Raises:
        TunerError: the server at ``uri`` is not reachable.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        reason = type(exc).__name__ if isinstance(exc, requests.ConnectionError) else str(exc)
        raise TunerError(f"cannot reach the MLflow tracking server at {uri} ({reason})") from None


@dataclass
class _TrialRecord:
    key: str  # the run's name in the outbox's records (its MLflow id may not exist yet)
    number: int
    optimizer: str
    checkpoint: Any = None
    pending: list[list[Any]] = field(default_factory=list)  # metrics as [key, value, timestamp, step]
    flushed: float = field(default_factory=time.monotonic)
    where: tuple[str, str, str] | None = None
    logged: int = 0  # the last step logged (a trial resumed from a checkpoint logs only later ones)
    resumed_from: int | None = None
    tagged: tuple[tuple[str, str, str] | None, int | None] = (None, None)  # where and resumed_from, as last logged
    done: bool = False  # its run had ended before this launch


def dataset_record(dataset: Dataset) -> dict[str, str] | None:
    """The training part of ``dataset`` as an MLflow dataset (name, digest, schema, profile, source), which
    every run of the study names as its input: the Dataset column of MLflow's runs table. A user's file is its
    source; a built-in dataset its name. None if MLflow cannot describe it: the runs go without."""
    from mlflow.data.numpy_dataset import from_numpy

    kind, _, path = dataset.name.partition(":")
    source = path if kind in ("csv", "npz") and path else dataset.name
    try:
        with warnings.catch_warnings():  # "the source can be interpreted in multiple ways": a name, as meant
            warnings.simplefilter("ignore")
            found = from_numpy(dataset.x_train, targets=dataset.y_train, name=dataset.name, source=source)
    except Exception:  # a record less, never a launch less
        logging.getLogger(__name__).debug("no MLflow dataset for %s", dataset.name, exc_info=True)
        return None
    return {k: str(v) for k, v in found.to_dict().items() if v is not None}


def study_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The id of study ``name``'s experiment, made if it is not there yet: its artifacts in
    ``artifact_root/NAME`` (a local store), or where the server keeps them (``None``)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (artifact_root / name).as_uri() if artifact_root else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # another launch of the study created it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or not (experiment := client.get_experiment_by_name(name)):
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    client.set_experiment_tag(experiment_id, KIND_TAG, "custom_model_development")
    return str(experiment_id)


class Tracker:
    """The MLflow records of one launch: the experiment, the study's parent run and a run per trial.

    The experiment and the parent run are made at once (the server answered a moment before); every other
    record goes through an :class:`tuner.outbox.Outbox` in ``workdir``, so that the Tune loop never waits on
    MLflow. :meth:`close` waits for the records to go, or leaves them for :func:`sync`.
    """

    def __init__(
        self,
        spec: Spec,
        uri: str,
        *,
        workdir: Path,
        artifact_root: Path | None = None,
        warn: Callable[[str], None] | None = None,
        parent_run_id: str | None = None,
        curves: Curves,
        store: str | None = None,
        dataset: dict[str, str] | None = None,
        register_model: str | None = None,
    ) -> None:
        self.spec, self.uri, self.workdir = spec, uri, workdir
        #: The training data as an MLflow dataset (``mlflow.data.Dataset.to_dict``): every run's input.
        self.dataset = dataset
        self.register_model = register_model
        #: The registered model the best model was queued to become a version of, if it was.
        self.registering: str | None = None
        self.warn = warn or (lambda text: None)
        self.client = MlflowClient(tracking_uri=uri)
        #: The study's curves, which the search records; an interrupted launch's earlier ones are added here.
        self.curve_store = curves
        self.trials: dict[str, _TrialRecord] = {}
        self._by_number: dict[int, _TrialRecord] = {}
        self._ended: set[str] = set()
        self._best_model: tuple[int, float] | None = None
        self._best_copy: str | None = None  # the best model's directory in the outbox, once logged
        name = spec.study.name
        # An earlier launch's records still waiting go first, where they were going (a resumed launch reads
        # them back from there).
        _, waiting = sending.sync(name, workdir=workdir, warn=self.warn, quiet=True)
        if parent_run_id is not None:
            if waiting:  # resuming would record its trials again, beside what waits
                raise TunerError(
                    f"{waiting} MLflow records of study {name} wait in {workdir / sending.OUTBOX}; send them first: "
                    f"tuner sync {name} --workdir {workdir}"
                )
            self._attach(parent_run_id)
        else:
            self._create(artifact_root)
        root = workdir / sending.OUTBOX
        about = {"study": name, "tracking_uri": uri, "parent_run_id": self.parent_run_id}
        if store is not None and store != uri:  # sent through tuner up's server: the store outlives it
            about["store"] = store
        self.outbox = outbox.Outbox(outbox.new_directory(root), about)
        self.outbox.put({"op": "runs", "runs": {"parent": self.parent_run_id}})
        if parent_run_id is None:
            settings = {k: _text(v) for k, v in spec.settings().items()}
            self.outbox.put({"op": "log_batch", "run": "parent", "params": settings})
            self._put_input("parent")
            if Path(spec.source).is_file():
                self._put_artifact("parent", Path(spec.source))
            else:  # a spec built in code: record the document it stands for
                with tempfile.TemporaryDirectory() as directory:
                    path = Path(directory) / "spec.yaml"
                    path.write_text(yaml.safe_dump(spec.to_doc(), sort_keys=False), encoding="utf-8")
                    self._put_artifact("parent", path)
        self.outbox.start(
            sending.Sender(self.client, self.outbox.directory), self.warn, f"the tracking server at {uri}"
        )

    def _create(self, artifact_root: Path | None) -> None:
        name = self.spec.study.name
        self.experiment_id = study_experiment(self.client, name, artifact_root)
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"tuner.study": name})
        self.parent_run_id = run.info.run_id

    def _attach(self, parent_run_id: str) -> None:
        """Continue an interrupted launch's records: its parent run, and its trials' runs by Optuna number.

        Finished trials keep their runs as they are; the runs of interrupted trials are continued by the
        trials that resume them, from the step after the last one they logged.
        """
        parent = self.client.get_run(parent_run_id)
        self.parent_run_id, self.experiment_id = parent_run_id, parent.info.experiment_id
        if "best_model_trial" in parent.data.tags:
            self._best_model = (int(parent.data.tags["best_model_trial"]), float(parent.data.tags["best_model_value"]))
        children = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000
        )
        for run in children:
            number = int(run.data.tags["optuna.trial_number"])
            record = _TrialRecord(sending.RUN + run.info.run_id, number, run.data.params.get("optimizer", ""))
            for key in CURVE_METRICS:
                for point in self.client.get_metric_history(run.info.run_id, key):
                    self.curve_store.record(number, {"epoch": point.step, key: point.value})
                    record.logged = max(record.logged, point.step)
            record.done = run.info.status != "RUNNING"
            self._by_number[number] = record

    def _put_artifact(self, run: str, path: Path, artifact_path: str | None = None) -> None:
        kept = self.outbox.file(path)
        self.outbox.put({"op": "log_artifact", "run": run, "path": kept, "artifact_path": artifact_path})

    def _put_batch(self, run: str, *, metrics: Sequence[list[Any]] = (), tags: Sequence[tuple[str, str]] = ()) -> None:
        if metrics or tags:
            self.outbox.put({"op": "log_batch", "run": run, "metrics": list(metrics), "tags": dict(tags)})

    def _put_input(self, run: str) -> None:
        if self.dataset is not None:
            self.outbox.put({"op": "log_input", "run": run, "dataset": self.dataset, "context": "training"})

    def _put_end(self, run: str, status: str) -> None:
        self.outbox.put({"op": "set_terminated", "run": run, "status": status, "end_time": _now()})

    # -- per trial, called by TrackingCallback on the driver

    def start_trial(self, trial_id: str, config: dict[str, Any]) -> None:
        if trial_id in self.trials:
            return  # a trial restarted on another actor keeps its run
        number = int(config["trial_number"])
        if number in self._by_number:  # an interrupted launch's trial, resumed: its run continues
            self.trials[trial_id] = self._by_number[number]
            self._put_batch(self.trials[trial_id].key, tags=[("ray.trial_id", trial_id)])
            return
        self._open(trial_id, number, _run_params(config), config["seed"])

    def _open(self, trial_id: str, number: int, params: dict[str, Any], seed: Any) -> None:
        optimizer = str(params.get("optimizer", ""))
        tags = {
            PARENT_TAG: self.parent_run_id,
            "optuna.trial_number": str(number),
            "ray.trial_id": trial_id,
            "seed": str(seed),
        }
        key = f"trial-{number}"
        self.outbox.put(
            {
                "op": "create_run",
                "key": key,
                "experiment_id": self.experiment_id,
                "run_name": f"trial-{number:03d}-{optimizer}" if optimizer else f"trial-{number:03d}",
                "tags": tags,
                "start_time": _now(),
                "match": [PARENT_TAG, "optuna.trial_number"],  # what finds it, had an earlier try made it
            }
        )
        self.outbox.put({"op": "log_batch", "run": key, "params": {k: _text(v) for k, v in params.items()}})
        self._put_input(key)
        self.trials[trial_id] = self._by_number[number] = _TrialRecord(key, number, optimizer)

    def log_result(self, trial_id: str, result: dict[str, Any]) -> None:
        record = self.trials.get(trial_id)
        if record is None:
            return
        epoch = int(result["epoch"])
        stamp = _now()
        if "node_ip" in result:  # where the trial trains (the last node, if a failure moved it)
            record.where = (str(result["node_ip"]), str(result.get("pid", "")), str(result.get("node_id", "")))
        if "resumed_from_epoch" in result:
            record.resumed_from = int(result["resumed_from_epoch"])
            for earlier in result.get("history") or ():  # epochs the checkpoint covers but MLflow lacks
                if record.logged < int(earlier["epoch"]) < epoch:
                    self._collect(record, earlier, stamp)
        if epoch <= record.logged:
            return
        self._collect(record, result, stamp)
        if time.monotonic() - record.flushed >= FLUSH_SECONDS or len(record.pending) > MAX_BATCH - len(CURVE_METRICS):
            self._flush(record)

    def _collect(self, record: _TrialRecord, result: dict[str, Any], stamp: int) -> None:
        epoch = int(result["epoch"])
        record.logged = max(record.logged, epoch)
        for key in CURVE_METRICS:
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                record.pending.append([key, float(value), stamp, epoch])

    def _flush(self, record: _TrialRecord, tags: Sequence[tuple[str, str]] = ()) -> None:
        self._put_batch(record.key, metrics=record.pending, tags=[*tags, *_placement_tags(record)])
        record.tagged = (record.where, record.resumed_from)
        record.pending = []
        record.flushed = time.monotonic()

    def end_trial(self, trial_id: str, outcome: TrialOutcome) -> None:
        record = self.trials.get(trial_id)
        if record is None or trial_id in self._ended:
            return
        tags = [("state", outcome.state), ("epochs", str(outcome.epochs))]
        if outcome.diagnosis:
            tags.append(("diagnosis", outcome.diagnosis))
        if outcome.reason:
            key = "fail_reason" if outcome.state == "failed" else "stop_reason"
            tags.append((key, outcome.reason[:5000]))
        self._flush(record, tags)  # with where the trial trained last, if not tagged yet
        self._put_end(record.key, STATUS[outcome.state])
        self._ended.add(trial_id)
        if outcome.state == "complete" and self._better(outcome.value):
            self._log_model(record, outcome)

    def _better(self, value: float | None) -> bool:
        if value is None:
            return False
        if self._best_model is None:
            return True
        sign = 1 if self.spec.study.mode == "min" else -1
        return sign * value < sign * self._best_model[1]

    def _log_model(self, record: _TrialRecord, outcome: TrialOutcome) -> None:
        """Log a trial's trained network (the ``model.keras`` of its last checkpoint) as the study's best so
        far: written as each new best completes, so that an interrupted study keeps its best model too."""
        if record.checkpoint is None or outcome.value is None:
            return
        with record.checkpoint.as_directory() as directory:
            path = Path(directory) / EXPORT_DIR
            if not path.is_dir():
                return
            self._best_copy = self.outbox.file(path)  # a copy: the checkpoint may go before it is sent
            self.outbox.put({"op": "log_artifact", "run": "parent", "path": self._best_copy, "artifact_path": BEST})
        self._best_model = (outcome.number, outcome.value)
        tags = [("best_model_trial", str(outcome.number)), ("best_model_value", repr(outcome.value))]
        self._put_batch("parent", tags=tags)

    # -- the end of the launch

    def finish(
        self,
        result: StudyResult,
        outcomes: Mapping[str, TrialOutcome],
        files: Path | None = None,
        *,
        configs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Close what is still open, then put the study's summary and the ``files`` (a directory: the plots
        and tables :mod:`tuner.report` wrote) on the parent run. ``outcomes``: each Ray Tune trial's end;
        ``configs``: each one's configuration, as the search gave it.
        The records wait in the outbox: :meth:`close` sends them.

        Returns the best model's URI, if one was logged.
        """
        for trial_id, outcome in outcomes.items():
            if trial_id not in self.trials and outcome.number not in self._by_number:
                # Proposed, but stopped (Ctrl-C) before it started: Optuna holds it, so MLflow does too, with
                # the params a started trial's run has.
                config = configs.get(trial_id) if configs else None
                params = _run_params(config) if config else dict(outcome.params)
                self._open(trial_id, outcome.number, params, outcome.seed)
            self.end_trial(trial_id, outcome)
        for trial_id, record in self.trials.items():  # no outcome: Optuna never heard of its end
            if trial_id not in self._ended:
                self._flush(record)
                self._put_end(record.key, "FAILED")
                self._ended.add(trial_id)
        ends = {o.number: o for o in result.trials}
        started = {id(r) for r in self.trials.values()}
        for number, record in self._by_number.items():  # an earlier launch's runs that nothing resumed
            if not record.done and id(record) not in started:
                end = ends.get(number)
                self._put_end(record.key, STATUS[end.state] if end else "FAILED")
        stamp = _now()
        metrics: list[list[Any]] = [[f"trials_{state}", n, stamp, 0] for state, n in result.counts().items()]
        best = result.best
        tags = []
        if best is not None and best.value is not None:
            metrics.append([f"best_{result.metric}", best.value, stamp, 0])
            tags = [("best_trial", str(best.number))]
            tags += [(f"best.{k}", _text(v)) for k, v in best.params.items()]
        model_uri = None
        if best is not None and self._best_model is not None and self._best_model[0] == best.number:
            model_uri = f"runs:/{self.parent_run_id}/{BEST}"
            tags.append(("best_model_uri", model_uri))
            if self._best_copy is not None:  # logged by this launch (a resumed one may have only the tags)
                self.outbox.put(
                    {
                        "op": "log_model",
                        "run": "parent",
                        "experiment_id": self.experiment_id,
                        "path": self._best_copy,
                        "name": f"{self.spec.study.name}-{BEST}",
                        "tags": {"tuner.study": self.spec.study.name, "tuner.trial": str(best.number)},
                        "register": self.register_model,
                    }
                )
                self.registering = self.register_model
        self._put_batch("parent", metrics=metrics, tags=tags)
        if files is not None:
            kept = self.outbox.file(files)
            self.outbox.put({"op": "log_artifact", "run": "parent", "path": kept, "artifact_path": None})
        self._put_end("parent", "KILLED" if result.interrupted else "FINISHED")
        return model_uri

    def fail(self) -> None:
        """End every run still open as FAILED (the launch itself broke)."""
        for trial_id, record in self.trials.items():
            if trial_id not in self._ended:
                self._flush(record)
                self._put_end(record.key, "FAILED")
        self._put_end("parent", "FAILED")

    def close(self, patience: float = PATIENCE_SECONDS) -> int:
        """Wait for MLflow to take this launch's records (see :meth:`tuner.outbox.Outbox.close`); how many
        records still wait, for :func:`sync`."""
        return self.outbox.close(patience=patience)

    def curves(self, result: StudyResult) -> dict[int, Curve]:
        """Every trial's curves (this launch's and, for a resumed launch, the earlier ones'), with how each
        ended, by Optuna number: what the study's plots and table are drawn from."""
        ends = {o.number: o for o in result.trials}
        curves = {}
        for number, record in self._by_number.items():
            end = ends.get(number)
            state, label = (end.state, end.diagnosis) if end else ("failed", None)
            curves[number] = Curve(record.optimizer, state, self.curve_store.history(number), label)
        return curves


def _now() -> int:
    return int(time.time() * 1000)


class TrackingCallback(tune.Callback):
    """Feeds the :class:`Tracker` from Ray Tune's events, on the driver.

    It runs after :class:`tuner.search.FailureReasons`, so the state it records is the one Optuna was told
    (``outcomes``, the search's record of each trial's end).
    A tracking error is reported (``warn``) and the study goes on: Optuna still holds every trial.
    """

    def __init__(self, tracker: Tracker, outcomes: Mapping[str, TrialOutcome]) -> None:
        self._tracker, self._outcomes = tracker, outcomes
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
            setattr(self, name, self._guarded(getattr(self, name)))

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks with the experiment, for Tuner.restore (which tuner does not use:
        # `tuner resume` builds its own). The tracker, with its open outbox, stays in this process.
        return {**self.__dict__, "_tracker": None}

    def _guarded(self, method: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            try:
                method(*args, **kwargs)
            except Exception as exc:
                trial = kwargs.get("trial")
                what = f"trial {trial.config.get('trial_number')}" if trial is not None else "a trial"
                self._tracker.warn(f"mlflow: could not record {what}: {type(exc).__name__}: {sending.first_line(exc)}")

        return call

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._tracker.start_trial(trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self._tracker.log_result(trial.trial_id, result)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any) -> None:
        record = self._tracker.trials.get(trial.trial_id)
        if record is not None:
            record.checkpoint = checkpoint

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

    def _end(self, trial: Trial) -> None:
        outcome = self._outcomes.get(trial.trial_id)
        if outcome is not None:
            self._tracker.end_trial(trial.trial_id, outcome)


def _run_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial run's params, from its configuration (:class:`tuner.space.SearchSpace`): the optimizer, its
    hyperparameters by their plain names, and the network's and training's values."""
    optimizer = str(config["optimizer"])
    params = {"optimizer": optimizer, **config.get(optimizer, {})}
    params.update({k: config[k] for k in ("layers", "units", "activation", "dropout", "batch_size", "epochs")})
    return params


def _placement_tags(record: _TrialRecord) -> list[tuple[str, str]]:
    """Tags saying where a trial trains (its Ray node and worker process) and the epoch it resumed from, if
    they changed since last logged. They ride with the metrics, so that a running trial's run shows where it
    runs, and a trial moved by a node failure its new node, at no extra request."""
    if (record.where, record.resumed_from) == record.tagged:
        return []
    tags = []
    if record.where:
        names = ("ray.node_ip", "ray.pid", "ray.node_id")
        tags += [(name, value) for name, value in zip(names, record.where, strict=True) if value]
    if record.resumed_from is not None:
        tags.append(("resumed_from_epoch", str(record.resumed_from)))
    return tags


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
