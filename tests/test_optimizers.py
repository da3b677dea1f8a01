"""The optimizer registry is the one definition: its defaults are Keras' own, every entry trains in the engine
as under Keras' fit (tests/test_model.py), its bounds are what the spec enforces, and the README shows it."""

from __future__ import annotations

import inspect
import re

import pytest

from tuner.errors import SpecError
from tuner.optimizers import OPTIMIZERS, table
from tuner.spec import parse_spec

from .conftest import ROOT


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_names_its_keras_class_and_keras_defaults(name: str) -> None:
    from tuner import model

    signature = inspect.signature(model.keras_class(name)).parameters
    entry = OPTIMIZERS[name]
    assert model.keras_class(name).__name__ == entry.keras_class
    for h in entry.hyperparameters:
        if h.name == "decay":  # classic Keras' decay, which tuner applies itself (0 is off)
            assert h.default == 0.0
            continue
        assert signature[h.name].default == h.default, h.name
    assert model.build_optimizer(name, {}).get_config()["learning_rate"] == pytest.approx(
        entry.hyperparameter("learning_rate").default
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_spec_enforces_each_bound_the_registry_gives(name: str) -> None:
    for h in OPTIMIZERS[name].hyperparameters:
        if h.is_flag:
            with pytest.raises(SpecError, match=rf"optimizers\.{name}\.{h.name}: must be true or false"):
                parse_spec({"optimizers": {name: {h.name: 1.5}}})
            continue
        parse_spec({"optimizers": {name: {h.name: h.default}}})  # Keras' default is always allowed
        assert h.bounds is not None and h.bounds.low is not None
        outside = h.bounds.low if h.bounds.low_open else h.bounds.low - 1.0
        with pytest.raises(SpecError, match=re.escape(f"optimizers.{name}.{h.name}: must be {h.bounds.rule()}")):
            parse_spec({"optimizers": {name: {h.name: outside}}})


def test_the_readme_table_is_the_registry() -> None:
    assert table() in (ROOT / "README.md").read_text(), (
        "the README's optimizer table is not the registry's: replace it with the output of "
        "python -c 'from tuner.optimizers import table; print(table())'"
    )
