"""The trainer itself, in-process with real TensorFlow."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from tuner import engine, model
from tuner.data import Dataset, load_dataset
from tuner.optimizers import OPTIMIZERS, Bounds, Hyperparameter, OptimizerType
from tuner.spec import parse_spec

keras = model.keras


@pytest.fixture(scope="module")
def iris() -> Dataset:
    return load_dataset(parse_spec({"data": {"dataset": "iris"}, "optimizers": {"adam": {}}}).data, seed=0)


def config(**changes: Any) -> dict[str, Any]:
    base = {"optimizer": "adam", "adam": {"learning_rate": 0.01}, "layers": 1, "units": 16, "activation": "relu"}
    return {**base, "dropout": 0.0, "batch_size": 16, "epochs": 3, "seed": 7, **changes}


def train(data: Dataset, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    engine.train(data, cfg, lambda metrics, net: reports.append(metrics))
    return reports


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("sgd", {}, {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
        ("rmsprop", {"rho": 0.8}, {"learning_rate": 0.001, "rho": 0.8, "epsilon": 1e-7}),
        ("adam", {"amsgrad": True}, {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "amsgrad": True}),
    ],
)
def test_unset_hyperparameters_keep_keras_defaults(name: str, params: dict, expected: dict) -> None:
    optimizer = model.build_optimizer(name, params)
    got = optimizer.get_config()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_decay_is_the_classic_keras_decay(name: str) -> None:
    """lr_t = lr / (1 + decay * t), t the number of updates so far."""
    optimizer = model.build_optimizer(name, {"learning_rate": 0.1, "decay": 0.5})
    var = keras.Variable(1.0)
    rates = []
    for _ in range(4):
        rates.append(model.current_learning_rate(optimizer))
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(1.0), var)])
    assert rates == pytest.approx([0.1 / (1 + 0.5 * t) for t in range(4)])


def test_sgd_steps_by_the_decayed_rate() -> None:
    optimizer = model.build_optimizer("sgd", {"learning_rate": 0.1, "decay": 1.0})
    var = keras.Variable(0.0)
    for _ in range(3):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(1.0), var)])
    assert float(var.numpy()) == pytest.approx(-(0.1 + 0.1 / 2 + 0.1 / 3))


def test_training_reports_every_epoch(iris: Dataset) -> None:
    reports = train(iris, config(epochs=3))
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert set(reports[0]) == {"epoch", "loss", "val_loss", "accuracy", "val_accuracy", "lr"}
    assert reports[-1]["loss"] < reports[0]["loss"]
    assert all(math.isfinite(r["val_loss"]) for r in reports)


def test_the_seed_fixes_the_result(iris: Dataset) -> None:
    a, b, c = train(iris, config()), train(iris, config()), train(iris, config(seed=8))
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    assert [r["val_loss"] for r in a] != [r["val_loss"] for r in c]


def test_regression_reports_mae() -> None:
    data = load_dataset(parse_spec({"data": {"dataset": "diabetes"}, "optimizers": {"adam": {}}}).data, seed=0)
    reports = train(data, config(epochs=1))
    assert {"mae", "val_mae"} <= set(reports[0]) and "accuracy" not in reports[0]


def test_a_diverging_loss_stops_training_and_reports_no_nan(iris: Dataset) -> None:
    reports = train(iris, config(optimizer="sgd", sgd={"learning_rate": 1e6}, epochs=5))
    assert len(reports) == 1
    last = reports[-1]
    assert last["stop_reason"].startswith("diverged: loss=") and last["stop_reason"].endswith("at epoch 1")
    numbers = [v for v in last.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)
    assert last["loss"] is None


def test_a_non_finite_loss_stops_the_epoch_at_that_batch(iris: Dataset) -> None:
    """The rest of the epoch would be NaN too: the engine stops at the batch whose loss is not finite."""
    compiled = engine.Engine(engine.Shape.of(iris, config()))
    compiled.reset("sgd", {"learning_rate": 1e6}, seed=7)
    x, y = model.tf.constant(iris.x_train), model.tf.constant(iris.y_train)
    loss, _, first, seen = compiled.train_epoch(x, y, np.arange(len(iris.x_train)), 8)
    assert math.isfinite(first) and not math.isfinite(loss)
    assert 8 <= seen < len(iris.x_train)  # some batches, not all


def test_layers_units_and_dropout_shape_the_model() -> None:
    net = model.build_model(4, 3, layers=2, units=8, activation="tanh", dropout=0.5)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert net.output_shape == (None, 3)
    assert np.isclose(net.predict(np.zeros((2, 4), np.float32), verbose=0).sum(axis=1), 1).all()


EQUIVALENT = [
    ("sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True, "decay": 1e-3}),
    ("sgd", {"learning_rate": 0.1}),
    ("rmsprop", {"learning_rate": 0.003, "rho": 0.85, "momentum": 0.5, "decay": 1e-3}),
    ("rmsprop", {"learning_rate": 0.001}),
    ("adam", {"learning_rate": 0.003, "beta_1": 0.85, "beta_2": 0.99, "decay": 1e-3}),
    ("adam", {"learning_rate": 0.003, "amsgrad": True}),
    ("adam", {}),  # Keras' defaults; 1 - 0.999 in float32 would already drift from Keras
]


def test_the_equivalence_cases_cover_every_registered_optimizer() -> None:
    assert {name for name, _ in EQUIVALENT} == set(OPTIMIZERS)


@pytest.mark.parametrize(("name", "params"), EQUIVALENT, ids=[f"{n}-{sorted(p)}" for n, p in EQUIVALENT])
def test_the_engine_trains_exactly_as_keras_fit(name: str, params: dict[str, Any]) -> None:
    assert_trains_as_keras_fit(name, params)


def test_the_engine_trains_regression_exactly_as_keras_fit() -> None:
    """A linear output and mean squared error, as Keras' fit trains them, with another activation."""
    assert_trains_as_keras_fit("adam", {"learning_rate": 0.01}, dataset="diabetes", activation="tanh")


