"""The training engine: a compiled epoch loop per network shape, reused across trials on a worker, and the
checkpoints a trial resumes from bit for bit.

Like :mod:`tuner.model`, whose TensorFlow it uses, it runs on the workers only.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.model import (
    build_model,
    build_optimizer,
    current_learning_rate,
    hyperparameters,
    keras,
    tf,
)
from tuner.optimizers import OPTIMIZERS
from tuner.pruning import Divergence

if TYPE_CHECKING:
    from tuner.data import Dataset

__all__ = [
    "COMPILED",
    "PROGRESS_FILE",
    "STATE_FILE",
    "Engine",
    "Report",
    "Shape",
    "Snapshot",
    "engine_for",
    "export",
    "tensors",
    "train",
]

# Keras' fit costs a trace of the training step per model and optimizer, about half a second, which is most
# of a small trial. The engine compiles one whole epoch (a tf.while_loop over in-memory batches) once per
# architecture on a worker and holds everything else in variables: the optimizer type (a tf.switch_case),
# its flags and its hyperparameters. A new trial assigns values and re-initialises the weights.
#
# The update rules are Keras 3's own (SGD, RMSprop, Adam in keras/src/optimizers), written against those
# variables, with the classic decay lr_t = lr / (1 + decay * t). Where Keras skips work (no momentum slot
# when momentum is 0, no v_hat without amsgrad) the engine computes it with a zero or leaves it unused,
# which gives the same numbers. tests/test_model.py checks every optimizer against Keras' own under fit.
#
# An optimizer registered without such a rule (a method ``_<name>`` below) still trains here: through its
# Keras optimizer, in an epoch traced for that trial. That costs the trace the rules save, and nothing else.


@dataclass(frozen=True)
class Shape:
    """What a compiled graph depends on: the architecture. Everything else about a trial is a variable."""

    n_features: int
    n_outputs: int
    layers: int
    units: int
    activation: str
    dropout: float

    @classmethod
    def of(cls, data: Dataset, config: Mapping[str, Any]) -> Shape:
        return cls(
            data.n_features,
            data.n_classes if data.task == "classification" else 1,
            int(config["layers"]),
            int(config["units"]),
            str(config["activation"]),
            float(config["dropout"]),
        )


#: The numeric hyperparameters of every registered optimizer: a variable each in the compiled graph.
_HYPER = tuple(dict.fromkeys(h.name for o in OPTIMIZERS.values() for h in o.hyperparameters if not h.is_flag))
_COMPLEMENTS = ("rho", "beta_1", "beta_2")


class Engine:
    """A compiled MLP and optimizer for one architecture, reused by every trial of that shape on a worker."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.net = build_model(
            shape.n_features,
            shape.n_outputs,
            layers=shape.layers,
            units=shape.units,
            activation=shape.activation,
            dropout=shape.dropout,
        )
        self.weights = list(self.net.trainable_variables)
        names = (*_HYPER, *(f"1-{k}" for k in _COMPLEMENTS))
        self.hyper = {k: tf.Variable(0.0, trainable=False, name=k.replace("-", "_minus_")) for k in names}
        self.optimizer = tf.Variable(0, dtype=tf.int32, trainable=False, name="optimizer")
        self.nesterov = tf.Variable(False, trainable=False, name="nesterov")
        self.amsgrad = tf.Variable(False, trainable=False, name="amsgrad")
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        # "m": SGD's and RMSprop's momentum, Adam's first moment; "v": RMSprop's velocity, Adam's second.
        self.slots = {n: [tf.Variable(tf.zeros_like(w), trainable=False) for w in self.weights] for n in "mvh"}
        self.classify = shape.n_outputs > 1
        loss = keras.losses.SparseCategoricalCrossentropy if self.classify else keras.losses.MeanSquaredError
        self.loss_fn = loss()
        self._compiled = tf.function(self._train_epoch, reduce_retracing=True)
        self._train = self._compiled
        self._keras: keras.optimizers.Optimizer | None = None  # a trial of an optimizer without a rule here
        self._eval = tf.function(self._evaluate, reduce_retracing=True)
        self._compiled_sweep = tf.function(self._sweep_rates, reduce_retracing=True)
        self._sweep = self._compiled_sweep

    # -- a new trial

    def reset(self, name: str, params: Mapping[str, Any], seed: int) -> None:
        """Give this engine a new trial: its optimizer and hyperparameters, fresh seeded weights, empty
        optimizer state."""
        self._trial = (name, dict(params))
        values = hyperparameters(name, params)
        # Keras computes 1 - beta (and 1 - rho) in Python's double precision before casting to float32;
        # so does the engine, which is what keeps it within rounding of Keras (1 - 0.999 differs otherwise).
        values.update({f"1-{k}": 1.0 - float(values.get(k) or 0.0) for k in _COMPLEMENTS})
        for key, var in self.hyper.items():
            var.assign(float(values.get(key) or 0.0))
        if name in COMPILED:
            self.optimizer.assign(COMPILED.index(name))
            self._keras, self._train, self._sweep = None, self._compiled, self._compiled_sweep
        else:  # traced for this trial's Keras optimizer, which the graphs capture
            self._keras = build_optimizer(name, params)
            self._keras.build(self.weights)
            self._train = tf.function(self._train_epoch, reduce_retracing=True)
            self._sweep = tf.function(self._sweep_rates, reduce_retracing=True)
        self.nesterov.assign(bool(values.get("nesterov", False)))
        self.amsgrad.assign(bool(values.get("amsgrad", False)))
        self.iterations.assign(0)
        for slot in self.slots.values():
            for var in slot:
                var.assign(tf.zeros_like(var))
        rng = np.random.default_rng(seed)
        for layer in self.net.layers:
            if isinstance(layer, keras.layers.Dense):
                init = keras.initializers.GlorotUniform(seed=int(rng.integers(2**31)))
                layer.kernel.assign(init(layer.kernel.shape))
                layer.bias.assign(tf.zeros_like(layer.bias))
            elif isinstance(layer, keras.layers.Dropout):
                layer.seed_generator.state.assign(tf.constant([int(rng.integers(2**31)), 0], dtype="uint32"))

    def learning_rate(self) -> float:
        """The learning rate the next update uses, decay applied."""
        if self._keras is not None:
            return current_learning_rate(self._keras)
        return float(self._lr().numpy())

    def state(self) -> dict[str, np.ndarray]:
        """The weights and the optimizer's state, as arrays: what a checkpoint holds."""
        arrays = {f"w{i}": w for i, w in enumerate(self.net.get_weights())}
        for name, slot in self._slots().items():
            arrays.update({f"{name}{i}": np.asarray(var.numpy()) for i, var in enumerate(slot)})
        arrays["iterations"] = np.array(self.iterations.numpy())
        return arrays

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Set what :meth:`state` gave, into an engine reset for the same trial."""
        self.net.set_weights([arrays[f"w{i}"] for i in range(len(self.net.weights))])
        for name, slot in self._slots().items():
            for i, var in enumerate(slot):
                var.assign(arrays[f"{name}{i}"])
        self.iterations.assign(int(arrays["iterations"]))

    def _slots(self) -> dict[str, list[Any]]:
        return dict(self.slots) if self._keras is None else {"k": list(self._keras.variables)}

    # -- compiled work

    def _lr(self) -> tf.Tensor:
        t = tf.cast(self.iterations, tf.float32)
        return self.hyper["learning_rate"] / (1.0 + self.hyper["decay"] * t)

    def _sgd(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        momentum = self.hyper["momentum"]
        for g, w, m in zip(grads, self.weights, self.slots["m"], strict=True):
            m.assign(m * momentum - g * lr)
            w.assign_add(tf.where(self.nesterov, m * momentum - g * lr, m))

    def _rmsprop(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        h = self.hyper
        for g, w, m, velocity in zip(grads, self.weights, self.slots["m"], self.slots["v"], strict=True):
            velocity.assign(h["rho"] * velocity + h["1-rho"] * tf.square(g))
            m.assign(h["momentum"] * m + lr * g / tf.sqrt(velocity + h["epsilon"]))
            w.assign_sub(m)

    def _adam(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        h = self.hyper
        step = tf.cast(self.iterations + 1, tf.float32)
        alpha = lr * tf.sqrt(1 - tf.pow(h["beta_2"], step)) / (1 - tf.pow(h["beta_1"], step))
        for g, w, m, v, v_hat in zip(grads, self.weights, *(self.slots[n] for n in "mvh"), strict=True):
            m.assign_add((g - m) * h["1-beta_1"])
            v.assign_add((tf.square(g) - v) * h["1-beta_2"])
            v_hat.assign(tf.maximum(v_hat, v))
            w.assign_sub((m * alpha) / (tf.sqrt(tf.where(self.amsgrad, v_hat, v)) + h["epsilon"]))

    def _apply(self, grads: list[tf.Tensor]) -> None:
        if self._keras is not None:  # decided as the epoch is traced: this trial's own trace
            self._keras.apply_gradients(zip(grads, self.weights, strict=True))
        else:
            lr = self._lr()
            rules = [getattr(self, f"_{name}") for name in COMPILED]  # each optimizer's update rule, by name
            branches = [lambda rule=rule: rule(grads, lr) for rule in rules]
            tf.switch_case(self.optimizer.read_value(), branches)
        self.iterations.assign_add(1)

    def _metric(self, y: tf.Tensor, pred: tf.Tensor) -> tf.Tensor:
        """Sum over the batch of accuracy (classification) or absolute error (regression)."""
        if self.classify:
            hits = tf.equal(tf.argmax(pred, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))
            return tf.reduce_sum(tf.cast(hits, tf.float32))
        return tf.reduce_sum(tf.abs(tf.cast(y, tf.float32) - pred[:, 0]))

    def _train_epoch(self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
        n = tf.shape(order)[0]
        loss_sum = tf.constant(0.0)
        metric_sum = tf.constant(0.0)
        seen = tf.constant(0.0)
        first = tf.constant(float("nan"))
        for step in tf.range((n + batch - 1) // batch):
            index = order[step * batch : tf.minimum((step + 1) * batch, n)]
            xb, yb = tf.gather(x, index), tf.gather(y, index)
            with tf.GradientTape() as tape:
                pred = self.net(xb, training=True)
                loss = self.loss_fn(yb, pred)
            self._apply(tape.gradient(loss, self.weights))
            size = tf.cast(tf.shape(index)[0], tf.float32)
            loss_sum += loss * size
            metric_sum += self._metric(yb, pred)
            seen += size
            first = tf.where(step == 0, loss, first)
            if not tf.math.is_finite(loss):  # stop inside the epoch: the rest of it would be NaN too
                break
        return loss_sum / seen, metric_sum / seen, first, seen

    def _evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        n = tf.shape(x)[0]
        loss_sum = tf.constant(0.0)
        metric_sum = tf.constant(0.0)
        for start in tf.range(0, n, _EVAL_BATCH):
            xb, yb = x[start : start + _EVAL_BATCH], y[start : start + _EVAL_BATCH]
            pred = self.net(xb, training=False)
            size = tf.cast(tf.shape(xb)[0], tf.float32)
            loss_sum += self.loss_fn(yb, pred) * size
            metric_sum += self._metric(yb, pred)
        count = tf.cast(n, tf.float32)
        return loss_sum / count, metric_sum / count

    def _sweep_rates(
        self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch: tf.Tensor, rates: tf.Tensor, limit: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        steps = tf.shape(rates)[0]
        losses = tf.TensorArray(tf.float32, size=steps)
        average = tf.constant(0.0)
        lowest = tf.constant(float("inf"))
        done = tf.constant(0)
        for step in tf.range(steps):
            index = order[step * batch : (step + 1) * batch]
            xb, yb = tf.gather(x, index), tf.gather(y, index)
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yb, self.net(xb, training=True))
            losses = losses.write(step, loss)
            done = step + 1
            if not tf.math.is_finite(loss):
                break
            # An average of the recent losses, debiased as Adam's moments are, stops the sweep once the loss
            # has blown up: a single bad batch does not.
            average = _SWEEP_BETA * average + (1.0 - _SWEEP_BETA) * loss
            smoothed = average / (1.0 - tf.pow(_SWEEP_BETA, tf.cast(step + 1, tf.float32)))
            lowest = tf.minimum(lowest, smoothed)
            if smoothed > limit * lowest:
                break
            self.hyper["learning_rate"].assign(rates[step])
            if self._keras is not None:
                self._keras.learning_rate.assign(rates[step])
            self._apply(tape.gradient(loss, self.weights))
        return losses.stack(), done

    def sweep(
        self, x: tf.Tensor, y: tf.Tensor, order: np.ndarray, batch_size: int, rates: np.ndarray, limit: float
    ) -> np.ndarray:
        """The learning-rate range test: one step per batch of ``x[order]``, the ``i``-th at ``rates[i]``.
        Returns the loss each batch measured before its step (so the ``i``-th loss is the result of the steps
        at ``rates[:i]``), up to a non-finite loss or one whose recent average passes ``limit`` times its
        lowest."""
        rates32 = tf.constant(rates, tf.float32)
        losses, done = self._sweep(
            x, y, tf.constant(order, tf.int32), tf.constant(batch_size, tf.int32), rates32, limit
        )
        return np.asarray(losses.numpy()[: int(done)], dtype=float)

    # -- an epoch, from Python

    def train_epoch(
        self, x: tf.Tensor, y: tf.Tensor, order: np.ndarray, batch_size: int
    ) -> tuple[float, float, float, int]:
        """Train one epoch over ``x[order]``; returns the mean loss and metric, the first batch's loss and how
        many examples it trained on (fewer than ``len(order)`` when a non-finite loss stopped it)."""
        loss, metric, first, seen = self._train(x, y, tf.constant(order, tf.int32), tf.constant(batch_size, tf.int32))
        return float(loss), float(metric), float(first), int(seen)

    def evaluate(self, x: tf.Tensor, y: tf.Tensor) -> tuple[float, float]:
        loss, metric = self._eval(x, y)
        return float(loss), float(metric)

    # -- checkpoints

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trained network as a Keras ``.keras`` file (a few milliseconds for an MLP), compiled with
        the trial's optimizer (its settings, with fresh state), loss and metric, so that
        ``keras.models.load_model`` gives a model that evaluates as the trial did and trains on."""
        name, params = self._trial
        metric = "accuracy" if self.classify else "mae"
        optimizer = build_optimizer(name, params)
        optimizer.build(self.net.trainable_variables)  # saved whole, so that loading it finds every variable
        self.net.compile(optimizer=optimizer, loss=self.loss_fn, metrics=[metric])
        self.net.save(path)


