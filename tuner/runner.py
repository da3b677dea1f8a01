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
from tuner.errors import TunerError, UsageError
from tuner.pruning import make_scheduler
from tuner.search import (
    Adopted,
    FailureReasons,
    StudySearch,
    TrialOutcome,
    check_compatible,
    check_storage_url,
    make_sampler,
    open_storage,
)
from tuner.spec import Spec, parse_spec
from tuner.trainable import STOP_REASON, WORKER_ENV, train_trial

__all__ = ["Launch", "StudyResult", "resume_study", "run_study"]

#: Set by Ray in a job's driver (its job configuration, runtime environment included).
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


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


@dataclass(frozen=True)
class Launch:
    """What a launch is about to run, for the caller to show: given to ``announce``."""

    study: str
    trials: int
    resumed: int
    concurrency: int
    sampler: str
    seed: int
    data: str
    metric: str
    mode: str
    storage: str


@dataclass(frozen=True)
class _Plan:
    """What a launch runs: a new launch's trials, or what an interrupted one left to do."""

    launch: str
    samples: int
    adopt: tuple[Adopted, ...] = ()
    parent_run_id: str | None = None
    experiments: tuple[str, ...] = ()


def run_study(
    spec: Spec,
    *,
    workdir: str | Path = ".",
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    verbose: bool = False,
    progress: Callable[[TrialOutcome], None] | None = None,
    announce: Callable[[Launch], None] | None = None,
    warn: Callable[[str], None] | None = None,
    trainable: Callable[..., None] = train_trial,
) -> StudyResult:
    """Run the study a spec describes and return its trials.

    Args:
        spec: a validated spec (see :func:`tuner.load_spec`), with any overrides applied.
        workdir: where everything the run writes goes (Optuna's SQLite file, Ray Tune's results).
        storage: Optuna storage URL; default ``sqlite:///WORKDIR/optuna.db``.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else ``sqlite:///WORKDIR/mlflow.db``.
        address: Ray address (``auto``, ``HOST:6379``, ``ray://host:10001``); default ``RAY_ADDRESS``, else a
            local Ray.
        storage_path: where Ray Tune keeps the trials' checkpoints: a path every node sees, or a URI such as
            ``s3://bucket/runs``; default ``WORKDIR/ray_results``.
        verbose: let Ray and TensorFlow speak.
        progress: called on the driver with each trial's outcome as it ends.
        announce: called once with what the launch is about to run.
        warn: called with a line when something goes wrong that does not stop the study (e.g. MLflow).
        trainable: the function each trial runs, ``(config, data, *, threads, pruning)``; tuner's Keras
            trainer unless you bring your own.

    Raises:
        SpecError: the data the spec names cannot be loaded (nothing has been created).
        TunerError: the study could not run (e.g. the MLflow server does not answer; nothing is created then).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plan = _Plan(launch=f"{spec.study.name}-{stamp}", samples=spec.planned_trials)
    return _execute(spec, plan, **_options(locals()))


def resume_study(
    name: str,
    *,
    workdir: str | Path = ".",
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    verbose: bool = False,
    progress: Callable[[TrialOutcome], None] | None = None,
    announce: Callable[[Launch], None] | None = None,
    warn: Callable[[str], None] | None = None,
    trainable: Callable[..., None] = train_trial,
) -> StudyResult:
    """Finish the last launch of study ``name``, interrupted (Ctrl-C, a crash, ``kill -9``) before all its
    trials ended: its unfinished trials continue from their last checkpoints under the same Optuna trials and
    MLflow runs, and new trials make up the rest, so that the launch ends with the number it asked for.

    The spec is the one that launch stored in the Optuna study. Arguments as for :func:`run_study`.

    Raises:
        UsageError: there is no such study, or it has no launch tuner can resume.
    """
    workdir_path = Path(workdir).resolve()
    storage_url = check_storage_url(storage or f"sqlite:///{workdir_path / 'optuna.db'}")
    study = _load_study(name, storage_url)
    last = study.user_attrs.get(LAST_LAUNCH)
    info = study.user_attrs.get(f"{LAUNCH}{last}") if last else None
    if not info:
        raise UsageError(f"study {name!r} in {storage_url} has no launch by tuner to resume")
    spec = parse_spec(info["spec"], source=f"{name} (the spec stored with launch {last})")
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("launch") == last]
    unfinished = [t for t in trials if not t.state.is_finished()]
    finished = len(trials) - len(unfinished)
    if not unfinished and finished >= info["trials"]:
        raise UsageError(f"launch {last} of study {name!r} has all its {finished} trials; there is nothing to resume")
    experiments = tuple(info.get("experiments", ()))
    adopt = tuple(
        Adopted(t.number, _last_checkpoint(experiments, t.user_attrs.get("ray_trial_id"))) for t in unfinished
    )
    plan = _Plan(
        launch=str(last),
        samples=max(0, info["trials"] - finished - len(unfinished)) + len(adopt),
        adopt=adopt,
        parent_run_id=info.get("mlflow", {}).get("parent_run_id"),
        experiments=experiments,
    )
    options = _options(locals())
    options["storage"] = storage_url
    if storage_path is None and experiments:  # where the launch kept its checkpoints (a bucket, a shared path)
        options["storage_path"] = _parent_uri(experiments[-1])
    if tracking_uri is None:
        options["tracking_uri"] = info.get("mlflow", {}).get("tracking_uri")
    return _execute(spec, plan, **options)


#: Optuna study user attributes: each launch's record (spec, trials, experiments, MLflow run), and the last.
LAUNCH = "tuner.launch."
LAST_LAUNCH = "tuner.last_launch"


def _options(scope: dict[str, Any]) -> dict[str, Any]:
    keys = ("workdir", "storage", "tracking_uri", "address", "storage_path", "verbose", "progress", "announce")
    return {k: scope[k] for k in (*keys, "warn", "trainable")}


def _load_study(name: str, storage_url: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        raise UsageError(f"no study {name!r} in {storage_url}") from None


def _last_checkpoint(experiments: tuple[str, ...], trial_id: str | None) -> str | None:
    """The newest complete checkpoint a trial left in any of its launch's Ray Tune experiments: a path, or a
    URI on the experiment's storage (``s3://...``), which ``tune.Checkpoint`` reads from either."""
    import pyarrow.fs

    if not trial_id:
        return None
    trial = _trial_name_for(trial_id)
    for experiment in reversed(experiments):
        filesystem, path = pyarrow.fs.FileSystem.from_uri(_join_uri(experiment, trial))
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        names = sorted((f.base_name for f in found if f.base_name.startswith("checkpoint_")), reverse=True)
        for name in names:
            files = filesystem.get_file_info([f"{path}/{name}/{f}" for f in ("progress.json", "state.npz")])
            if all(f.type == pyarrow.fs.FileType.File for f in files):
                return _join_uri(experiment, trial, name)
    return None


