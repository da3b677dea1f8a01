"""The sampler, scheduler and dataset registries: every entry builds, and the README lists exactly them."""

from __future__ import annotations

import re

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

from tuner.data import DATASETS
from tuner.plugins import SAMPLERS, SCHEDULERS
from tuner.pruning import FiniteOnly, make_scheduler
from tuner.spec import parse_spec

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def listed(key: str) -> list[str]:
    """The names the README's annotated spec lists for ``key`` (``sampler: tpe  # tpe | random | ...``)."""
    match = re.search(rf"^\s+{key}: \S+\s+# (.+)$", README, re.MULTILINE)
    assert match, key
    return [name.strip() for name in match.group(1).split("|")]


def test_the_readme_lists_every_sampler_scheduler_and_dataset() -> None:
    assert listed("sampler") == list(SAMPLERS)
    assert listed("scheduler") == list(SCHEDULERS)
    assert listed("dataset") == [*DATASETS, "csv:PATH", "npz:PATH"]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_a_spec_names_decides_by_epochs(name: str) -> None:
    spec = parse_spec({"pruning": {"scheduler": name, "grace_epochs": 2}, "optimizers": {"adam": {}}})
    scheduler = make_scheduler(spec.pruning, metric="val_loss", mode="min", epochs=20)
    if name == "none":
        assert type(scheduler) is FIFOScheduler
        return
    assert isinstance(scheduler, FiniteOnly) and scheduler.metric == "val_loss"
    inner = scheduler.inner
    assert isinstance(inner, {"median": MedianStoppingRule}.get(name, AsyncHyperBandScheduler))


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_a_spec_names_has_its_task(name: str) -> None:
    assert parse_spec({"data": {"dataset": name}, "optimizers": {"adam": {}}}).data.task == DATASETS[name].task


def test_an_unknown_name_lists_the_registry() -> None:
    from tuner.errors import SpecError

    with pytest.raises(SpecError, match=r"study.sampler: must be one of tpe, random, grid, cmaes, gp, qmc"):
        parse_spec({"study": {"sampler": "tp"}, "optimizers": {"adam": {}}})
