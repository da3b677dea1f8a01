"""``run_study``: wires a spec, the Optuna search, Ray Tune and the trainable together, on the driver.

The driver owns every piece of state (the Optuna study, the records); workers only train and report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from tuner import environ, report, sending, tracking
from tuner.data import Dataset, load_dataset
from tuner.errors import Terminated, TunerError, UsageError
from tuner.pruning import make_scheduler
from tuner.results import Curves, Launch, StudyResult, TrialOutcome
from tuner.search import (
    Adopted,
    FailureReasons,
    StudySearch,
    check_compatible,
    check_storage_url,
    make_sampler,
    open_storage,
    outcome_of,
)
from tuner.service import Service
from tuner.spec import Spec, parse_spec
from tuner.trainable import STOP_REASON, WORKER_ENV, train_trial

__all__ = ["RunOptions", "connected", "creating", "resume_study", "run_study"]

#: Set by Ray in a job's driver (its job configuration, runtime environment included).
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class RunOptions:
    """How and where a launch runs, for :func:`run_study` and :func:`resume_study` alike.

    Attributes:
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
        register_model: register the best model as a new version of this MLflow registered model.
        service: a warm local service (``tuner up``, :func:`tuner.service.find`) to run on: its Ray head
            unless ``address`` or ``RAY_ADDRESS`` name another (the process must have imported Ray after
            setting :func:`tuner.service.auth_environment`), and its MLflow server in place of the store it
            serves.
    """

    workdir: str | Path = "."
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    storage_path: str | None = None
    verbose: bool = False
    progress: Callable[[TrialOutcome], None] | None = None
    announce: Callable[[Launch], None] | None = None
    warn: Callable[[str], None] | None = None
    trainable: Callable[..., None] = train_trial
    service: Service | None = None
    register_model: str | None = None


@dataclass(frozen=True)
class _Plan:
    """What a launch runs: a new launch's trials, or what an interrupted one left to do."""

    launch: str
    samples: int
    adopt: tuple[Adopted, ...] = ()
    parent_run_id: str | None = None
    experiments: tuple[str, ...] = ()


