"""The samplers and schedulers a spec can name: one registry per family, each entry defined here once.

A spec's validation takes the names from here, :func:`tuner.search.make_sampler` and
:func:`tuner.pruning.make_scheduler` build from here, and ``tests/test_plugins.py`` checks the README lists
exactly these. Each factory imports its library when called, so that validating a spec loads neither Optuna
nor Ray. To add one: an entry here, and the contract tests (parametrised over every entry) cover it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.errors import TunerError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler
    from ray.tune.schedulers import TrialScheduler


__all__ = ["SAMPLERS", "SCHEDULERS", "Sampler", "Scheduler"]


@dataclass(frozen=True)
class Sampler:
    """An Optuna sampler by the name a spec uses: ``build(seed)`` makes it, seeded."""

    name: str
    summary: str
    build: Callable[[int], BaseSampler]


@dataclass(frozen=True)
class Scheduler:
    """A Ray Tune scheduler by the name a spec uses, deciding by epochs (the ``epoch`` result):
    ``build(metric, mode, epochs, grace_epochs, reduction_factor)`` makes it; ``None`` for no scheduler."""

    name: str
    summary: str
    build: Callable[[str, str, int, int, float], TrialScheduler | None]


def _optuna_samplers() -> Any:
    import optuna

    return optuna.samplers


def _tpe(seed: int) -> BaseSampler:
    # group=True: TPE models each optimizer's parameters apart, as the space is conditional.
    # constant_liar (Optuna 5's default, said here as tuner relies on it): trials still running count as bad
    # results, so that trials started at once do not all land on the same promising spot.
    return _optuna_samplers().TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def _gp(seed: int) -> BaseSampler:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TunerError(
            "the gp sampler needs PyTorch (Optuna's GPSampler runs on it): pip install 'tuner[gp]'"
        ) from None
    return _optuna_samplers().GPSampler(seed=seed)


#: Every sampler a spec can name (``study.sampler``).
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("tpe", "Optuna's TPESampler, multivariate, grouped by optimizer", _tpe),
        Sampler("random", "Optuna's RandomSampler", lambda seed: _optuna_samplers().RandomSampler(seed=seed)),
        # GridSampler needs one flat grid over every optimizer's parameters at once; BruteForceSampler walks
        # define-by-run (conditional) spaces exhaustively.
        Sampler(
            "grid",
            "every configuration once (BruteForceSampler)",
            lambda seed: _optuna_samplers().BruteForceSampler(seed=seed),
        ),
        Sampler(
            "cmaes",
            "Optuna's CmaEsSampler",
            lambda seed: _optuna_samplers().CmaEsSampler(seed=seed, warn_independent_sampling=False),
        ),
        Sampler("gp", "Optuna's GPSampler (needs PyTorch: tuner[gp])", _gp),
        Sampler(
            "qmc",
            "Optuna's QMCSampler",
            lambda seed: _optuna_samplers().QMCSampler(seed=seed, warn_independent_sampling=False),
        ),
    )
}


def _async_hyperband(brackets: int) -> Callable[..., TrialScheduler]:
    """ASHA with up to ``brackets`` brackets, as many as the epochs allow (one without enough epochs)."""

    def build(metric: str, mode: str, epochs: int, grace: int, factor: float) -> TrialScheduler:
        from ray.tune.schedulers import AsyncHyperBandScheduler

        grace = min(grace, epochs)
        fit = int(math.log(max(epochs / grace, 1.0), factor)) + 1
        return AsyncHyperBandScheduler(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            max_t=epochs,
            grace_period=grace,
            reduction_factor=factor,
            brackets=max(1, min(brackets, fit)),
        )

    return build


def _median(metric: str, mode: str, epochs: int, grace: int, factor: float) -> TrialScheduler:
    from ray.tune.schedulers import MedianStoppingRule

    grace = min(grace, epochs)
    return MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode, grace_period=grace, min_samples_required=3)


#: Every scheduler a spec can name (``pruning.scheduler``).
SCHEDULERS: dict[str, Scheduler] = {
    s.name: s
    for s in (
        Scheduler("asha", "Ray Tune's ASHA (AsyncHyperBandScheduler, one bracket)", _async_hyperband(1)),
        # The synchronous HyperBandScheduler pauses trials to resume them later, which buys nothing with a
        # searcher that learns from every finished trial and costs a checkpoint round-trip per pause.
        Scheduler("hyperband", "AsyncHyperBandScheduler with up to 3 brackets", _async_hyperband(3)),
        Scheduler("median", "Ray Tune's MedianStoppingRule", _median),
        Scheduler("none", "no scheduler: every trial trains every epoch", lambda *settings: None),
    )
}