def export(net: keras.Model, data: Dataset, path: str | os.PathLike[str]) -> None:
    """Write a trained network as an MLflow Model at ``path`` that works on rows as the data has them.

    The network: standardisation inside (a ``Normalization`` layer with the training part's mean and scale),
    then the trained layers; it returns the probabilities per class (classification) or the prediction. It is
    an MLflow Model of the Keras flavour, with a signature and an input example (five raw validation rows),
    kept as the artifact ``network`` of a pyfunc (:mod:`tuner.served`, a model from code) that returns the
    user's class labels beside the probabilities: ``{"label": [...], "probabilities": [[...]]}``. The labels are
    mapped in Python from ``classes`` (in the model's config and metadata), so that any label the data had
    (``-1``, ``True``, ``"[UNK]"``) comes back as it was.
    """
    import tempfile

    import mlflow.pyfunc
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    assert data.mean is not None and data.scale is not None
    copy = keras.models.clone_model(net)  # the engine's own network goes on to the next trial
    copy.set_weights(net.get_weights())
    features = keras.Input((data.n_features,), name="features")
    scaled = keras.layers.Normalization(mean=data.mean, variance=np.square(data.scale), name="standardise")(features)
    model = keras.Model(features, copy(scaled), name="tuner_best")
    example = data.raw(data.x_val[:5])
    predicted: Any = np.asarray(model(example))
    classes = list(data.classes)
    # Given, not inferred: inferring them loads the model again in a subprocess, seconds a trial.
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    with tempfile.TemporaryDirectory() as directory:
        network = os.path.join(directory, "network")
        mlflow.tensorflow.save_model(
            model,
            network,
            signature=infer_signature(example, predicted),
            input_example=example,
            pip_requirements=requirements,
        )
        if data.task == "classification":
            labels = np.asarray([classes[k] for k in predicted.argmax(axis=1)])
            predicted = {"label": labels, "probabilities": predicted}
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(Path(__file__).with_name("served.py")),
            artifacts={"network": network},
            model_config={"classes": classes},
            signature=infer_signature(example, predicted),
            input_example=example,
            pip_requirements=requirements,
            metadata={"task": data.task, "classes": classes, "dataset": data.name},
        )


