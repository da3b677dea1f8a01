"""The Optuna study behind a launch, driven through Optuna's ask-and-tell interface as a Ray Tune searcher.

Optuna proposes, Ray Tune runs: :class:`StudySearch` asks the study for a trial, hands Ray Tune its
configuration, reports each epoch's metric and tells the study how the trial ended, in Optuna's own words.
A trial is COMPLETE only when it trained every epoch, PRUNED when it stopped early (the reason kept as a
user attribute), and FAIL when it raised; a non-finite number never reaches Optuna.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from tuner.errors import TunerError, UsageError
from tuner.plugins import SAMPLERS
from tuner.pruning import diagnose
from tuner.results import Curves, TrialOutcome
from tuner.space import SearchSpace, plain_params
from tuner.trainable import STOP_REASON

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from tuner.spec import Spec

__all__ = [
    "OPTUNA_STATES",
    "Adopted",
    "FailureReasons",
    "StudySearch",
    "check_storage_url",
    "make_sampler",
    "open_storage",
    "outcome_of",
]

#: Optuna's states in the words tuner prints, tags and counts.
OPTUNA_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def outcome_of(trial: optuna.trial.FrozenTrial) -> TrialOutcome:
    """A trial as Optuna stores it, in tuner's terms."""
    attrs = trial.user_attrs
    return TrialOutcome(
        number=trial.number,
        state=OPTUNA_STATES.get(trial.state, trial.state.name.lower()),
        value=trial.value if trial.state == TrialState.COMPLETE else None,
        epochs=int(attrs.get("epochs", 0)),
        params=plain_params(trial.params),
        seed=attrs.get("seed"),
        reason=attrs.get("stop_reason") or attrs.get("fail_reason"),
        trial_id=attrs.get("ray_trial_id"),
        diagnosis=attrs.get("diagnosis"),
    )


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by the name a spec uses (see :data:`tuner.plugins.SAMPLERS`), seeded.

    Raises:
        TunerError: the sampler needs a package that is not installed (``gp`` needs PyTorch).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}")
    with warnings.catch_warnings():  # some of Optuna's samplers are marked experimental; they work
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name].build(seed)