def test_the_engine_trains_with_dropout_exactly_as_keras_fit() -> None:
    """Dropout is random, but seeded, so the equivalence can be exact rather than statistical: each Dropout
    layer draws its masks from its own Keras SeedGenerator, whose state ``Engine.reset`` sets from the trial's
    seed. A Keras network whose generators start from those states draws the same masks under ``fit``, batch by
    batch, so the losses and weights agree as they do without dropout.

    And dropout is really there: reset to the same seed, the engine draws the same masks again (the same
    losses), while the same weights and batches without dropout give other losses; evaluation applies none
    (it is deterministic, and what Keras' ``evaluate`` gives)."""
    params = {"learning_rate": 0.003}
    ours, compiled, net, data = assert_trains_as_keras_fit("adam", params, dropout=0.3)
    x, y = model.tf.constant(data.x_train), model.tf.constant(data.y_train)
    x_val, y_val = model.tf.constant(data.x_val), model.tf.constant(data.y_val)
    evaluated = compiled.evaluate(x_val, y_val)
    assert compiled.evaluate(x_val, y_val) == evaluated
    assert net.evaluate(data.x_val, data.y_val, batch_size=4096, verbose=0) == pytest.approx(evaluated[0], rel=1e-5)

    compiled.reset("adam", params, seed=3)
    plain = engine.Engine(dataclasses.replace(compiled.shape, dropout=0.0))
    plain.reset("adam", params, seed=3)
    plain.net.set_weights(compiled.net.get_weights())
    again = [compiled.train_epoch(x, y, order, 64)[0] for order in batch_orders(len(data.x_train))]
    without = [plain.train_epoch(x, y, order, 64)[0] for order in batch_orders(len(data.x_train))]
    assert again == ours
    assert all(abs(a - b) > 1e-3 * b for a, b in zip(ours, without, strict=True)), (ours, without)


def batch_orders(n: int) -> list[np.ndarray]:
    """The order of the examples in each of three epochs, the same for every run that asks."""
    rng = np.random.default_rng(0)
    return [rng.permutation(n) for _ in range(3)]