def _join_uri(base: str, *parts: str) -> str:
    """``base/part/...``, for a path or a URI whose query (``s3://b/p?endpoint_override=...``) stays last."""
    head, mark, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + mark + query


def _parent_uri(uri: str) -> str:
    """The inverse of :func:`_join_uri` for one part: ``s3://b/p/x?q`` -> ``s3://b/p?q``."""
    head, mark, query = uri.partition("?")
    return head.rsplit("/", 1)[0] + mark + query


def _execute(
    spec: Spec,
    plan: _Plan,
    *,
    workdir: str | Path,
    storage: str | None,
    tracking_uri: str | None,
    address: str | None,
    storage_path: str | None,
    verbose: bool,
    progress: Callable[[TrialOutcome], None] | None,
    announce: Callable[[Launch], None] | None,
    warn: Callable[[str], None] | None,
    trainable: Callable[..., None],
) -> StudyResult:
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    sampler = make_sampler(spec.study.sampler, spec.study.seed)
    storage_url = check_storage_url(storage or f"sqlite:///{workdir / 'optuna.db'}")
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri, workdir)
    tracking.check_reachable(tracking_uri)
    _check_remote_driver(address, storage_url, tracking_uri)
    _quiet(verbose)
    _tune_settings()

    # Ray starts (seconds of waiting on its processes) while this thread reads the data and opens the
    # Optuna and MLflow stores.
    own_ray = not ray.is_initialized()
    in_job = bool(os.environ.get(JOB_CONFIG_VARIABLE))
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            if in_job and own_ray:
                # In a Ray job (tuner submit), connecting unpacks the job's working directory afresh: the
                # process's current directory is replaced under it. Connect first, then step back in.
                cwd = os.getcwd()
                _init_ray(address, verbose)
                os.chdir(cwd)
            preparing = pool.submit(_prepare, spec, workdir, storage_url, tracking_uri, warn, plan.parent_run_id)
            if own_ray and not in_job:
                _init_ray(address, verbose)
            dataset, optuna_storage, tracker = preparing.result()
        except BaseException:
            if own_ray:
                ray.shutdown()
            raise
    stopping: threading.Thread | None = None
    try:
        concurrency = spec.study.concurrency or _default_concurrency(spec)
        search = StudySearch(spec, storage=optuna_storage, sampler=sampler, launch=plan.launch, adopt=plan.adopt)
        root = storage_path or str(workdir / "ray_results")
        name = f"{spec.study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment = _join_uri(root, name)
        _record_launch(search.study, spec, plan, experiment, tracking_uri, tracker.parent_run_id)
        if announce:
            s = spec.study
            announce(Launch(s.name, plan.samples, len(plan.adopt), concurrency, s.sampler, s.seed,
                            dataset.describe(), s.metric, s.mode, storage_url))  # fmt: skip
        callback = tracking.TrackingCallback(tracker, search)
        interrupted = (
            _tune(spec, search, trainable, dataset, (root, name), plan.samples, concurrency, progress, callback)
            if plan.samples
            else False
        )
        launched = [t for t in search.study.get_trials() if t.user_attrs.get("launch") == plan.launch]
        result = StudyResult(
            study=spec.study.name,
            storage=storage_url,
            metric=spec.study.metric,
            mode=spec.study.mode,
            trials=tuple(TrialOutcome.from_frozen(t) for t in launched),
            wall_seconds=0.0,
            experiment_path=experiment,
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


def _record_launch(
    study: optuna.Study, spec: Spec, plan: _Plan, experiment: str, tracking_uri: str, parent_run_id: str
) -> None:
    """Keep in the Optuna study what ``tuner resume`` needs: the spec, the trial count, where the trials'
    checkpoints are and which MLflow run holds the launch."""
    key = f"{LAUNCH}{plan.launch}"
    info = study.user_attrs.get(key) or {"spec": spec.to_doc(), "trials": spec.planned_trials}
    info["experiments"] = [*info.get("experiments", ()), experiment]
    info["mlflow"] = {"tracking_uri": tracking_uri, "parent_run_id": parent_run_id}
    study.set_user_attr(key, info)
    study.set_user_attr(LAST_LAUNCH, plan.launch)


def _check_remote_driver(address: str | None, storage_url: str, tracking_uri: str) -> None:
    """With Ray Client (``ray://``), Ray Tune runs the study's loop on the cluster's head, not here: the
    Optuna and MLflow stores must then be servers the head reaches, not files on this machine.

    Raises:
        UsageError: a ``ray://`` address with a local SQLite or file store.
    """
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address.startswith("ray://"):
        return
    local = [what for what, uri in (("--storage", storage_url), ("--tracking-uri", tracking_uri)) if _is_local(uri)]
    if local:
        raise UsageError(
            f"--address {address}: with Ray Client, Ray Tune runs the study on the cluster's head, which cannot "
            f"reach the local stores; give {' and '.join(local)} as servers it can reach (postgresql://..., "
            f"http://...), or run the study there with `tuner submit`"
        )


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite", "file:")) or "://" not in uri


def _prepare(
    spec: Spec,
    workdir: Path,
    storage_url: str,
    tracking_uri: str,
    warn: Callable[[str], None] | None,
    parent_run_id: str | None,
) -> tuple[Dataset, optuna.storages.BaseStorage, tracking.Tracker]:
    """Everything a study needs besides Ray: the data, the Optuna storage, the MLflow records."""
    dataset = load_dataset(spec.data, seed=spec.study.seed, source=spec.source)
    workdir.mkdir(parents=True, exist_ok=True)
    optuna_storage = open_storage(storage_url)
    check_compatible(optuna_storage, spec)
    local_store = not tracking_uri.startswith(("http://", "https://"))
    artifacts = workdir / "mlartifacts" if local_store else None
    tracker = tracking.Tracker(spec, tracking_uri, artifact_root=artifacts, warn=warn, parent_run_id=parent_run_id)
    return dataset, optuna_storage, tracker


def _tune(
    spec: Spec,
    search: StudySearch,
    trainable: Callable[..., None],
    dataset: Dataset,
    experiment: tuple[str, str],
    trials: int,
    concurrency: int,
    progress: Callable[[TrialOutcome], None] | None,
    tracker: tune.Callback,
) -> bool:
    """Run the trials through Ray Tune into ``experiment`` (its storage path or URI, and its name); returns
    whether the run was interrupted."""
    storage_path, name = experiment
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
            name=name,
            storage_path=storage_path,
            stop=_StopOnReason(STOP_REASON),
            # A trial whose worker (or node) dies starts again from its last epoch's checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
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
    return _trial_name_for(trial.trial_id)


def _trial_name_for(trial_id: str) -> str:
    return f"trial-{trial_id}"


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
    }
    # Inside a Ray job (tuner submit) the job's runtime environment already carries these variables; a
    # second runtime environment from the driver makes Ray rebuild the job's and lose its working directory.
    if not os.environ.get(JOB_CONFIG_VARIABLE):
        kwargs["runtime_env"] = {"env_vars": dict(env)}
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
