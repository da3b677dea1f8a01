"""The Ray Tune function trainable: a stateless trainer that reports one result per epoch.

It never talks to Optuna or MLflow; the driver turns its reports into trial states and records.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from ray import tune

from tuner.pruning import Divergence

if TYPE_CHECKING:
    from tuner.data import Dataset
    from tuner.spec import Pruning

__all__ = ["MODEL_FILE", "STOP_REASON", "train_trial"]

#: A result key set by the trainer when it stopped by itself (e.g. a diverged loss).
STOP_REASON = "stop_reason"
#: The trained network in a trial's last checkpoint, loadable with ``keras.models.load_model``.
MODEL_FILE = "model.keras"


def train_trial(config: dict[str, Any], data: Dataset, *, threads: int = 1, pruning: Pruning | None = None) -> None:
    """Train the trial described by ``config`` on ``data``, reporting each epoch to Ray Tune.

    ``data``, ``threads`` and ``pruning`` arrive through ``tune.with_parameters``: the driver put the data
    in Ray's object store once, and every trial on every worker reads that same copy.
    """
    from tuner import model  # TensorFlow is imported on the workers only.

    model.configure_threads(threads)
    epochs = int(config["epochs"])

    def report(metrics: dict[str, Any], engine: model.Engine) -> None:
        if metrics["epoch"] < epochs or STOP_REASON in metrics:
            tune.report(metrics)
            return
        # The trained network goes to Tune's storage with the last result; the driver logs the best one.
        with tempfile.TemporaryDirectory() as directory:
            engine.save(os.path.join(directory, MODEL_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    divergence = Divergence(pruning.max_ratio, pruning.patience) if pruning else None
    model.train(data, config, report=report, divergence=divergence)
