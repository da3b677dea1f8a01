"""The Ray Tune function trainable: a stateless trainer that reports one result per epoch.

It never talks to Optuna or MLflow; the driver turns its reports into trial states and records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import tune

if TYPE_CHECKING:
    from tuner.data import Dataset

__all__ = ["STOP_REASON", "train_trial"]

#: A result key set by the trainer when it stopped by itself (e.g. a diverged loss).
STOP_REASON = "stop_reason"


def train_trial(config: dict[str, Any], data: Dataset, threads: int = 1) -> None:
    """Train the trial described by ``config`` on ``data``, reporting each epoch to Ray Tune.

    ``data`` arrives through ``tune.with_parameters``: the driver put it in Ray's object store once,
    and every trial on every worker reads that same copy.
    """
    from tuner import model  # TensorFlow is imported on the workers only.

    model.configure_threads(threads)
    model.train(data, config, report=tune.report)
