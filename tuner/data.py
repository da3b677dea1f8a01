"""Built-in and user datasets as numpy arrays: split with a seed, standardised on the training part.

No TensorFlow here: the driver loads the data once and Ray's object store hands it to every worker. numpy is
imported where arrays are made, so that validating a spec (which reads ``Data`` and ``DATASETS``) does not.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

#: An integer target with at most this many distinct values is read as class labels.
MAX_INFERRED_CLASSES = 20
#: The fewest examples a dataset may have: a validation split and a training part need a few each.
MIN_EXAMPLES = 10


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
    """Arrays ready to train on. Labels are 0..n_classes-1 for classification; n_classes is 0 for regression."""

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> str:
        return f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} validation, {self.n_features} features"


class DataFileError(Exception):
    """A user's data file breaks a rule; spec validation turns it into a located :class:`SpecError`."""

    def __init__(self, key: str, rule: str, got: Any) -> None:
        super().__init__(f"{key}: {rule}")
        self.key, self.rule, self.got = key, rule, got


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
    if task == "classification":
        _, y = np.unique(y, return_inverse=True)
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
    return Dataset(data.label, task, x_train, y_train, x_val, y_val, classes)


def _arrays(data: Data, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    if data.dataset == "csv":
        assert data.path is not None and data.target is not None
        x, y = _read_csv(Path(data.path), data.target)
        return x, y, data.task
    if data.dataset == "npz":
        assert data.path is not None
        x, y = _read_npz(Path(data.path))
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


def _text(path: Path, kind: str) -> str:
    """A user's text file, which must be UTF-8 (a byte-order mark is allowed)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        rule = f"{path} line {line}: must be UTF-8 text; byte 0x{raw[exc.start]:02x} is not"
        raise DataFileError("data.dataset", rule, f"{kind}:{path}") from None


def _csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(_text(path, "csv").splitlines(keepends=True)))


def csv_columns(path: Path) -> list[str]:
    """The header of a CSV file (empty if the file is).

    Raises:
        DataFileError: the file is not UTF-8 text.
    """
    rows = _csv_rows(path)
    return rows[0] if rows else []


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    rows = _csv_rows(path)
    if not rows:
        raise DataFileError("data.dataset", f"{path} is empty", f"csv:{path}")
    header, body = rows[0], [r for r in rows[1:] if r]
    if target not in header:
        import difflib

        close = difflib.get_close_matches(target, header, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        rule = f"no such column in {path.name}{hint} (columns: {', '.join(header)})"
        raise DataFileError("data.target", rule, target)
    if len(body) < MIN_EXAMPLES:
        rule = f"{path} has {len(body)} row{'s' * (len(body) != 1)}; a dataset needs at least {MIN_EXAMPLES}"
        raise DataFileError("data.dataset", rule, f"csv:{path}")
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    if not features:
        raise DataFileError("data.dataset", f"{path} has no feature columns besides {target!r}", f"csv:{path}")
    x = np.empty((len(body), len(features)), dtype=np.float64)
    y: list[str] = []
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            rule = f"{path} line {n} has {len(row)} fields, the header {len(header)}"
            raise DataFileError("data.dataset", rule, f"csv:{path}")
        for j, i in enumerate(features):
            try:
                x[n - 2, j] = float(row[i])
            except ValueError:
                x[n - 2, j] = math.nan
            if not math.isfinite(x[n - 2, j]):
                rule = f"{path} line {n}, column {header[i]!r}: features must be finite numbers"
                raise DataFileError("data.dataset", rule, row[i]) from None
        if not row[t].strip():
            rule = f"{path} line {n}, column {target!r}: every row needs a target value"
            raise DataFileError("data.target", rule, row[t])
        y.append(row[t])
    return x, _labels(y, path, target)


def _labels(values: list[str], path: Path, target: str) -> np.ndarray:
    """The target column: numbers if every cell is one (integers if whole), else text labels."""
    import numpy as np

    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        return np.array(values)
    if not np.all(np.isfinite(numbers)):
        n = int(np.flatnonzero(~np.isfinite(numbers))[0])
        rule = f"{path} line {n + 2}, column {target!r}: a numeric target must be finite"
        raise DataFileError("data.target", rule, values[n])
    if np.all(numbers == np.round(numbers)):
        return numbers.astype(np.int64)
    return numbers


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataFileError("data.dataset", f"{path} is not a readable .npz file: {exc}", f"npz:{path}") from None
    if "x" not in arrays or "y" not in arrays:
        found = ", ".join(arrays) or "none"
        raise DataFileError("data.dataset", f"{path} must hold arrays named x and y (found: {found})", f"npz:{path}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        rule = f"{path}: x must be 2-D (examples x features) and y 1-D of the same length"
        raise DataFileError("data.dataset", rule, f"x {x.shape}, y {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise DataFileError("data.dataset", f"{path}: x must hold finite numbers", str(x.dtype))
    if np.issubdtype(y.dtype, np.number) and not np.all(np.isfinite(y)):
        raise DataFileError("data.dataset", f"{path}: y must hold finite numbers or labels", str(y.dtype))
    if not (np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.str_) or y.dtype == np.bool_):
        raise DataFileError("data.dataset", f"{path}: y must hold numbers or text labels", str(y.dtype))
    if len(x) < MIN_EXAMPLES:
        rule = f"{path} holds {len(x)} example{'s' * (len(x) != 1)}; a dataset needs at least {MIN_EXAMPLES}"
        raise DataFileError("data.dataset", rule, f"npz:{path}")
    return x, y


def resolve_task(kind: str, path: Path, target: str | None, task: str | None) -> str:
    """The task of a user file: ``task`` if given (and possible), else ``classification`` when the target
    is text or has few integer values, ``regression`` otherwise.

    Raises:
        DataFileError: the file cannot be read as a dataset, or cannot serve the given task.
    """
    import numpy as np

    if kind == "csv":
        assert target is not None
        _, y = _read_csv(path, target)
    else:
        _, y = _read_npz(path)
    numeric = np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_
    if task == "regression" and not numeric:
        raise DataFileError("data.task", "a regression target must hold numbers; this one holds text", task)
    if task is None:
        few = np.issubdtype(y.dtype, np.integer) and len(np.unique(y)) <= MAX_INFERRED_CLASSES
        task = "classification" if not numeric or few else "regression"
    classes = np.unique(y)
    if task == "classification" and len(classes) < 2:
        key = "data.target" if kind == "csv" else "data.dataset"
        rule = f"{path}: a classification target needs at least 2 classes; this one has 1"
        raise DataFileError(key, rule, classes[0].item())
    return task