def run_study(spec: Spec, options: RunOptions | None = None, **changes: Any) -> StudyResult:
    """Run the study a spec describes and return its trials.

    Args:
        spec: a validated spec (see :func:`tuner.load_spec`), with any overrides applied.
        options: how and where to run it (:class:`RunOptions`); keyword arguments change single fields,
            e.g. ``run_study(spec, workdir="runs")``.

    Raises:
        SpecError: the data the spec names cannot be loaded (nothing has been created).
        TunerError: the study could not run (e.g. the MLflow server does not answer; nothing is created then).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plan = _Plan(launch=f"{spec.study.name}-{stamp}", samples=spec.planned_trials)
    return _execute(spec, plan, dataclasses.replace(options or RunOptions(), **changes))


def resume_study(name: str, options: RunOptions | None = None, **changes: Any) -> StudyResult:
    """Finish the last launch of study ``name``, interrupted (Ctrl-C, a crash, ``kill -9``) before all its
    trials ended: its unfinished trials continue from their last checkpoints under the same Optuna trials and
    MLflow runs, and new trials make up the rest, so that the launch ends with the number it asked for.

    The spec is the one that launch stored in the Optuna study; its checkpoints and MLflow runs are where
    that launch kept them, unless ``options`` say otherwise. Arguments as for :func:`run_study`.

    Raises:
        UsageError: there is no such study, or it has no launch tuner can resume.
    """
    options = dataclasses.replace(options or RunOptions(), **changes)
    storage_url = check_storage_url(options.storage or _default_storage(options))
    with _process_settings(options.verbose):
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
    where: dict[str, Any] = {"storage": storage_url}
    if options.storage_path is None and experiments:  # where the launch kept its checkpoints (a bucket, a path)
        where["storage_path"] = _parent_uri(experiments[-1])
    if options.tracking_uri is None:
        where["tracking_uri"] = info.get("mlflow", {}).get("tracking_uri")
    return _execute(spec, plan, dataclasses.replace(options, **where))


def _default_storage(options: RunOptions) -> str:
    return f"sqlite:///{Path(options.workdir).resolve() / 'optuna.db'}"


#: Optuna study user attributes: each launch's record (spec, trials, experiments, MLflow run), and the last.
LAUNCH = "tuner.launch."
LAST_LAUNCH = "tuner.last_launch"


def _load_study(name: str, storage_url: str) -> optuna.Study:
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


def _execute(spec: Spec, plan: _Plan, options: RunOptions) -> StudyResult:
    """A launch in four steps: connect (Ray, beside the data and the stores), prepare the search, tune,
    finish the records; in process settings restored afterwards."""
    started = time.monotonic()
    stores = _locate(options)
    sampler = make_sampler(spec.study.sampler, spec.study.seed)
    # SIGTERM stops a launch as Ctrl-C does, from the start (_RayThread keeps ray.init from replacing it).
    with _process_settings(options.verbose), _sigterm_as_ctrl_c() as received, contextlib.ExitStack() as stack:
        curves = Curves()  # every trial's curves, recorded by the search, read by the diagnosis and the records
        session = _connect(spec, plan, stores, options, curves, received)
        tracker = session.tracker
        try:
            stack.enter_context(sending.client_settings())  # from here on, only the outbox's thread sends
            search = StudySearch(
                spec,
                storage=session.storage,
                sampler=sampler,
                launch=plan.launch,
                adopt=plan.adopt,
                curves=curves,
            )
            result = _tune(spec, plan, stores, options, session, search)
            result = dataclasses.replace(result, terminated=result.interrupted and bool(received))
            model_uri = _finish(spec, result, search, tracker, options.warn)
        except BaseException:
            tracker.fail()
            raise
        finally:
            try:  # the records are queued; the outbox's thread sends them while Ray stops
                if session.ray is not None:
                    session.ray.stop()
            finally:
                unsent = tracker.close()
    runs = {"tracking_uri": stores.tracking_uri, "experiment_id": tracker.experiment_id}
    runs["parent_run_id"] = tracker.parent_run_id
    if model_uri:
        runs["model_uri"] = model_uri
        if tracker.registering:  # queued: a new version once the outbox sends it
            runs["registered_model"] = tracker.registering
    return dataclasses.replace(result, wall_seconds=time.monotonic() - started, mlflow=runs, unsent_records=unsent)


@contextlib.contextmanager
def connected(options: RunOptions) -> Iterator[tuple[_Stores, list[int]]]:
    """Ray, started or reached as a launch does (the same address, service and settings), and the stores a
    launch would use, for work on the cluster besides a study (``tuner lr-find``). Yields the stores and the
    SIGTERMs received, at which the work should stop (raise :class:`Terminated`). Ray stops afterwards if this
    started it. Work done here runs its driver's code in this process, even through Ray Client."""
    stores = _locate(options, study=False)
    with _process_settings(options.verbose), _sigterm_as_ctrl_c() as received:
        ray_thread = None if ray.is_initialized() else _RayThread(stores.address, options.verbose)
        try:
            if ray_thread is not None:
                ray_thread.started(received)
                _reclaim_sigterm()
            if received:
                raise Terminated
            yield stores, received
        finally:
            if ray_thread is not None:
                ray_thread.stop()


