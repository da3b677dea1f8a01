from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tuner.errors import SpecError, UsageError
from tuner.optimizers import OPTIMIZERS
from tuner.spec import Choice, Optimizer, Range, load_spec, parse_spec

from .conftest import SEARCH_SPACES, write

BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


def expected_error(path: Path) -> str:
    first = path.read_bytes().split(b"\n")[0].decode() if path.stat().st_size else ""  # the rest may not be UTF-8
    assert first.startswith("# error: "), f"{path.name} must start with '# error: <message>'"
    # {optimizers}: the registry's names, so that registering an optimizer changes no expected message
    message = first.removeprefix("# error: ").replace("{here}", str(path.parent))
    return message.replace("{optimizers}", ", ".join(OPTIMIZERS))


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.study.trials >= 1 and spec.optimizers


def test_the_bad_corpus_is_large_enough() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_message_is_exact(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: {expected_error(path)}"


def test_optimizers_yaml_keeps_each_optimizer_to_its_own_hyperparameters() -> None:
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "optimizers.yaml")
    assert [o.name for o in spec.optimizers] == ["sgd", "rmsprop", "adam"]
    assert {k for k, _ in spec.optimizer("sgd").params} == {"learning_rate", "momentum", "nesterov", "decay"}
    lr = dict(spec.optimizer("adam").params)["learning_rate"]
    assert lr == Range(low=1e-4, high=1e-1, log=True)
    assert dict(spec.searched())["units"] == Choice(choice=(64, 128))
    layers = dict(spec.searched())["layers"]
    assert layers == Range(low=1, high=2) and layers.integer


def test_values_fixed_range_and_choice(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path / "s.yaml",
            """
optimizers:
  sgd:
    learning_rate: 1e-2          # YAML 1.2 number, which PyYAML alone reads as a string
    momentum: {low: 0, high: 0.9, step: 0.1}
    nesterov: {choice: [true, false]}
model:
  units: {low: 32, high: 256, log: true}
""",
        )
    )
    params = dict(spec.optimizer("sgd").params)
    assert params["learning_rate"] == 0.01
    assert params["momentum"] == Range(low=0.0, high=0.9, step=0.1) and not params["momentum"].integer
    assert params["nesterov"] == Choice(choice=(True, False))
    assert spec.model.units == Range(low=32, high=256, log=True) and spec.model.units.integer


def test_defaults_and_name_from_file(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path / "my search.yaml", "optimizers: {adam: }\n"))
    assert spec.study.name == "my-search"
    assert (spec.study.metric, spec.study.mode, spec.study.sampler, spec.study.seed) == ("val_loss", "min", "tpe", 0)
    assert spec.data.dataset == "digits" and spec.data.task == "classification"
    assert spec.optimizer("adam").params == ()


def test_mode_follows_the_metric(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path / "s.yaml", "study: {metric: val_accuracy}\noptimizers: {adam: {}}\n"))
    assert spec.study.mode == "max"


@pytest.mark.parametrize(
    ("csv_text", "task"),
    [
        ("a,b,y\n" + "1,2,cat\n3,4,dog\n" * 5, "classification"),
        ("a,b,y\n" + "1,2,0\n3,4,1\n" * 5, "classification"),
        ("a,b,y\n" + "1,2,0.5\n3,4,1.25\n" * 5, "regression"),
    ],
)
def test_csv_task_is_inferred(tmp_path: Path, csv_text: str, task: str) -> None:
    write(tmp_path / "d.csv", csv_text)
    spec = load_spec(write(tmp_path / "s.yaml", "data: {dataset: 'csv:d.csv', target: y}\noptimizers: {adam: {}}\n"))
    assert spec.data.task == task
    assert spec.data.path == str(tmp_path / "d.csv")


def test_csv_with_text_features_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,x,1\n" + "5,6,0\n" * 10)
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path / "s.yaml", "data: {dataset: 'csv:d.csv', target: y}\noptimizers: {adam: {}}\n"))
    assert str(info.value).endswith(
        f"data.dataset: {tmp_path / 'd.csv'} line 3, column 'b': features must be finite numbers (got 'x')"
    )