def check_storage_url(url: str) -> str:
    """``url`` if it reads as a database URL; checked before anything is created.

    Raises:
        UsageError: it does not.
    """
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"--storage: not a database URL, e.g. sqlite:///optuna.db (got {url!r})") from None
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url`` (``sqlite:///PATH``, ``postgresql://...``).

    Raises:
        TunerError: Optuna cannot open it.
    """
    import sqlalchemy.exc

    try:
        storage = optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        raise TunerError(f"cannot open the Optuna storage {url}: {str(exc).splitlines()[0]}") from None
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage


def _fast_sqlite(engine: Any) -> None:
    """Write-ahead logging, synced at checkpoints rather than at every commit: Optuna commits once per
    reported epoch, and a full sync each time costs more than a small trial's epoch. A crash of the
    process loses nothing; only a power cut could lose the last few commits."""
    from sqlalchemy import event

    def pragmas(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener reconnect with it


def check_compatible(storage: optuna.storages.BaseStorage, spec: Spec) -> None:
    """Refuse to add trials to an existing study whose space or direction the spec contradicts.

    Optuna would otherwise fail every new trial on its first conflicting ``suggest`` call.

    Raises:
        UsageError: the stored study cannot take this spec's trials.
    """
    name = spec.study.name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    fix = "pick a new study name (study.name or --name) or another --storage"
    direction = "minimize" if spec.study.mode == "min" else "maximize"
    stored = study.direction.name.lower()
    if stored != direction:
        raise UsageError(f"study {name!r} already exists and {stored}s its metric; this spec {direction}s: {fix}")
    mine = _distributions(spec)
    for trial in study.get_trials(deepcopy=False):
        for param, old in trial.distributions.items():
            new = mine.get(param)
            if new is None:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError:
                raise UsageError(
                    f"study {name!r} already exists with {param} searched as {old}, which this spec changes to "
                    f"{new}; Optuna cannot mix the two in one study: {fix}"
                ) from None


def _distributions(spec: Spec) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of every parameter the spec searches (what SearchSpace suggests)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for optimizer in spec.optimizers:
        study.enqueue_trial({"optimizer": optimizer.name})
        trial = study.ask()
        SearchSpace(spec)(trial)
        out.update(trial.distributions)
    return out


@dataclass(frozen=True)
class Adopted:
    """A trial that an interrupted launch asked Optuna for and did not finish; a resumed launch gives it a new
    Ray Tune trial, which starts from ``checkpoint`` (the old trial's last one) when there is one."""

    number: int
    checkpoint: str | None = None


class StudySearch(Searcher):
    """A Ray Tune searcher over a spec's define-by-run space, on Optuna's ask-and-tell interface.

    Every trial it asks for carries the user attributes ``launch`` (which launch asked for it) and
    ``ray_trial_id``, so that ``tuner resume`` can find an interrupted launch's trials and checkpoints; a
    resumed launch hands it those trials (``adopt``) to run again before it asks for new ones.
    """

    def __init__(
        self,
        spec: Spec,
        *,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        launch: str = "",
        adopt: Sequence[Adopted] = (),
        curves: Curves | None = None,
    ):
        super().__init__(metric=spec.study.metric, mode=spec.study.mode)
        self.study = optuna.create_study(
            study_name=spec.study.name,
            storage=storage,
            sampler=sampler,
            pruner=optuna.pruners.NopPruner(),  # Ray Tune's schedulers prune; the reports are for samplers
            direction="minimize" if spec.study.mode == "min" else "maximize",
            load_if_exists=True,
        )
        # The storage as the caller opened it: its public methods find a trial by its number.
        self._storage = storage
        self._study_id = storage.get_study_id_from_name(spec.study.name)
        self._space = SearchSpace(spec)
        self._epochs = spec.training.epochs
        self._scheduler = spec.pruning.scheduler
        self._launch = launch
        self._adopt = list(adopt)
        #: Ray Tune trial id -> the Optuna trial it runs, and the epochs reported to Optuna for it.
        self._trials: dict[str, optuna.Trial] = {}
        self._reported: dict[str, set[int]] = {}
        self._told: set[str] = set()
        self._failed: set[str] = set()
        #: Every trial's curves, recorded here as results arrive (the study's one record of them).
        self.curves = curves if curves is not None else Curves()
        # The lowest validation loss ended trials had at each epoch, so that a curve stopped early is compared
        # with the others at the same epoch.
        self._best_at: dict[int, float] = {}
        self.outcomes: dict[str, TrialOutcome] = {}
        #: Ray Tune trial id -> the configuration it was given (a trial stopped before it started has no other).
        self.configs: dict[str, dict[str, Any]] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # The spec sets the metric and mode; Ray Tune's own (TuneConfig) are not used.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """A configuration for a new Ray Tune trial: an adopted (interrupted) trial's own, with the checkpoint
        to resume from, while there are any; then a new Optuna trial's."""
        resume_from = None
        if trial_id in self._trials:
            trial = self._trials[trial_id]
        elif self._adopt:
            adopted = self._adopt.pop(0)
            optuna_id = self._optuna_id(adopted.number)
            # Optuna's Trial for a trial the study already holds: the public class that study.ask() returns,
            # made for the existing trial (ask-and-tell has no call that re-opens a RUNNING trial).
            trial = optuna.trial.Trial(self.study, optuna_id)
            self._reported[trial_id] = set(self._storage.get_trial(optuna_id).intermediate_values)
            resume_from = adopted.checkpoint
            if resume_from is None:  # it trains again from its first epoch: what it logged before goes
                self.curves.truncate(adopted.number, 0)
        else:
            trial = self.study.ask()
        self._trials[trial_id] = trial
        self._reported.setdefault(trial_id, set())
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("launch", self._launch)
        config = self._space(trial)  # an adopted trial's own values: Optuna returns those it drew
        if resume_from:
            config["resume_from"] = resume_from
        self.configs[trial_id] = config
        return config

    def _optuna_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def numbers(self) -> list[int]:
        """The Optuna numbers of the trials this search asked for."""
        return sorted(t.number for t in self._trials.values())

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._trials and trial_id not in self._told:
            self._observe(trial_id, result)

    def _observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep an epoch's losses for the diagnosis and report its metric to Optuna, if finite.

        Called for the last result too: Tune does not pass the searcher a result on which a scheduler
        or stopper ended the trial (ASHA's STOP at the last epoch included).
        """
        if "epoch" not in result:
            return
        if "resumed_from_epoch" in result:  # epochs after its checkpoint are trained again
            self.curves.truncate(self._trials[trial_id].number, int(result["resumed_from_epoch"]))
        for earlier in result.get("history") or ():  # a resumed trial: its curve so far, which Optuna may lack
            self._record(trial_id, earlier)
        self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch = int(result["epoch"])
        self.curves.record(self._trials[trial_id].number, result)
        value = result.get(self.metric)
        reported = self._reported[trial_id]
        if epoch not in reported and value is not None and math.isfinite(value):
            self._trials[trial_id].report(float(value), epoch)
            reported.add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._told or trial_id not in self._trials:
            return
        if error:
            # The reason arrives a moment later, through FailureReasons.on_trial_error.
            self._failed.add(trial_id)
            return
        result = result or {}
        self._observe(trial_id, result)
        epochs = int(result.get("epoch") or 0)
        value = result.get(self.metric)
        reason = result.get(STOP_REASON)
        if reason is None and epochs < self._epochs:
            by = f" by {self._scheduler}" if self._scheduler != "none" else ""
            reason = f"stopped{by} at epoch {epochs} of {self._epochs}"
        if reason is None and (value is None or not math.isfinite(value)):
            reason = f"{self.metric} was not a finite number"
        if reason is None:
            assert value is not None
            self._tell(trial_id, TrialState.COMPLETE, float(value), epochs)
        else:
            self._tell(trial_id, TrialState.PRUNED, None, epochs, stop_reason=reason)

    def tell_failure(self, trial_id: str, reason: str, epochs: int) -> None:
        """Tell Optuna that a trial raised (called by :class:`FailureReasons`)."""
        if trial_id in self._failed:
            self._failed.discard(trial_id)
            self._tell(trial_id, TrialState.FAIL, None, epochs, fail_reason=reason)

    def close(self, reason: str) -> list[int]:
        """Tell FAIL for every trial asked for and not finished (e.g. after Ctrl-C); returns their numbers."""
        left = []
        for trial_id, trial in list(self._trials.items()):
            if trial_id in self._told:
                continue
            self._failed.discard(trial_id)
            self._tell(trial_id, TrialState.FAIL, None, 0, fail_reason=reason)
            left.append(trial.number)
        return left

    def _tell(self, trial_id: str, state: TrialState, value: float | None, epochs: int, **reason: str) -> None:
        trial = self._trials[trial_id]
        trial.set_user_attr("epochs", epochs)
        for key, text in reason.items():
            trial.set_user_attr(key, text)
        label = self._diagnose(trial_id, reason.get("stop_reason"))
        if label is not None:
            trial.set_user_attr("diagnosis", label)
        try:
            frozen = self.study.tell(trial, value, state=state)
        except RuntimeError:
            # BruteForceSampler calls study.stop() once the grid is exhausted, which only works inside
            # study.optimize; the state has been stored by then.
            frozen = self._storage.get_trial(self._optuna_id(trial.number))
            if frozen.state != state:
                raise
        self._told.add(trial_id)
        self.outcomes[trial_id] = outcome_of(frozen)
        for epoch, loss in self.curves.history(trial.number).get("val_loss", ()):
            self._best_at[epoch] = min(loss, self._best_at.get(epoch, loss))

    def _diagnose(self, trial_id: str, stop_reason: str | None) -> str | None:
        """The label of a trial's training-loss curve (see :func:`tuner.pruning.diagnose`); None without one."""
        number = self._trials[trial_id].number
        loss = self.curves.values(number, "loss")
        if not loss:
            return None
        val_loss = self.curves.values(number, "val_loss")
        last = self.curves.last_epoch(number)
        best = self._best_at.get(last) if last is not None else None  # the others at this curve's last epoch
        return diagnose(loss, val_loss, stop_reason=stop_reason, best_val_loss=best)

    # Ray Tune saves a searcher beside its experiment for Tuner.restore; tuner resumes from the Optuna study
    # instead (tuner resume), so what is saved is only a note of the launch and its trials.

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"study": self.study.study_name, "launch": self._launch, "trials": self.numbers()}, f)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a launch resumes from its Optuna study: tuner resume STUDY")


class FailureReasons(tune.Callback):
    """Hands a failed trial's error to :class:`StudySearch`, which then tells Optuna FAIL with the reason.

    Tune calls the searcher before the callbacks and gives only the callbacks the trial and its error.
    """

    def __init__(self, search: StudySearch) -> None:
        self._search = search

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._search.tell_failure(trial.trial_id, error_text(trial), int(trial.last_result.get("epoch") or 0))


def error_text(trial: Trial) -> str:
    """The exception a trial raised, in one line: what a person wants to see, not Ray's wrapping.

    Read from the error files Tune has just written beside the driver (the copies in the experiment's
    storage appear only at its next sync).
    """
    import cloudpickle

    if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
        cause = getattr(error, "cause", None) or error
        text = f"{type(cause).__name__}: {cause}".strip()
        return text.splitlines()[0]
    if trial.error_file and os.path.exists(trial.error_file):
        with open(trial.error_file) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        return lines[-1] if lines else "failed"
    return "failed"
