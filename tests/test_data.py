from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuner.data import DATASETS, load_dataset
from tuner.spec import parse_spec

from .conftest import write


def data_of(doc: dict, base: Path | None = None):
    return parse_spec({"data": doc, "optimizers": {"adam": {}}}, base=base).data


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_builtin_dataset_loads_split_and_standardised(name: str) -> None:
    ds = load_dataset(data_of({"dataset": name, "validation_split": 0.25}), seed=0)
    n = len(ds.x_train) + len(ds.x_val)
    assert len(ds.x_val) == pytest.approx(0.25 * n, abs=1)
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1] == ds.x_val.shape[1] == ds.n_features
    varying = ds.x_train.std(axis=0) > 0
    assert np.allclose(ds.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(ds.x_train.std(axis=0)[varying], 1, atol=1e-3)
    assert ds.task == DATASETS[name].task
    if ds.task == "classification":
        assert ds.y_train.dtype == np.int32
        assert set(np.unique(ds.y_train)) == set(range(ds.n_classes)) and ds.n_classes >= 2
    else:
        assert ds.y_train.dtype == np.float32 and ds.n_classes == 0


def test_split_is_seeded_and_stratified() -> None:
    data = data_of({"dataset": "digits"})
    a, b, c = (load_dataset(data, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.x_val, b.x_val) and not np.array_equal(a.x_val, c.x_val)
    train_share = np.bincount(a.y_train) / len(a.y_train)
    val_share = np.bincount(a.y_val) / len(a.y_val)
    assert np.abs(train_share - val_share).max() < 0.01


def test_standardisation_uses_the_training_part_only(tmp_path: Path) -> None:
    rows = "\n".join(f"{v},{v % 2}" for v in range(100))
    write(tmp_path / "d.csv", "x,y\n" + rows + "\n")
    ds = load_dataset(data_of({"dataset": "csv:d.csv", "target": "y"}, tmp_path), seed=0)
    assert abs(float(ds.x_train.mean())) < 1e-5
    assert abs(float(ds.x_val.mean())) > 1e-5 or abs(float(ds.x_val.std()) - 1) > 1e-3


def test_synthetic_takes_its_shape_from_the_spec() -> None:
    ds = load_dataset(data_of({"dataset": "synthetic", "n_samples": 200, "n_features": 5, "n_classes": 3}), seed=0)
    assert (len(ds.x_train) + len(ds.x_val), ds.n_features, ds.n_classes) == (200, 5, 3)


def test_csv_text_labels_become_class_numbers(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "a,b,kind\n" + "\n".join(f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(20)))
    ds = load_dataset(data_of({"dataset": "csv:d.csv", "target": "kind"}, tmp_path), seed=0)
    assert ds.task == "classification" and ds.n_classes == 2 and ds.n_features == 2


def test_npz_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(50, 3)), y=rng.normal(size=50))
    ds = load_dataset(data_of({"dataset": "npz:d.npz"}, tmp_path), seed=0)
    assert ds.task == "regression" and ds.y_train.dtype == np.float32 and ds.n_features == 3
