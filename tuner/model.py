"""The one module that imports TensorFlow: the MLP and the Keras optimizers (with classic decay).

It runs on the workers only: the driver never loads TensorFlow. :mod:`tuner.engine` trains with them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from tuner.optimizers import OPTIMIZERS

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

__all__ = [
    "build_model",
    "build_optimizer",
    "configure_threads",
    "current_learning_rate",
    "hyperparameters",
    "keras",
    "keras_class",
    "tf",
]


def keras_class(name: str) -> type[keras.optimizers.Optimizer]:
    """A registered optimizer's Keras class (tuner.optimizers names it)."""
    cls: type[keras.optimizers.Optimizer] = getattr(keras.optimizers, OPTIMIZERS[name].keras_class)
    return cls


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


def use_gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it, so that trials sharing a GPU (gpus_per_trial: 0.25)
    do not each try to grab all of it. Must run before TensorFlow touches a GPU; once per process."""
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised: the setting stands from before
            tf.config.experimental.set_memory_growth(gpu, True)


def build_optimizer(name: str, params: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """A Keras optimizer from a trial's hyperparameters; unset ones keep Keras' defaults.

    ``decay`` keeps its classic Keras meaning, lr_t = lr / (1 + decay * t) with t the number of updates
    so far, which is exactly ``InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)``.

    Example:
        >>> build_optimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9, "decay": 1e-3})  # doctest: +SKIP
    """
    cls = keras_class(name)
    kwargs = dict(params)
    decay = float(kwargs.pop("decay", 0.0))
    if decay > 0:
        lr = kwargs.pop("learning_rate", OPTIMIZERS[name].hyperparameter("learning_rate").default)
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


def hyperparameters(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer's hyperparameters: the trial's, then Keras' defaults for the rest (and decay 0)."""
    return {**OPTIMIZERS[name].defaults(), **given}
