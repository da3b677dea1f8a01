"""Built-in and user datasets as numpy arrays: split with a seed, standardised on the training part.

No TensorFlow here: the driver loads the data once and Ray's object store hands it to every worker. numpy is
imported where arrays are made, so that validating a spec (which reads ``Data`` and ``DATASETS``) does not.

A user's file (``csv:`` or ``npz:``) is read by :mod:`tuner.datafiles`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.datafiles import MIN_EXAMPLES, DataFileError, csv_columns, resolve_task, user_arrays
from tuner.errors import SpecError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DATASETS",
    "MIN_EXAMPLES",
    "Builtin",
    "Data",
    "DataFileError",
    "Dataset",
    "csv_columns",
    "load_dataset",
    "resolve_task",
]


@dataclass(frozen=True)
class Data:
    """Where a spec's examples come from: its ``data`` section, interpreted (the defaults are the spec's, in
    :class:`tuner.spec.DataSection`). ``path`` is absolute for ``csv:`` and ``npz:`` datasets."""

    dataset: str
    task: str
    validation_split: float
    path: str | None
    target: str | None
    n_samples: int  # n_samples, n_features, n_classes and seed serve the synthetic dataset only
    n_features: int
    n_classes: int
    seed: int | None

    @property
    def label(self) -> str:
        return f"{self.dataset}:{self.path}" if self.path else self.dataset


@dataclass(frozen=True)
class Dataset:
    """Arrays ready to train on. Labels are 0..n_classes-1 for classification; n_classes is 0 for regression.

    The features are standardised: ``(raw - mean) / scale``, with the training part's ``mean`` and ``scale``,
    which the exported model applies itself (:meth:`raw`). ``classes`` are the labels as the data had them,
    ``classes[k]`` for label ``k``.
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    classes: tuple[Any, ...] = ()

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Standardised rows back as the data had them."""
        import numpy as np

        if self.mean is None or self.scale is None:
            return x
        return np.asarray(x * self.scale + self.mean, dtype=np.float32)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> str:
        return f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} validation, {self.n_features} features"


def load_dataset(data: Data, *, seed: int, source: str = "<spec>") -> Dataset:
    """Load, split (seeded; stratified for classification) and standardise a dataset.

    Args:
        data: the validated ``data`` section of a spec.
        seed: seeds the validation split (and ``synthetic`` unless it has its own seed).
        source: the spec file, named in errors.

    Raises:
        SpecError: a user file that cannot be read as a dataset.
    """
    import numpy as np

    try:
        x, y, task = _arrays(data, seed)
    except DataFileError as exc:
        raise SpecError(source, exc.key, exc.rule, exc.got) from None
    classes = 0
    labels: tuple[Any, ...] = ()
    if task == "classification":
        found, y = np.unique(y, return_inverse=True)
        labels = tuple(found.tolist())
        classes = int(y.max()) + 1
        y = y.astype(np.int32)
    else:
        y = np.asarray(y, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    x_train, x_val, y_train, y_val = _split(x, y, data.validation_split, seed, stratify=classes > 0)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_val = ((x_val - mean) / std).astype(np.float32)
    return Dataset(data.label, task, x_train, y_train, x_val, y_val, classes, mean, std, labels)


def _arrays(data: Data, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    if data.dataset == "csv":
        assert data.path is not None and data.target is not None
        x, y = user_arrays("csv", Path(data.path), data.target, take=True)
        return x, y, data.task
    if data.dataset == "npz":
        assert data.path is not None
        x, y = user_arrays("npz", Path(data.path), None, take=True)
        return x, y, data.task
    builtin = DATASETS[data.dataset]
    x, y = builtin.load(data, seed)
    return x, y, builtin.task


def _synthetic(data: Data, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=data.n_samples,
        n_features=data.n_features,
        n_informative=data.n_features,
        n_redundant=0,
        n_repeated=0,
        n_classes=data.n_classes,
        n_clusters_per_class=1,
        random_state=seed if data.seed is None else data.seed,
    )
    return x, y


def _scikit_learn(name: str) -> Callable[[Data, int], tuple[np.ndarray, np.ndarray]]:
    def load(data: Data, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn import datasets

        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        return x, y

    return load


@dataclass(frozen=True)
class Builtin:
    """A dataset a spec names (``data.dataset``): its task, and ``load(data, seed)`` for its arrays."""

    name: str
    task: str
    summary: str
    load: Callable[[Data, int], tuple[np.ndarray, np.ndarray]]


#: Every built-in dataset; a spec may also name a user file, ``csv:PATH`` or ``npz:PATH``.
DATASETS: dict[str, Builtin] = {
    d.name: d
    for d in (
        Builtin("digits", "classification", "8x8 handwritten digits, 1797 x 64, 10 classes", _scikit_learn("digits")),
        Builtin("iris", "classification", "150 x 4, 3 classes", _scikit_learn("iris")),
        Builtin("wine", "classification", "178 x 13, 3 classes", _scikit_learn("wine")),
        Builtin("breast_cancer", "classification", "569 x 30, 2 classes", _scikit_learn("breast_cancer")),
        Builtin("diabetes", "regression", "442 x 10, a disease progression score", _scikit_learn("diabetes")),
        Builtin("synthetic", "classification", "scikit-learn's make_classification, sized by the spec", _synthetic),
    )
}


def _split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    n_val = math.ceil(len(x) * fraction)
    can_stratify = stratify and np.bincount(y).min() >= 2 and n_val >= len(np.unique(y))
    parts = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y if can_stratify else None)
    return parts[0], parts[1], parts[2], parts[3]


# --------------------------------------------------------------------------------------------- user files