def test_npz_needs_x_and_y(tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", features=np.zeros((4, 2)))
    with pytest.raises(SpecError, match=r"must hold arrays named x and y \(found: features\)"):
        load_spec(write(tmp_path / "s.yaml", "data: {dataset: 'npz:d.npz'}\noptimizers: {adam: {}}\n"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": [[0.0, 1.0]] * 12, "y": [0.0] * 5 + [float("nan")] + [1.0] * 6}, "y must hold finite numbers or labels"),
        ({"x": [[0.0, 1.0]] * 4, "y": [0, 1, 0, 1]}, "holds 4 examples; a dataset needs at least 10"),
        ({"x": [[0.0, 1.0]] * 12, "y": [3] * 12}, "a classification target needs at least 2 classes; this one has 1"),
        ({"x": [[0.0, float("inf")]] * 12, "y": [0, 1] * 6}, "x must hold finite numbers"),
    ],
    ids=["nan-target", "few-examples", "one-class", "inf-feature"],
)
def test_a_bad_npz_is_refused_at_validation(tmp_path: Path, arrays: dict[str, list[Any]], message: str) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", **{k: np.array(v) for k, v in arrays.items()})
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(write(tmp_path / "s.yaml", "data: {dataset: 'npz:d.npz'}\noptimizers: {adam: {}}\n"))


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path / "s.yaml", "optimizers: {adam: {}}\n"))
    with pytest.raises(ValidationError, match="frozen"):
        spec.study.trials = 3  # type: ignore[misc]


def test_override_applies_and_checks_the_name(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path / "s.yaml", "optimizers: {adam: {}}\n"))
    changed = spec.override(trials=3, epochs=2, seed=7, name="other", concurrency=None)
    assert (changed.study.trials, changed.training.epochs, changed.study.seed, changed.study.name) == (3, 2, 7, "other")
    assert changed.study.concurrency is None and spec.study.trials == 20
    with pytest.raises(UsageError) as info:
        spec.override(name="a b")
    assert (
        str(info.value)
        == "--name: must be letters, digits, '.', '_' or '-', starting with a letter or digit (got 'a b')"
    )


def test_override_checks_each_value_by_the_specs_own_rule(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path / "s.yaml", "optimizers: {adam: {}}\n"))
    with pytest.raises(UsageError) as info:
        spec.override(trials=0)
    assert str(info.value) == "--trials: must be at least 1 (got 0)"
    with pytest.raises(UsageError, match=r"^--epochs: must be an integer \(got 2.5\)$"):
        spec.override(epochs=2.5)


def test_unknown_keys_are_named_before_other_faults_of_the_same_mapping() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"optimizers": {"adam": {"learning_rate": {"low": 0.1, "hihg": 0.01}}}}, source="s.yaml")
    assert str(info.value) == "s.yaml: optimizers.adam.learning_rate.hihg: unknown key; did you mean 'high'?"
    with pytest.raises(SpecError) as info:
        parse_spec({"model": {"activation": {"low": 1, "hgh": 2}}, "optimizers": {"adam": {}}}, source="s.yaml")
    assert str(info.value) == "s.yaml: model.activation.hgh: unknown key; did you mean 'high'?"


def test_describe_names_the_searched_space() -> None:
    spec = parse_spec(
        {"optimizers": {"sgd": {"learning_rate": {"low": 0.01, "high": 1.0, "log": True}}}}, source="x.yaml"
    )
    assert spec.describe() == (
        "x: optimizer {sgd} + 1 hyperparameter (sgd/learning_rate [0.01, 1] log); digits (classification), "
        "20 epochs; 20 trials, tpe sampler, min val_loss"
    )


def test_missing_file() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("no/such.yaml")
    assert str(info.value) == "no/such.yaml: cannot read the file: No such file or directory"


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_to_doc_reads_back_as_the_same_spec(path: Path) -> None:
    spec = load_spec(path)
    again = parse_spec(spec.to_doc(), source=spec.source)
    assert again == spec


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_a_spec_pickles_with_the_standard_pickle(path: Path) -> None:
    """Ray ships specs and their parts to workers; a resumed launch reads one back."""
    spec = load_spec(path)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.source == spec.source


def test_fixed_at_pins_every_searched_value_to_one_trial() -> None:
    spec = load_spec(Path(__file__).parent.parent / "search_spaces" / "optimizers.yaml")
    params = {"optimizer": "sgd", "learning_rate": 0.3, "momentum": 0.5, "nesterov": True, "decay": 0.0, "layers": 2}
    best = spec.fixed_at({**params, "units": 64})
    assert best.searched() == []
    hyper = ("learning_rate", "momentum", "nesterov", "decay")
    assert best.optimizers == (Optimizer("sgd", tuple((k, params[k]) for k in hyper)),)
    assert (best.model.layers, best.model.units, best.study.name, best.study.trials) == (
        2,
        64,
        "optimizers-digits-best",
        1,
    )


def test_settings_are_the_fixed_values_only() -> None:
    spec = parse_spec(
        {
            "study": {"name": "s"},
            "model": {"units": {"choice": [8, 16]}, "activation": "tanh"},
            "optimizers": {"adam": {"epsilon": 1e-6, "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
        }
    )
    settings = spec.settings()
    assert settings["model.activation"] == "tanh" and settings["optimizers.adam.epsilon"] == 1e-6
    assert "model.units" not in settings and "optimizers.adam.learning_rate" not in settings
    assert settings["training.epochs"] == 20 and settings["study.sampler"] == "tpe"