#: The registered optimizers the engine has its own update rule for (a branch each of one compiled graph).
COMPILED = tuple(name for name in OPTIMIZERS if callable(getattr(Engine, f"_{name}", None)))
_EVAL_BATCH = 4096
#: How much of the sweep's average of recent losses each new batch's loss replaces: 1 - 0.9, a memory of about
#: ten batches.
_SWEEP_BETA = 0.9
#: Compiled engines kept per worker, most recently used last.
MAX_ENGINES = 8
_engines: OrderedDict[Shape, Engine] = OrderedDict()
_tensors: dict[tuple[int, ...], tuple[tf.Tensor, ...]] = {}


def engine_for(shape: Shape) -> Engine:
    """The worker's engine for ``shape``, built (and traced, at its first epoch) only once."""
    engine = _engines.pop(shape, None) or Engine(shape)
    _engines[shape] = engine
    while len(_engines) > MAX_ENGINES:
        _engines.popitem(last=False)
    return engine


def tensors(data: Dataset) -> tuple[tf.Tensor, ...]:
    """The dataset as tensors, converted once per worker (trials read the same object-store buffers)."""
    key = tuple(a.__array_interface__["data"][0] for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    if key not in _tensors:
        _tensors.clear()
        _tensors[key] = tuple(tf.constant(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return _tensors[key]


#: Files of a resumable checkpoint: the engine's arrays, and where the loop stood. Not tf.train.Checkpoint: it
#: would still need the JSON (the shuffling generator, the curve, the divergence rule are Python state), and it
#: measured 32 ms a write against np.savez's 11 ms for a 2 x 128 MLP with Adam's slots.
STATE_FILE = "state.npz"
PROGRESS_FILE = "progress.json"


@dataclass
class Snapshot:
    """Where a trial stands after an epoch: enough to write a checkpoint it can resume from."""

    engine: Engine
    rng: np.random.Generator
    rule: Divergence
    epoch: int
    history: list[dict[str, Any]]

    def write(self, directory: str | os.PathLike[str]) -> None:
        """Write the weights, the optimizer's state, the shuffling generator and the divergence rule."""
        arrays: dict[str, Any] = self.engine.state()
        np.savez(Path(directory) / STATE_FILE, **arrays)
        progress = {
            "epoch": self.epoch,
            "history": self.history,
            "rng": self.rng.bit_generator.state,
            "divergence": self.rule.state(),
        }
        (Path(directory) / PROGRESS_FILE).write_text(json.dumps(progress))

    def save_model(self, path: str | os.PathLike[str]) -> None:
        self.engine.save(path)


def _restore(
    directory: str | os.PathLike[str], engine: Engine, rng: np.random.Generator, rule: Divergence
) -> tuple[int, list[dict[str, Any]]]:
    """Load a checkpoint :meth:`Snapshot.write` made into a reset engine; returns its epoch and the metrics
    of every epoch up to it."""
    progress = json.loads((Path(directory) / PROGRESS_FILE).read_text())
    with np.load(Path(directory) / STATE_FILE) as arrays:
        engine.load(arrays)
    rng.bit_generator.state = progress["rng"]
    rule.restore(progress["divergence"])
    return int(progress["epoch"]), list(progress["history"])


Report = Callable[[dict[str, Any], Snapshot], None]


def train(
    data: Dataset,
    config: Mapping[str, Any],
    report: Report,
    divergence: Divergence | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> None:
    """Train one trial epoch by epoch, calling ``report(metrics, snapshot)`` after each epoch.

    A non-finite loss stops training inside the epoch it appears in, and ``divergence`` (the ratio rule)
    may stop it after an epoch; that epoch's report carries ``stop_reason`` and no non-finite number
    (those metrics are ``None``). ``resume`` is a checkpoint directory to continue from: the epochs after
    it run exactly as they would have without the interruption, and the first report says
    ``resumed_from_epoch``.
    """
    engine = engine_for(Shape.of(data, config))
    name = str(config["optimizer"])
    seed = int(config["seed"])
    engine.reset(name, config.get(name, {}), seed)
    x, y, x_val, y_val = tensors(data)
    rng = np.random.default_rng(seed)
    rule = divergence or Divergence(max_ratio=None)
    epochs = int(config["epochs"])
    done, history = _restore(resume, engine, rng, rule) if resume is not None else (0, [])
    resumed = {"resumed_from_epoch": done, "history": history} if resume is not None else {}
    if done >= epochs:
        # The checkpoint is the last epoch's: the trial had finished when its driver died. Say so again,
        # so that this launch records how it ended.
        report({**history[-1], **resumed}, Snapshot(engine, rng, rule, done, history))
        return
    metric = "accuracy" if engine.classify else "mae"
    for epoch in range(done + 1, epochs + 1):
        loss, score, first, _ = engine.train_epoch(x, y, rng.permutation(len(data.x_train)), int(config["batch_size"]))
        rule.first(first)
        val_loss, val_score = engine.evaluate(x_val, y_val)
        metrics: dict[str, Any] = {"loss": loss, metric: score, "val_loss": val_loss, f"val_{metric}": val_score}
        metrics["lr"] = engine.learning_rate()
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        reason = rule.check(epoch, loss)
        if reason is None and bad:
            reason = f"diverged: {bad[0]}={metrics[bad[0]]:g} at epoch {epoch}"
        metrics["epoch"] = epoch
        if reason is not None:
            metrics["stop_reason"] = reason
            metrics.update({k: None for k in bad})
        history.append(metrics)
        # The first report after a resume carries the curve so far, which the driver may have lost with
        # the driver that died.
        report({**metrics, **resumed} if epoch == done + 1 else metrics, Snapshot(engine, rng, rule, epoch, history))
        if reason is not None:
            return
