"""``run_study``: wires a spec, the Optuna search, Ray Tune and the trainable together, on the driver.

The driver owns every piece of state (the Optuna study, the records); workers only train and report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from tuner import tracking
from tuner.data import Dataset, load_dataset
from tuner.errors import TunerError
from tuner.pruning import make_scheduler
from tuner.search import (
    FailureReasons,
    StudySearch,
    TrialOutcome,
    check_compatible,
    check_storage_url,
    make_sampler,
    open_storage,
)
from tuner.spec import Spec
from tuner.trainable import STOP_REASON, train_trial

__all__ = ["StudyResult", "run_study"]

#: Environment every worker gets: quiet TensorFlow, Keras on TensorFlow.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore"}


@dataclass(frozen=True)
class StudyResult:
    """What a launch did: its trials as Optuna records them, best first."""

    study: str
    storage: str
    metric: str
    mode: str
    trials: tuple[TrialOutcome, ...]
    wall_seconds: float
    experiment_path: str
    interrupted: bool = False
    mlflow: dict[str, str] | None = None

    def counts(self) -> dict[str, int]:
        states = [t.state for t in self.trials]
        return {state: states.count(state) for state in ("complete", "pruned", "failed")}

    def ranked(self) -> list[TrialOutcome]:
        """Complete trials best first, then the others by number."""
        sign = 1.0 if self.mode == "min" else -1.0
        done = sorted((t for t in self.trials if t.value is not None), key=lambda t: sign * (t.value or 0.0))
        return done + [t for t in self.trials if t.value is None]

    @property
    def best(self) -> TrialOutcome | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].value is not None else None

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "study": self.study,
            "storage": self.storage,
            "trials": self.counts(),
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
            "wall_seconds": round(self.wall_seconds, 3),
            "metric": self.metric,
            "mode": self.mode,
            "interrupted": self.interrupted,
            "mlflow": self.mlflow,
        }


def run_study(
    spec: Spec,
    *,
    workdir: str | Path = ".",
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    verbose: bool = False,
    progress: Callable[[TrialOutcome], None] | None = None,
    announce: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    trainable: Callable[..., None] = train_trial,
) -> StudyResult:
    """Run the study a spec describes and return its trials.

    Args:
        spec: a validated spec (see :func:`tuner.load_spec`), with any overrides applied.
        workdir: where everything the run writes goes (Optuna's SQLite file, Ray Tune's results).
        storage: Optuna storage URL; default ``sqlite:///WORKDIR/optuna.db``.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else ``sqlite:///WORKDIR/mlflow.db``.
        address: Ray address (``auto``, ``ray://host:10001``); default a local Ray (or ``RAY_ADDRESS``).
        verbose: let Ray and TensorFlow speak.
        progress: called on the driver with each trial's outcome as it ends.
        announce: called once with a line describing the study about to run.
        warn: called with a line when something goes wrong that does not stop the study (e.g. MLflow).
        trainable: the function each trial runs, ``(config, data, *, threads, pruning)``; tuner's Keras
            trainer unless you bring your own.

    Raises:
        SpecError: the data the spec names cannot be loaded (nothing has been created).
        TunerError: the study could not run (e.g. the MLflow server does not answer; nothing is created then).
    """
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    sampler = make_sampler(spec.study.sampler, spec.study.seed)
    storage_url = check_storage_url(storage or f"sqlite:///{workdir / 'optuna.db'}")
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri, workdir)
    tracking.check_reachable(tracking_uri)
    _quiet(verbose)
    _tune_settings()

    # Ray starts (seconds of waiting on its processes) while this thread reads the data and opens the
    # Optuna and MLflow stores.
    own_ray = not ray.is_initialized()
    with ThreadPoolExecutor(max_workers=1) as pool:
        preparing = pool.submit(_prepare, spec, workdir, storage_url, tracking_uri, warn)
        try:
            if own_ray:
                _init_ray(address, verbose)
            dataset, optuna_storage, tracker = preparing.result()
        except BaseException:
            if own_ray:
                ray.shutdown()
            raise
    stopping: threading.Thread | None = None
    try:
        trials = spec.planned_trials
        concurrency = spec.study.concurrency or _default_concurrency(spec)
        if announce:
            announce(
                f"study {spec.study.name}: {trials} trials, {concurrency} at a time, {spec.study.sampler} sampler "
                f"(seed {spec.study.seed}); {dataset.describe()}; {spec.study.mode} {spec.study.metric}\n"
                f"optuna storage: {storage_url}"
            )
        search = StudySearch(spec, storage=optuna_storage, sampler=sampler)
        experiment = workdir / "ray_results" / f"{spec.study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        callback = tracking.TrackingCallback(tracker, search)
        interrupted = _tune(spec, search, trainable, dataset, experiment, trials, concurrency, progress, callback)
        numbers = set(search.numbers())
        result = StudyResult(
            study=spec.study.name,
            storage=storage_url,
            metric=spec.study.metric,
            mode=spec.study.mode,
            trials=tuple(TrialOutcome.from_frozen(t) for t in search.study.get_trials() if t.number in numbers),
            wall_seconds=0.0,
            experiment_path=str(experiment),
            interrupted=interrupted,
        )
        # Ray's shutdown (a second or so of stopping processes) runs beside the last MLflow writes and plots.
        stopping = threading.Thread(target=ray.shutdown) if own_ray else None
        if stopping:
            stopping.start()
        model_uri = tracker.finish(result, search)
    except BaseException:
        tracker.fail()
        raise
    finally:
        if stopping:
            stopping.join()
        elif own_ray:
            ray.shutdown()
    runs = {
        "tracking_uri": tracking_uri,
        "experiment_id": tracker.experiment_id,
        "parent_run_id": tracker.parent_run_id,
    }
    if model_uri:
        runs["model_uri"] = model_uri
    return dataclasses.replace(result, wall_seconds=time.monotonic() - started, mlflow=runs)


def _prepare(
    spec: Spec, workdir: Path, storage_url: str, tracking_uri: str, warn: Callable[[str], None] | None
) -> tuple[Dataset, optuna.storages.BaseStorage, tracking.Tracker]:
    """Everything a study needs besides Ray: the data, the Optuna storage, the MLflow records."""
    dataset = load_dataset(spec.data, seed=spec.study.seed, source=spec.source)
    workdir.mkdir(parents=True, exist_ok=True)
    optuna_storage = open_storage(storage_url)
    check_compatible(optuna_storage, spec)
    local_store = not tracking_uri.startswith(("http://", "https://"))
    artifacts = workdir / "mlartifacts" if local_store else None
    return dataset, optuna_storage, tracking.Tracker(spec, tracking_uri, artifact_root=artifacts, warn=warn)


def _tune(
    spec: Spec,
    search: StudySearch,
    trainable: Callable[..., None],
    dataset: Dataset,
    experiment: Path,
    trials: int,
    concurrency: int,
    progress: Callable[[TrialOutcome], None] | None,
    tracker: tune.Callback,
) -> bool:
    """Run the trials through Ray Tune; returns whether the run was interrupted."""
    threads = max(1, int(spec.resources.cpus_per_trial))
    resourced = tune.with_resources(
        tune.with_parameters(trainable, data=dataset, threads=threads, pruning=spec.pruning),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    tuner = tune.Tuner(
        resourced,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=make_scheduler(
                spec.pruning, metric=spec.study.metric, mode=spec.study.mode, epochs=spec.training.epochs
            ),
            num_samples=trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            stop=_StopOnReason(STOP_REASON),
            callbacks=[FailureReasons(search), tracker, _Progress(search, progress)],
            verbose=0,
        ),
    )
    interrupted = False
    try:
        with _buffered_results(spec.pruning.scheduler == "none"):
            tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Ctrl-C ends Tune's loop with trials still running; Optuna hears of each one.
        left = search.close("interrupted before it finished")
    return interrupted or bool(left)


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


class _StopOnReason(tune.Stopper):
    """A Tune stopper: a result carrying a stop reason ends its trial before any scheduler or searcher
    sees that result (it holds no finite metric to compare)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get(self.key))

    def stop_all(self) -> bool:
        return False


