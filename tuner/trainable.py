"""The Ray Tune function trainable: a stateless trainer that reports one result per epoch.

It never talks to Optuna or MLflow; the driver turns its reports into trial states and records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from tuner.pruning import Divergence

if TYPE_CHECKING:
    from tuner.data import Dataset
    from tuner.spec import Pruning

__all__ = ["EXPORT_DIR", "MODEL_FILE", "STOP_REASON", "WORKER_ENV", "sweep_task", "train_trial"]

#: A result key set by the trainer when it stopped by itself (e.g. a diverged loss).
STOP_REASON = "stop_reason"
#: The trained network in a trial's last checkpoint, loadable with ``keras.models.load_model``.
MODEL_FILE = "model.keras"
#: The same network as an MLflow Model that takes rows as the data has them (:func:`tuner.engine.export`).
EXPORT_DIR = "mlflow_model"
#: Environment every worker process gets (Ray's runtime environment): quiet TensorFlow, Keras on TensorFlow,
#: and Ray's native crash handler (stack dumps in the worker's log), which the CLI turns off for its driver.
WORKER_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "KERAS_BACKEND": "tensorflow",
    "PYTHONWARNINGS": "ignore",
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "0",
}


def train_trial(config: dict[str, Any], data: Dataset, *, threads: int = 1, pruning: Pruning | None = None) -> None:
    """Train the trial described by ``config`` on ``data``, reporting each epoch to Ray Tune.

    ``data``, ``threads`` and ``pruning`` arrive through ``tune.with_parameters``: the driver put the data
    in Ray's object store once, and every trial on every worker reads that same copy.
    """
    from tuner import engine, model  # TensorFlow is imported on the workers only.

    model.configure_threads(threads)
    model.use_gpu_memory_growth()
    epochs = int(config["epochs"])
    due = _checkpoint_rule(config.get("checkpoint_every"), float(config.get("checkpoint_interval_s", 10.0)))
    node = ray.get_runtime_context().get_node_id()  # which Ray node trained it, for the record

    def report(metrics: dict[str, Any], snapshot: engine.Snapshot) -> None:
        metrics = {**metrics, "node_id": node}
        epoch = metrics["epoch"]
        if STOP_REASON in metrics or not (epoch == epochs or due(epoch)):  # nothing to resume, or not yet
            tune.report(metrics)
            return
        # A checkpoint to resume from, on a new node after a failure or after `tuner resume`; the last also
        # holds the network the driver logs if best.
        with tempfile.TemporaryDirectory() as directory:
            snapshot.write(directory)
            if epoch == epochs:
                snapshot.save_model(os.path.join(directory, MODEL_FILE))
                try:
                    engine.export(snapshot.engine.net, data, os.path.join(directory, EXPORT_DIR))
                except Exception:  # the trial stands without its MLflow Model (the study's best then has none)
                    logging.getLogger(__name__).warning("the MLflow Model was not written", exc_info=True)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    divergence = Divergence(pruning.max_ratio, pruning.patience) if pruning else None
    # Where to start from: this trial's own checkpoint after Ray Tune restarted it (a failure), or that of
    # the interrupted launch's trial it continues (`tuner resume`; a path or a URI such as s3://...).
    start = tune.get_checkpoint()
    if start is None and config.get("resume_from"):
        start = tune.Checkpoint(config["resume_from"])
    with start.as_directory() if start is not None else contextlib.nullcontext() as directory:
        engine.train(data, config, report=report, divergence=divergence, resume=directory)


def sweep_task(data: Dataset, config: dict[str, Any], rates: Any, limit: float, *, seed: int, threads: int = 1) -> Any:
    """``tuner lr-find``'s Ray task: one learning-rate sweep (:meth:`tuner.engine.Engine.sweep`) of the
    network ``config`` describes, from fresh weights drawn with ``seed``; returns the loss of every step."""
    import numpy as np

    from tuner import engine, model  # TensorFlow is imported on the workers only.

    model.configure_threads(threads)
    model.use_gpu_memory_growth()
    name = str(config["optimizer"])
    trainer = engine.engine_for(engine.Shape.of(data, config))
    trainer.reset(name, config.get(name, {}), seed)
    x, y, _, _ = engine.tensors(data)
    batch = int(config["batch_size"])
    rng = np.random.default_rng(seed)
    # Batches run on across epochs: the sweep's steps, not the data's size, decide its length.
    epochs = -(-len(rates) * batch // len(data.x_train))
    order = np.concatenate([rng.permutation(len(data.x_train)) for _ in range(epochs)])
    return trainer.sweep(x, y, order, batch, np.asarray(rates), limit)


def _checkpoint_rule(
    every: int | None, interval: float, clock: Callable[[], float] = time.monotonic
) -> Callable[[int], bool]:
    """Whether a trial checkpoints after an epoch (besides its last, which always does): every ``every``
    epochs when the spec gives that; else once ``interval`` seconds have passed since its last checkpoint
    (or its start), so that a crash costs about that much training (plus the epoch under way) and a short
    trial writes one checkpoint. ``clock`` gives seconds.

    Example:
        >>> due = _checkpoint_rule(2, 10.0)
        >>> [due(epoch) for epoch in (1, 2, 3, 4)]
        [False, True, False, True]
    """
    if every is not None:
        return lambda epoch: epoch % int(every) == 0
    last = clock()

    def due(epoch: int) -> bool:
        nonlocal last
        now = clock()
        if now - last < interval:
            return False
        last = now
        return True

    return due
