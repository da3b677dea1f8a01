"""The only module that imports MLflow: one parent run per launch, a nested run per trial, batched metrics.

Tracking happens on the driver, in a Ray Tune callback fed by the trials' results; workers never talk to
MLflow, so nothing changes when the trials run on a cluster.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from tuner.errors import TunerError
from tuner.results import CURVE_METRICS, Curve, Curves, StudyResult, TrialOutcome
from tuner.trainable import MODEL_FILE

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from tuner.spec import Spec

__all__ = [
    "Tracker",
    "TrackingCallback",
    "check_reachable",
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


def resolve_tracking_uri(uri: str | None, workdir: Path) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default placed in the work directory
    (``sqlite:///WORKDIR/mlflow.db``), so that ``mlflow ui`` started there shows the study."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"


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
    import sys

    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--artifacts-destination", str(artifacts),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # MLflow's background job runner serves GenAI features a study does not use; it costs a process each.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, start_new_session=True, env=env)

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
    run_id: str
    number: int
    optimizer: str
    checkpoint: Any = None
    pending: list[Metric] = field(default_factory=list)
    flushed: float = field(default_factory=time.monotonic)
    where: tuple[str, str, str] | None = None
    logged: int = 0  # the last step logged (a trial resumed from a checkpoint logs only later ones)
    resumed_from: int | None = None
    tagged: tuple[tuple[str, str, str] | None, int | None] = (None, None)  # where and resumed_from, as last logged
    done: bool = False  # its run had ended before this launch


class Tracker:
    """The MLflow records of one launch: the experiment, the study's parent run and a run per trial."""

    def __init__(
        self,
        spec: Spec,
        uri: str,
        *,
        artifact_root: Path | None = None,
        warn: Callable[[str], None] | None = None,
        parent_run_id: str | None = None,
        curves: Curves,
    ) -> None:
        self.spec, self.uri = spec, uri
        self.warn = warn or (lambda text: None)
        self.client = MlflowClient(tracking_uri=uri)
        #: The study's curves, which the search records; an interrupted launch's earlier ones are added here.
        self.curve_store = curves
        self.trials: dict[str, _TrialRecord] = {}
        self._by_number: dict[int, _TrialRecord] = {}
        self._ended: set[str] = set()
        self._best_model: tuple[int, float] | None = None
        if parent_run_id is not None:
            self._attach(parent_run_id)
            return
        name = spec.study.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = (artifact_root / name).as_uri() if artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # another launch of the study created it meanwhile
                if exc.error_code != "RESOURCE_ALREADY_EXISTS" or not (
                    experiment := self.client.get_experiment_by_name(name)
                ):
                    raise
                self.experiment_id = experiment.experiment_id
        else:
            self.experiment_id = experiment.experiment_id
        self.client.set_experiment_tag(self.experiment_id, KIND_TAG, "custom_model_development")
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"tuner.study": name})
        self.parent_run_id = run.info.run_id
        settings = [Param(k, _text(v)) for k, v in spec.settings().items()]
        self.client.log_batch(self.parent_run_id, params=settings)
        if Path(spec.source).is_file():
            self.client.log_artifact(self.parent_run_id, spec.source)
        else:  # a spec built in code: record the document it stands for
            self.client.log_text(self.parent_run_id, yaml.safe_dump(spec.to_doc(), sort_keys=False), "spec.yaml")

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
            record = _TrialRecord(run.info.run_id, number, run.data.params.get("optimizer", ""))
            for key in CURVE_METRICS:
                for point in self.client.get_metric_history(run.info.run_id, key):
                    self.curve_store.record(number, {"epoch": point.step, key: point.value})
                    record.logged = max(record.logged, point.step)
            record.done = run.info.status != "RUNNING"
            self._by_number[number] = record

    # -- per trial, called by TrackingCallback on the driver

    def start_trial(self, trial_id: str, config: dict[str, Any]) -> None:
        if trial_id in self.trials:
            return  # a trial restarted on another actor keeps its run
        number = int(config["trial_number"])
        if number in self._by_number:  # an interrupted launch's trial, resumed: its run continues
            self.trials[trial_id] = self._by_number[number]
            self.client.set_tag(self.trials[trial_id].run_id, "ray.trial_id", trial_id)
            return
        optimizer = str(config["optimizer"])
        params = {"optimizer": optimizer, **config.get(optimizer, {})}
        params.update({k: config[k] for k in ("layers", "units", "activation", "dropout", "batch_size", "epochs")})
        tags = {
            PARENT_TAG: self.parent_run_id,
            "optuna.trial_number": str(number),
            "ray.trial_id": trial_id,
            "seed": str(config["seed"]),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:03d}-{optimizer}", tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, _text(v)) for k, v in params.items()])
        self.trials[trial_id] = self._by_number[number] = _TrialRecord(run.info.run_id, number, optimizer)

    def log_result(self, trial_id: str, result: dict[str, Any]) -> None:
        record = self.trials.get(trial_id)
        if record is None:
            return
        epoch = int(result["epoch"])
        stamp = int(time.time() * 1000)
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
                record.pending.append(Metric(key, float(value), stamp, epoch))

    def _flush(self, record: _TrialRecord) -> None:
        tags = _placement_tags(record)
        if record.pending or tags:
            self.client.log_batch(record.run_id, metrics=record.pending, tags=tags)
        record.tagged = (record.where, record.resumed_from)
        record.pending = []
        record.flushed = time.monotonic()

    def end_trial(self, trial_id: str, outcome: TrialOutcome) -> None:
        record = self.trials.get(trial_id)
        if record is None or trial_id in self._ended:
            return
        tags = [RunTag("state", outcome.state), RunTag("epochs", str(outcome.epochs))]
        if outcome.diagnosis:
            tags.append(RunTag("diagnosis", outcome.diagnosis))
        tags += _placement_tags(record)  # where the trial trained last, if not tagged yet
        if outcome.reason:
            key = "fail_reason" if outcome.state == "failed" else "stop_reason"
            tags.append(RunTag(key, outcome.reason[:5000]))
        self.client.log_batch(record.run_id, metrics=record.pending, tags=tags)
        record.tagged = (record.where, record.resumed_from)
        record.pending = []
        self.client.set_terminated(record.run_id, STATUS[outcome.state])
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
            path = Path(directory) / MODEL_FILE
            if not path.is_file():
                return
            self.client.log_artifact(self.parent_run_id, str(path), "best_model")
        self._best_model = (outcome.number, outcome.value)
        tags = [RunTag("best_model_trial", str(outcome.number)), RunTag("best_model_value", repr(outcome.value))]
        self.client.log_batch(self.parent_run_id, tags=tags)

    # -- the end of the launch

    def finish(
        self, result: StudyResult, outcomes: Mapping[str, TrialOutcome], files: Path | None = None
    ) -> str | None:
        """Close what is still open, then put the study's summary and the ``files`` (a directory: the plots
        and tables :mod:`tuner.report` wrote) on the parent run. ``outcomes``: each Ray Tune trial's end.

        Returns the best model's URI, if one was logged.
        """
        for trial_id, outcome in outcomes.items():
            self.end_trial(trial_id, outcome)
        for trial_id, record in self.trials.items():  # no outcome: Optuna never heard of its end
            if trial_id not in self._ended:
                self._flush(record)
                self.client.set_terminated(record.run_id, "FAILED")
                self._ended.add(trial_id)
        ends = {o.number: o for o in result.trials}
        started = {id(r) for r in self.trials.values()}
        for number, record in self._by_number.items():  # an earlier launch's runs that nothing resumed
            if not record.done and id(record) not in started:
                end = ends.get(number)
                self.client.set_terminated(record.run_id, STATUS[end.state] if end else "FAILED")
        counts = result.counts()
        metrics = [Metric(f"trials_{state}", n, int(time.time() * 1000), 0) for state, n in counts.items()]
        best = result.best
        tags = []
        if best is not None and best.value is not None:
            metrics.append(Metric(f"best_{result.metric}", best.value, int(time.time() * 1000), 0))
            tags = [RunTag("best_trial", str(best.number))]
            tags += [RunTag(f"best.{k}", _text(v)) for k, v in best.params.items()]
        self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)
        model_uri = None
        if best is not None and self._best_model is not None and self._best_model[0] == best.number:
            model_uri = f"runs:/{self.parent_run_id}/best_model/{MODEL_FILE}"
            self.client.set_tag(self.parent_run_id, "best_model_uri", model_uri)
        try:
            if files is not None:
                self.client.log_artifacts(self.parent_run_id, str(files))
        except Exception as exc:  # the study itself is complete in Optuna and in the runs above
            self.warn(f"mlflow: could not log the study's artifacts: {type(exc).__name__}: {_first_line(exc)}")
        status = "KILLED" if result.interrupted else "FINISHED"
        self.client.set_terminated(self.parent_run_id, status)
        return model_uri

    def fail(self) -> None:
        """End every run still open as FAILED (the launch itself broke)."""
        for trial_id, record in self.trials.items():
            if trial_id not in self._ended:
                with contextlib.suppress(Exception):
                    self._flush(record)
                    self.client.set_terminated(record.run_id, "FAILED")
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.parent_run_id, "FAILED")

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

    def _guarded(self, method: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            try:
                method(*args, **kwargs)
            except Exception as exc:
                trial = kwargs.get("trial")
                what = f"trial {trial.config.get('trial_number')}" if trial is not None else "a trial"
                self._tracker.warn(f"mlflow: could not record {what}: {type(exc).__name__}: {_first_line(exc)}")

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


def _placement_tags(record: _TrialRecord) -> list[RunTag]:
    """Tags saying where a trial trains (its Ray node and worker process) and the epoch it resumed from, if
    they changed since last logged. They ride with the metrics, so that a running trial's run shows where it
    runs, and a trial moved by a node failure its new node, at no extra request."""
    if (record.where, record.resumed_from) == record.tagged:
        return []
    tags = []
    if record.where:
        names = ("ray.node_ip", "ray.pid", "ray.node_id")
        tags += [RunTag(name, value) for name, value in zip(names, record.where, strict=True) if value]
    if record.resumed_from is not None:
        tags.append(RunTag("resumed_from_epoch", str(record.resumed_from)))
    return tags


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