class _Progress(tune.Callback):
    """Passes each trial's outcome, as told to Optuna, to the caller's ``progress`` function."""

    def __init__(self, search: StudySearch, emit: Callable[[TrialOutcome], None] | None) -> None:
        self._search, self._emit = search, emit

    def _done(self, trial: Any) -> None:
        outcome = self._search.outcomes.get(trial.trial_id)
        if outcome is not None and self._emit is not None:
            self._emit(outcome)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._done(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._done(trial)


@contextlib.contextmanager
def _buffered_results(allowed: bool) -> Iterator[None]:
    """Let each trial run ahead of the driver by up to half a second of results.

    Ray Tune's function trainables otherwise wait for a driver round-trip after every reported epoch,
    which costs more than a small epoch. Only without a scheduler: ASHA and the others judge each result
    as it comes (Ray Tune turns buffering off for them anyway). Trials still report every epoch.
    """
    if not allowed:
        yield
        return
    settings = {"TUNE_RESULT_BUFFER_LENGTH": "1000", "TUNE_RESULT_BUFFER_MIN_TIME_S": "0.5"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tune_settings() -> None:
    """Ray Tune's per-result file loggers (JSON, CSV, TensorBoard) repeat what Optuna and MLflow record and
    cost the driver more per epoch than a small trial's training; tuner turns them off."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _quiet(verbose: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    if not verbose:
        # Tune's newer console output prints its configuration box whatever the verbosity; the classic
        # reporter honours verbose=0. tuner prints its own line per trial.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # A failed trial's error is printed once, by tuner, as one line.
        os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="ray")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _init_ray(address: str | None, verbose: bool) -> None:
    env = {**WORKER_ENV, "TF_CPP_MIN_LOG_LEVEL": "0"} if verbose else WORKER_ENV
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "runtime_env": {"env_vars": dict(env)},
    }
    if not (address or os.environ.get("RAY_ADDRESS")):
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise TunerError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}") from None


def _default_concurrency(spec: Spec) -> int:
    """One trial per CPU the cluster has for trials (and per GPU share, when trials take GPUs)."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) // spec.resources.cpus_per_trial
    if spec.resources.gpus_per_trial:
        slots = min(slots, resources.get("GPU", 0) // spec.resources.gpus_per_trial)
    return max(1, int(slots))