def _stop_ray() -> None:
    """Stop the Ray this launch started, with no garbage collection meanwhile.

    ``ray.shutdown`` ends Ray's core worker a moment before it forgets it: an object reference freed in that
    moment, by a collection in any thread, calls into the dead worker, and Ray ends the process ("The core
    worker has already been shutdown"). Collect first, then hold collection off until Ray has stopped.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        ray.shutdown(wait_for_processes=True)  # the node processes gone before their thread ends (see _RayThread)
    except Exception:  # the study is complete in Optuna and its records are queued: nothing to lose here
        logging.getLogger(__name__).debug("ray.shutdown failed", exc_info=True)
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class _Stores:
    """Where a launch keeps its state, resolved and checked before anything is created."""

    workdir: Path
    storage_url: str
    tracking_uri: str  # where the records are sent
    tracking_store: str  # the store they end in, which the launch records: the same, or what a service serves
    address: str | None  # Ray's; None: a local Ray of the launch's own

    @property
    def artifact_root(self) -> Path | None:
        """Where a new experiment keeps its artifacts: ``WORKDIR/mlartifacts`` for a local store, the server's
        choice (``None``) for a server. The store's kind, not the address's: through tuner up's server,
        experiments keep the location a launch without it gives them, so that either kind of launch can log to
        them later."""
        local = not self.tracking_store.startswith(("http://", "https://"))
        return self.workdir / "mlartifacts" if local else None


@dataclass(frozen=True)
class _Session:
    """What a launch holds once connected: Ray (when this launch started it), the data, the stores."""

    ray: _RayThread | None
    dataset: Dataset
    storage: optuna.storages.BaseStorage
    tracker: tracking.Tracker
    signals: list[int]  # each SIGTERM received: Ray Tune's loop stops at the next step


def _locate(options: RunOptions, *, study: bool = True) -> _Stores:
    """The launch's stores as the options name them, each checked before anything is created.

    Raises:
        UsageError: a store's address is malformed, or local while Ray Client runs the loop elsewhere.
        TunerError: the MLflow server does not answer.
    """
    workdir = Path(options.workdir).resolve()
    storage_url = check_storage_url(options.storage or _default_storage(options))
    store = tracking.resolve_tracking_uri(options.tracking_uri, workdir)
    served = options.service
    address = options.address or os.environ.get("RAY_ADDRESS") or (served.ray_address if served else None)
    # Through the service's server, unless Ray Client runs the loop on a cluster's head, which cannot reach
    # this machine's loopback any more than its files.
    through = served is not None and not (address or "").startswith("ray://")
    tracking_uri = served.url_for(store) if through and served is not None else store
    tracking.check_reachable(tracking_uri)
    if study:  # Ray Client runs a study's loop on the cluster's head, beside its stores
        _check_remote_driver(address, storage_url, store)
    return _Stores(workdir, storage_url, tracking_uri, store, address)


def _connect(
    spec: Spec, plan: _Plan, stores: _Stores, options: RunOptions, curves: Curves, signals: list[int]
) -> _Session:
    """Start or reach Ray (from a thread of its own, :class:`_RayThread`) while this thread reads the data and
    opens the Optuna and MLflow stores: Ray's start is seconds of waiting on its processes. ``signals``: the
    SIGTERMs received, which stop the launch here."""
    cwd = os.getcwd()
    ray_thread = None if ray.is_initialized() else _RayThread(stores.address, options.verbose)
    prepared: tuple[Dataset, optuna.storages.BaseStorage, tracking.Tracker] | None = None
    try:
        if ray_thread is not None and os.environ.get(JOB_CONFIG_VARIABLE):
            # In a Ray job (tuner submit), connecting unpacks the job's working directory afresh: the
            # process's current directory is replaced under it. Connect first, then step back in.
            ray_thread.started(signals)
            _reclaim_sigterm()
            os.chdir(cwd)
        prepared = _prepare(spec, stores, options.warn, plan.parent_run_id, curves, options.register_model)
        if ray_thread is not None:
            ray_thread.started(signals)
            _reclaim_sigterm()
        if signals:
            raise Terminated
    except BaseException:
        try:
            if ray_thread is not None:
                ray_thread.stop()
        finally:
            if prepared is not None:  # the records it opened end FAILED
                tracker = prepared[2]
                tracker.fail()
                tracker.close(patience=5.0)
        raise
    return _Session(ray_thread, *prepared, signals)


def _reclaim_sigterm() -> None:
    """Put the launch's SIGTERM handler back in place, in the main thread: Ray's core worker, made as ray.init
    connects, puts in a native one (absl's failure-signal handler, which aborts the process) unless
    ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` was set when Ray was imported (the CLI sets it)."""
    handler = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread() and handler is not None:
        signal.signal(signal.SIGTERM, handler)


#: How long a launch waits for Ray to stop (a local one takes seconds; ray.init of a remote Ray that does not
#: answer retries for a minute, and Ray stops once it returns).
RAY_STOP_PATIENCE = 60.0


class _RayThread:
    """Ray, started by a thread of its own, which stops it when the launch is done with it.

    Not by the main thread: there ``ray.init`` puts in a SIGTERM handler that raises ``SystemExit`` wherever
    the thread is, a held lock included, so a launch stopped while Ray started could hang; a launch's SIGTERM
    is a clean stop (:func:`_sigterm_as_ctrl_c`). Not by a pool's thread either: Ray's node processes die with
    the thread that started them (``PR_SET_PDEATHSIG``), so this one lives until they have exited, and stops
    them itself (:func:`_stop_ray`): from another thread, the driver's shutdown waited seconds longer and left
    Ray's agents running.
    """

    def __init__(self, address: str | None, verbose: bool) -> None:
        self._ready = threading.Event()  # ray.init has returned (or raised)
        self._release = threading.Event()  # the launch is done with Ray
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        thread = threading.Thread(target=self._run, args=(address, verbose), name="tuner-ray", daemon=True)
        thread.start()

    def _run(self, address: str | None, verbose: bool) -> None:
        try:
            _init_ray(address, verbose)
        except BaseException as exc:  # handed to the thread that waits for Ray
            self._error = exc
        self._ready.set()
        self._release.wait()
        try:
            _stop_ray()  # a failed start's remains too
        finally:
            self._stopped.set()

    def started(self, signals: list[int]) -> None:
        """Wait until Ray has started, or until a SIGTERM comes (``signals``): reaching a remote Ray that does
        not answer can take ray.init a minute of retries.

        Raises:
            TunerError: Ray could not be started or reached.
            Terminated: a SIGTERM came first.
        """
        while not self._ready.wait(timeout=0.1):
            if signals:
                raise Terminated
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Have the thread stop Ray, once ray.init has returned, and wait for it (:data:`RAY_STOP_PATIENCE`
        seconds at most)."""
        self._release.set()
        self._stopped.wait(timeout=RAY_STOP_PATIENCE)


def _prepare(
    spec: Spec,
    stores: _Stores,
    warn: Callable[[str], None] | None,
    parent_run_id: str | None,
    curves: Curves,
    register_model: str | None = None,
) -> tuple[Dataset, optuna.storages.BaseStorage, tracking.Tracker]:
    """Everything a study needs besides Ray: the data, the Optuna storage, the MLflow records."""
    dataset = load_dataset(spec.data, seed=spec.study.seed, source=spec.source)
    stores.workdir.mkdir(parents=True, exist_ok=True)
    with creating(stores.storage_url, stores.tracking_uri):
        storage = open_storage(stores.storage_url)
        check_compatible(storage, spec)
        tracker = tracking.Tracker(
            spec,
            stores.tracking_uri,
            workdir=stores.workdir,
            artifact_root=stores.artifact_root,
            warn=warn,
            parent_run_id=parent_run_id,
            curves=curves,
            store=stores.tracking_store,
            dataset=tracking.dataset_record(dataset),
            register_model=register_model,
        )
    return dataset, storage, tracker


@contextlib.contextmanager
def creating(*urls: str) -> Iterator[None]:
    """One launch at a time creates or opens the SQLite stores among ``urls``: Optuna and MLflow each create
    their tables on first use, and two launches doing it at once into a fresh work directory collide ("table
    alembic_version already exists"). A hidden lock file beside each database; the system drops the lock if a
    launch dies."""
    import fcntl

    from sqlalchemy.engine import make_url

    paths = sorted({make_url(u).database or "" for u in urls if u.startswith("sqlite")} - {"", ":memory:"})
    with contextlib.ExitStack() as stack:
        for path in paths:  # in one order, so that two launches never hold one lock each
            folder, name = os.path.split(os.path.abspath(path))
            lock = stack.enter_context(open(os.path.join(folder, f".{name}.lock"), "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tune(
    spec: Spec, plan: _Plan, stores: _Stores, options: RunOptions, session: _Session, search: StudySearch
) -> StudyResult:
    """Record the launch in the study, announce it, run its trials through Ray Tune; what they did."""
    concurrency = spec.study.concurrency or _default_concurrency(spec)
    root = options.storage_path or str(stores.workdir / "ray_results")
    name = f"{spec.study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = _join_uri(root, name)
    _record_launch(search.study, spec, plan, experiment, stores.tracking_store, session.tracker.parent_run_id)
    if options.announce:
        s = spec.study
        options.announce(Launch(s.name, plan.samples, len(plan.adopt), concurrency, s.sampler, s.seed,
                                session.dataset.describe(), s.metric, s.mode, stores.storage_url))  # fmt: skip
    interrupted = False
    if plan.samples:
        callbacks = [
            FailureReasons(search),  # first: the tracker records the state Optuna was told
            tracking.TrackingCallback(session.tracker, search.outcomes),
            _Progress(search, options.progress),
        ]
        interrupted = _fit(spec, search, options.trainable, session.dataset, (root, name), plan.samples,
                           concurrency, callbacks, session.signals)  # fmt: skip
    launched = [t for t in search.study.get_trials() if t.user_attrs.get("launch") == plan.launch]
    return StudyResult(
        study=spec.study.name,
        storage=stores.storage_url,
        metric=spec.study.metric,
        mode=spec.study.mode,
        trials=tuple(outcome_of(t) for t in launched),
        wall_seconds=0.0,
        experiment_path=experiment,
        interrupted=interrupted,
    )


def _finish(
    spec: Spec,
    result: StudyResult,
    search: StudySearch,
    tracker: tracking.Tracker,
    warn: Callable[[str], None] | None,
) -> str | None:
    """Close the launch's MLflow records, with the study's plots and tables (written by :mod:`tuner.report`)
    on its parent run; returns the best model's URI, if one was logged."""
    with tempfile.TemporaryDirectory() as files:
        try:
            report.write_study_files(Path(files), result, tracker.curves(result), search.study, spec)
        except Exception as exc:  # the study itself is complete in Optuna and in MLflow's runs
            if warn is not None:
                warn(f"could not write the study's plots and tables: {type(exc).__name__}: {exc}")
        return tracker.finish(result, search.outcomes, Path(files), configs=search.configs)


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
    if not address or not address.startswith("ray://"):
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


def _fit(
    spec: Spec,
    search: StudySearch,
    trainable: Callable[..., None],
    dataset: Dataset,
    experiment: tuple[str, str],
    trials: int,
    concurrency: int,
    callbacks: list[tune.Callback],
    signals: list[int],
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
            stop=_StopOnReason(STOP_REASON, signals),
            # A trial whose worker (or node) dies starts again from its last epoch's checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
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
    # A SIGTERM acted on by the stopper may end the loop before any trial was asked for (none is left then).
    return interrupted or bool(left) or (bool(signals) and len(search.outcomes) < trials)


def _trial_name(trial: Any) -> str:
    return _trial_name_for(trial.trial_id)


def _trial_name_for(trial_id: str) -> str:
    return f"trial-{trial_id}"


class _StopOnReason(tune.Stopper):
    """A Tune stopper: a result carrying a stop reason ends its trial before any scheduler or searcher
    sees that result (it holds no finite metric to compare); a SIGTERM received ends them all."""

    def __init__(self, key: str, signals: list[int]) -> None:
        self.key, self.signals = key, signals

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get(self.key))

    def stop_all(self) -> bool:
        return bool(self.signals)  # a SIGTERM that came before Ray Tune's own handler was in place


class _Progress(tune.Callback):
    """Passes each trial's outcome, as told to Optuna, to the caller's ``progress`` function."""

    def __init__(self, search: StudySearch, emit: Callable[[TrialOutcome], None] | None) -> None:
        self._search, self._emit = search, emit

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks with the experiment, for Tuner.restore (which tuner does not use);
        # the caller's function may hold anything (a lock, a console) and stays in this process.
        return {**self.__dict__, "_emit": None}

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
    with environ.setting({"TUNE_RESULT_BUFFER_LENGTH": "1000", "TUNE_RESULT_BUFFER_MIN_TIME_S": "0.5"}):
        yield


#: Loggers a launch quiets (unless verbose), restored afterwards.
QUIET_LOGGERS = {"ray": logging.CRITICAL, "ray.tune": logging.CRITICAL, "ray.train": logging.CRITICAL,
                 "ray.data": logging.CRITICAL, "mlflow": logging.ERROR, "alembic": logging.ERROR}  # fmt: skip


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM (``docker stop``, ``kill``, a Ray job being stopped) stops a launch as Ctrl-C does.

    While Ray Tune's loop runs, through Tune's own SIGINT handler: the loop ends, and the search tells Optuna
    FAIL for each trial still running. Elsewhere the handler only records it, in the list it yields, and the
    launch stops at its next safe point (after connecting; Tune's loop at its next step, through the stopper):
    an exception raised from a handler lands wherever the thread is, a held lock included. A second SIGTERM
    raises :class:`Terminated`, a KeyboardInterrupt, at once.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread may set signal handlers
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        received.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)  # Ray Tune's, which stops its loop gracefully
        elif len(received) > 1:
            raise Terminated  # asked twice: at once, wherever this thread is

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _process_settings(verbose: bool) -> Iterator[None]:
    """The settings a launch needs in this process, for as long as it runs; then the process as it was found
    (environment variables, logger levels, warning filters, Optuna's verbosity), for the program that called.

    - Ray Tune's per-result file loggers (JSON, CSV, TensorBoard) repeat what Optuna and MLflow record and
      cost the driver more per epoch than a small trial's training; they are off.
    - MLflow's client prints no "View run" links (:data:`sending.QUIET_CLIENT`).
    - Unless ``verbose``: Tune's newer console output prints its configuration box whatever the verbosity
      (the classic reporter honours verbose=0); a failed trial's error is printed once, by tuner, as one
      line; Ray's, MLflow's and Optuna's loggers and warnings keep quiet.
    """
    environ = dict(os.environ)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    verbosity = optuna.logging.get_verbosity()
    try:
        with warnings.catch_warnings(), sending.client_settings(bounded=False):
            os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
            optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
            if not verbose:
                os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
                os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
                for name, level in QUIET_LOGGERS.items():
                    logging.getLogger(name).setLevel(level)
                warnings.filterwarnings("ignore", module="ray")
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        optuna.logging.set_verbosity(verbosity)


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
    if not address:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise TunerError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}") from None


def _default_concurrency(spec: Spec) -> int:
    """One trial per CPU the cluster has for trials (and per GPU share, when trials take GPUs)."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) // spec.resources.cpus_per_trial
    if spec.resources.gpus_per_trial:
        slots = min(slots, resources.get("GPU", 0) // spec.resources.gpus_per_trial)
    return max(1, int(slots))
