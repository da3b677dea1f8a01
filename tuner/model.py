"""The only module that imports TensorFlow: the MLP, the optimizers (with classic decay), the training loop.

It runs on the workers; the driver imports it only at the end of a study, to log the best model.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tuner.pruning import Divergence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def _silent_stderr() -> Iterator[None]:
    """TensorFlow's C++ runtime writes to file descriptor 2 while it loads, before TF_CPP_MIN_LOG_LEVEL
    applies (oneDNN and CUDA notes); hide those lines unless the user asked for TensorFlow's logs."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _silent_stderr():
    import keras
    import tensorflow as tf

if TYPE_CHECKING:
    from tuner.data import Dataset

__all__ = [
    "build_model",
    "build_optimizer",
    "configure_threads",
    "current_learning_rate",
    "load",
    "requirements",
    "save",
    "train",
]

OPTIMIZER_CLASSES: dict[str, type[keras.optimizers.Optimizer]] = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adam": keras.optimizers.Adam,
}

_configured: int | None = None


def configure_threads(threads: int) -> None:
    """Match TensorFlow's thread pools to the trial's CPUs; once per process (TF fixes them at first use)."""
    global _configured
    if _configured is not None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        tf.config.experimental.enable_op_determinism()
    except RuntimeError:  # TensorFlow was already initialised in this process: keep its pools.
        pass
    _configured = threads


def build_optimizer(name: str, params: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """A Keras optimizer from a trial's hyperparameters; unset ones keep Keras' defaults.

    ``decay`` keeps its classic Keras meaning, lr_t = lr / (1 + decay * t) with t the number of updates
    so far, which is exactly ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)``.

    Example:
        >>> build_optimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9, "decay": 1e-3})  # doctest: +SKIP
    """
    cls = OPTIMIZER_CLASSES[name]
    kwargs = dict(params)
    decay = float(kwargs.pop("decay", 0.0))
    if decay > 0:
        lr = kwargs.pop("learning_rate", inspect.signature(cls).parameters["learning_rate"].default)
        kwargs["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)
    return cls(**kwargs)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next update uses, decay applied."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def build_model(
    n_features: int,
    n_outputs: int,
    *,
    layers: int,
    units: int,
    activation: str,
    dropout: float,
) -> keras.Model:
    """An MLP: ``layers`` hidden Dense layers (with dropout), then softmax (classes) or linear (regression)."""
    stack: list[keras.layers.Layer] = [keras.Input((n_features,))]
    for _ in range(layers):
        stack.append(keras.layers.Dense(units, activation=activation))
        if dropout > 0:
            stack.append(keras.layers.Dropout(dropout))
    stack.append(keras.layers.Dense(n_outputs, activation="softmax" if n_outputs > 1 else None))
    return keras.Sequential(stack)


def save(net: keras.Model, path: str | os.PathLike[str]) -> None:
    """Save a trained model (weights, architecture, optimizer state) as one ``.keras`` file."""
    net.save(path)


def load(path: str | os.PathLike[str]) -> keras.Model:
    """Load a model written by :func:`save` (on the driver, to log the best one)."""
    return keras.models.load_model(path)


def requirements() -> list[str]:
    """What serving the model needs, pinned to what trained it (saves MLflow inferring it)."""
    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


Report = Callable[[dict[str, Any], keras.Model], None]


def train(data: Dataset, config: Mapping[str, Any], report: Report, divergence: Divergence | None = None) -> None:
    """Train one trial epoch by epoch, calling ``report(metrics, model)`` after each epoch.

    A non-finite loss stops training inside the epoch it appears in, and ``divergence`` (the ratio rule)
    may stop it after an epoch; that epoch's report carries ``stop_reason`` and no non-finite number
    (those metrics are ``None``).
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(int(config["seed"]))
    classify = data.task == "classification"
    net = build_model(
        data.n_features,
        data.n_classes if classify else 1,
        layers=int(config["layers"]),
        units=int(config["units"]),
        activation=str(config["activation"]),
        dropout=float(config["dropout"]),
    )
    name = str(config["optimizer"])
    optimizer = build_optimizer(name, config.get(name, {}))
    net.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy" if classify else "mse",
        metrics=["accuracy"] if classify else ["mae"],
    )
    net.fit(
        data.x_train,
        data.y_train,
        batch_size=int(config["batch_size"]),
        epochs=int(config["epochs"]),
        validation_data=(data.x_val, data.y_val),
        shuffle=True,
        verbose=0,
        callbacks=[_Report(report, optimizer, divergence or Divergence(max_ratio=None))],
    )


class _Report(keras.callbacks.Callback):
    def __init__(self, report: Report, optimizer: keras.optimizers.Optimizer, divergence: Divergence) -> None:
        super().__init__()
        self._report, self._optimizer, self._divergence = report, optimizer, divergence

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if not logs:
            return
        loss = float(logs["loss"])
        self._divergence.first(loss)
        if not math.isfinite(loss):  # stop inside the epoch: the rest of it would be NaN too
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        metrics: dict[str, Any] = {k: float(v) for k, v in (logs or {}).items()}
        metrics["lr"] = current_learning_rate(self._optimizer)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        reason = self._divergence.check(epoch + 1, metrics["loss"])
        if reason is None and bad:
            reason = f"diverged: {bad[0]}={metrics[bad[0]]:g} at epoch {epoch + 1}"
        metrics["epoch"] = epoch + 1
        if reason is not None:
            metrics["stop_reason"] = reason
            metrics.update({k: None for k in bad})
            self.model.stop_training = True
        self._report(metrics, self.model)