def assert_trains_as_keras_fit(
    name: str, params: dict[str, Any], *, dataset: str = "digits", activation: str = "relu", dropout: float = 0.0
) -> tuple[list[float], engine.Engine, Any, Dataset]:
    """Same initial weights, same dropout seeds, same batch order: tuner's engine and Keras' own optimizer under
    model.fit agree on the loss of every epoch and on the weights after three. Returns the engine's losses, the
    engine, the Keras network and the data."""
    data = load_dataset(parse_spec({"data": {"dataset": dataset}, "optimizers": {"adam": {}}}).data, seed=0)
    outputs = data.n_classes if data.task == "classification" else 1
    shape = engine.Shape(data.n_features, outputs, layers=2, units=32, activation=activation, dropout=dropout)
    compiled = engine.Engine(shape)
    compiled.reset(name, params, seed=3)
    net = model.build_model(data.n_features, outputs, layers=2, units=32, activation=activation, dropout=dropout)
    net.set_weights([w.numpy() for w in compiled.net.weights])
    seeded = [layer.seed_generator.state for layer in net.layers if isinstance(layer, keras.layers.Dropout)]
    states = [layer.seed_generator.state for layer in compiled.net.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(seeded) == len(states) == (2 if dropout > 0 else 0)
    for theirs, mine in zip(seeded, states, strict=True):
        theirs.assign(mine.value)
    loss = "sparse_categorical_crossentropy" if data.task == "classification" else "mse"
    net.compile(optimizer=model.build_optimizer(name, params), loss=loss)
    orders = batch_orders(len(data.x_train))
    x, y = model.tf.constant(data.x_train), model.tf.constant(data.y_train)
    ours = [compiled.train_epoch(x, y, order, 64)[0] for order in orders]
    theirs = [
        net.fit(data.x_train[o], data.y_train[o], batch_size=64, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        for o in orders
    ]
    assert ours == pytest.approx(theirs, rel=1e-4)
    for mine, keras_weight in zip(compiled.net.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_allclose(mine, keras_weight, rtol=1e-5, atol=1e-7)
    return ours, compiled, net, data


def test_trials_of_one_architecture_share_one_trace(iris: Dataset) -> None:
    """The engine's epoch is traced once per architecture: new optimizers, hyperparameters and batch
    sizes are values, not new graphs."""
    base = config(layers=1, units=12)
    reports: list[dict[str, Any]] = []
    for cfg in (
        base,
        config(layers=1, units=12, optimizer="sgd", sgd={"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
        config(layers=1, units=12, optimizer="rmsprop", rmsprop={"rho": 0.8}, batch_size=7),
        config(layers=1, units=12, adam={"amsgrad": True, "decay": 0.01}, seed=11),
    ):
        engine.train(iris, cfg, lambda metrics, snapshot: reports.append(metrics))
    compiled = engine.engine_for(engine.Shape.of(iris, base))
    assert compiled._train.experimental_get_tracing_count() == 1
    assert len(reports) == 4 * 3


def test_a_resumed_trial_continues_exactly_where_its_checkpoint_left(iris: Dataset, tmp_path: Any) -> None:
    cfg = config(epochs=6, optimizer="sgd", sgd={"learning_rate": 0.1, "momentum": 0.9, "decay": 0.01}, batch_size=8)
    assert_resumes_exactly(iris, tmp_path, cfg)


def assert_resumes_exactly(iris: Dataset, tmp_path: Any, cfg: dict[str, Any]) -> None:
    """Six epochs straight, or three, a checkpoint, and three more from it: the same numbers."""
    straight = train(iris, cfg)

    def stop_after_three(metrics: dict[str, Any], snapshot: Any) -> None:
        if metrics["epoch"] == 3:
            snapshot.write(tmp_path)
            raise KeyboardInterrupt  # the worker dies after its third epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        engine.train(iris, cfg, stop_after_three)
    engine.train(iris, config(seed=99), lambda m, s: None)  # the engine serves another trial meanwhile
    resumed: list[dict[str, Any]] = []
    engine.train(iris, cfg, lambda metrics, snapshot: resumed.append(metrics), resume=tmp_path)
    assert [r["epoch"] for r in resumed] == [4, 5, 6] and resumed[0]["resumed_from_epoch"] == 3
    for before, after in zip(straight[3:], resumed, strict=True):
        assert after["loss"] == before["loss"] and after["val_loss"] == before["val_loss"]
        assert after["lr"] == pytest.approx(before["lr"], rel=1e-7)


def test_an_optimizer_without_an_engine_rule_trains_through_its_keras_optimizer(
    iris: Dataset, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding an optimizer takes one registry entry: Adagrad, registered for this test only, has no update rule
    in the engine, and still trains exactly as under Keras' fit, decay included, and resumes bit for bit."""
    positive = Bounds(0.0, low_open=True)
    adagrad = OptimizerType(
        "adagrad",
        "Adagrad",
        (
            Hyperparameter("learning_rate", 0.001, positive),
            Hyperparameter("initial_accumulator_value", 0.1, Bounds(0.0)),
            Hyperparameter("epsilon", 1e-7, positive),
            Hyperparameter("decay", 0.0, Bounds(0.0)),
        ),
        marker="D",
    )
    monkeypatch.setitem(OPTIMIZERS, "adagrad", adagrad)
    assert "adagrad" not in engine.COMPILED
    assert_trains_as_keras_fit("adagrad", {"learning_rate": 0.05, "initial_accumulator_value": 0.2, "decay": 1e-3})
    cfg = config(epochs=6, optimizer="adagrad", adagrad={"learning_rate": 0.1, "decay": 0.01}, batch_size=8)
    assert_resumes_exactly(iris, tmp_path, cfg)
    reports = train(iris, config(optimizer="adagrad", adagrad={"learning_rate": 0.1}))
    assert reports[-1]["loss"] < reports[0]["loss"] and reports[0]["lr"] == pytest.approx(0.1)
