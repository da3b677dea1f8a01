from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuner.data import DATASETS, load_dataset
from tuner.errors import SpecError
from tuner.spec import load_spec, parse_spec

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


# --------------------------------------------------------------------------------------------- bad CSV files

#: Twelve good rows, file lines 2..13 below a header ``a,b,y``.
ROWS = "1,2,0\n3,4,1\n" * 6
WHOLE = "(got 'csv:{path}')"  # the value an error about the whole file shows
SIZE = "a dataset needs at least 10 " + WHOLE
FEATURE = "features must be finite numbers"

#: name: (the file, its error after "<spec>: "); lines are file lines (the header is line 1), blank ones included.
BAD_CSV: dict[str, tuple[str | bytes, str]] = {
    # the file as a whole
    "empty": ("", "data.dataset: {path} is empty " + WHOLE),
    "only_a_bom": ("\ufeff", "data.dataset: {path} is empty " + WHOLE),
    "only_a_header": ("a,b,y\n", "data.dataset: {path} has 0 rows; " + SIZE),
    "only_a_header_no_newline": ("a,b,y", "data.dataset: {path} has 0 rows; " + SIZE),
    "header_and_blank_lines": ("a,b,y\n\n\r\n\n", "data.dataset: {path} has 0 rows; " + SIZE),
    "one_row_trailing_blank_lines": ("a,b,y\n1,2,0\n\n\n", "data.dataset: {path} has 1 row; " + SIZE),
    "nine_rows": ("a,b,y\n" + "1,2,0\n" * 9, "data.dataset: {path} has 9 rows; " + SIZE),
    "nine_ragged_rows_size_first": ("a,b,y\n" + "1,2\n" * 9, "data.dataset: {path} has 9 rows; " + SIZE),
    "crlf_two_rows": ("a,b,y\r\n1,2,0\r\n\r\n3,x,1\r\n", "data.dataset: {path} has 2 rows; " + SIZE),
    "no_features": ("y\n" + "0\n1\n" * 6, "data.dataset: {path} has no feature columns besides 'y' " + WHOLE),
    "target_misspelt": (
        "a,b,yy\n" + ROWS,
        "data.target: no such column in d.csv; did you mean 'yy'? (columns: a, b, yy) (got 'y')",
    ),
    "target_missing": ("a,b,label\n" + ROWS, "data.target: no such column in d.csv (columns: a, b, label) (got 'y')"),
    "blank_first_line_is_the_header": (
        "\na,b,y\n" + ROWS,
        "data.target: no such column in d.csv (columns: ) (got 'y')",
    ),
    # rows of the wrong length
    "short_row": (
        "a,b,y\n1,2,0\n3,4,1\n1,2\n" + ROWS,
        "data.dataset: {path} line 4 has 2 fields, the header 3 " + WHOLE,
    ),
    "trailing_comma": ("a,b,y\n1,2,0,\n" + ROWS, "data.dataset: {path} line 2 has 4 fields, the header 3 " + WHOLE),
    "whitespace_line": (
        "a,b,y\n1,2,0\n   \n" + ROWS,
        "data.dataset: {path} line 3 has 1 fields, the header 3 " + WHOLE,
    ),
    "empty_quoted_line": (
        'a,b,y\n1,2,0\n""\n' + ROWS,
        "data.dataset: {path} line 3 has 1 fields, the header 3 " + WHOLE,
    ),
    "short_row_after_blank_lines": (
        "a,b,y\n1,2,0\n\n\n1,2\n" + ROWS,
        "data.dataset: {path} line 5 has 2 fields, the header 3 " + WHOLE,
    ),
    "short_row_crlf": (
        "a,b,y\r\n1,2,0\r\n\r\n1,2\r\n" + ROWS,
        "data.dataset: {path} line 4 has 2 fields, the header 3 " + WHOLE,
    ),
    "short_row_after_quoted_newline": (
        'a,b,y\n1,2,"x,\ny"\n1,2\n' + ROWS,
        "data.dataset: {path} line 4 has 2 fields, the header 3 " + WHOLE,
    ),
    # feature cells: the line, the column, the cell as written
    **{
        f"feature_{name}": (
            f"a,b,y\n1,2,0\n3,{cell},1\n" + ROWS,
            f"data.dataset: {{path}} line 3, column 'b': {FEATURE} (got {got})",
        )
        for name, cell, got in [
            ("empty", "", "''"),
            ("space", " ", "' '"),
            ("nan", "nan", "'nan'"),
            ("NaN", "NaN", "'NaN'"),
            ("inf", "inf", "'inf'"),
            ("minus_infinity", "-Infinity", "'-Infinity'"),
            ("overflow", "1e400", "'1e400'"),
            ("NA", "NA", "'NA'"),
            ("text", "x", "'x'"),
            ("nan_payload", "nan(1)", "'nan(1)'"),
            ("hex", "0x10", "'0x10'"),
            ("quoted_comma", '"1,5"', "'1,5'"),
            ("quoted_space", '" "', "' '"),
            ("quoted_newline", '"1\n2"', "'1\\n2'"),
        ]
    },
    "feature_after_blank_lines": (
        "a,b,y\n1,2,0\n\n\n3,x,1\n" + ROWS,
        f"data.dataset: {{path}} line 5, column 'b': {FEATURE} (got 'x')",
    ),
    "feature_crlf": (
        "a,b,y\r\n1,2,0\r\n\r\n3,x,1\r\n" + ROWS.replace("\n", "\r\n"),
        f"data.dataset: {{path}} line 4, column 'b': {FEATURE} (got 'x')",
    ),
    "feature_after_bom": (
        "\ufeffa,b,y\n1,2,0\n3,x,1\n" + ROWS,
        f"data.dataset: {{path}} line 3, column 'b': {FEATURE} (got 'x')",
    ),
    "feature_after_quoted_newline": (
        'a,b,y\n1,2,"two\nlines"\n3,x,1\n' + ROWS,
        f"data.dataset: {{path}} line 4, column 'b': {FEATURE} (got 'x')",
    ),
    "feature_after_quoted_blank_line": (
        'a,b,y\n1,2,"a\n\nb"\n\n3,x,1\n' + ROWS,
        f"data.dataset: {{path}} line 6, column 'b': {FEATURE} (got 'x')",
    ),
    "feature_at_the_end": (
        "a,b,y\n1,2,0\n" + ROWS + "3,x,1\n1,y,0\n",
        f"data.dataset: {{path}} line 15, column 'b': {FEATURE} (got 'x')",
    ),
    # the first error in the file wins; in a row, the features (left to right) before the target
    "ragged_before_feature": (
        "a,b,y\n1\n3,x,1\n" + ROWS,
        "data.dataset: {path} line 2 has 1 fields, the header 3 " + WHOLE,
    ),
    "feature_before_ragged": (
        "a,b,y\n3,x,1\n1\n" + ROWS,
        f"data.dataset: {{path}} line 2, column 'b': {FEATURE} (got 'x')",
    ),
    "leftmost_feature": (
        "a,b,y\n1,2,0\nx,y,1\n" + ROWS,
        f"data.dataset: {{path}} line 3, column 'a': {FEATURE} (got 'x')",
    ),
    "feature_before_target": (
        "a,y,b\n1,2,0\n1,,x\n" + ROWS,
        f"data.dataset: {{path}} line 3, column 'b': {FEATURE} (got 'x')",
    ),
    "target_before_later_feature": (
        "a,b,y\n3,4,\n1,2,x\n" + ROWS,
        "data.target: {path} line 2, column 'y': every row needs a target value (got '')",
    ),
    # the target
    "target_empty": (
        "a,b,y\n1,2,0\n3,4,\n" + ROWS,
        "data.target: {path} line 3, column 'y': every row needs a target value (got '')",
    ),
    "target_whitespace": (
        "a,b,y\n1,2,0\n\n3,4,  \n" + ROWS,
        "data.target: {path} line 4, column 'y': every row needs a target value (got '  ')",
    ),
    "target_quoted_empty": (
        'a,b,y\n1,2,0\n3,4,""\n' + ROWS,
        "data.target: {path} line 3, column 'y': every row needs a target value (got '')",
    ),
    "target_nan": (
        "a,b,y\n1,2,0\n\n3,4,nan\n" + ROWS,
        "data.target: {path} line 4, column 'y': a numeric target must be finite (got 'nan')",
    ),
    "target_minus_inf": (
        "a,b,y\n1,2,0.5\n3,4,-inf\n" + ROWS,
        "data.target: {path} line 3, column 'y': a numeric target must be finite (got '-inf')",
    ),
    "one_text_class": (
        "a,b,y\n" + "1,2,a\n" * 12,
        "data.target: {path}: a classification target needs at least 2 classes; this one has 1 (got 'a')",
    ),
    "one_integer_class": (
        "a,b,y\n" + "1,2,7\n" * 12,
        "data.target: {path}: a classification target needs at least 2 classes; this one has 1 (got 7)",
    ),
    # UTF-8: the line of the first bad byte, before any other rule
    "latin1": (
        b"a,b,y\n1,2,0\n3,4,caf\xe9\n" + ROWS.encode(),
        "data.dataset: {path} line 3: must be UTF-8 text; byte 0xe9 is not " + WHOLE,
    ),
    "latin1_after_bom": (
        b"\xef\xbb\xbfa,b,y\n1,2,0\n3,4,caf\xe9\n" + ROWS.encode(),
        "data.dataset: {path} line 3: must be UTF-8 text; byte 0xe9 is not " + WHOLE,
    ),
    "not_utf8_before_missing_target": (
        b"a,b,z\n" + ROWS.encode() + b"\xff\n",
        "data.dataset: {path} line 14: must be UTF-8 text; byte 0xff is not " + WHOLE,
    ),
    "truncated_utf8": (
        b"a,b,y\n1,2,\xc3\n" + ROWS.encode(),
        "data.dataset: {path} line 2: must be UTF-8 text; byte 0xc3 is not " + WHOLE,
    ),
    # neither pyarrow (a row longer than its block) nor the csv module (a field over its limit): one line, still
    "field_of_2_mb": (
        "a,b,y\n" + ROWS + "1,2," + "z" * (2 << 20) + "\n",
        "data.dataset: {path} line 14: cannot be read as CSV: field larger than field limit (131072) " + WHOLE,
    ),
}


def csv_error(tmp_path: Path, content: str | bytes) -> str:
    """The one-line error a spec naming this CSV file gets, the file's path written as {path}."""
    path = tmp_path / "d.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(SpecError) as info:
        data_of({"dataset": "csv:d.csv", "target": "y"}, tmp_path)
    return str(info.value).replace(str(path), "{path}")


@pytest.mark.parametrize(("content", "message"), BAD_CSV.values(), ids=BAD_CSV.keys())
def test_a_bad_csv_file_is_refused_with_its_line_column_and_value(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    assert csv_error(tmp_path, content) == f"<spec>: {message}"


def test_the_clean_file_and_its_quirky_twin_load_the_same(tmp_path: Path) -> None:
    """CRLF, a byte-order mark, blank lines (trailing too), quoted cells, spaces around numbers, a repeated column
    name, integer targets written as 1.0: the same arrays as the plain file."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).round(4), rng.integers(0, 3, 40)
    plain = "a,b,a,y\n" + "".join(f"{r[0]},{r[1]},{r[2]},{t}\n" for r, t in zip(x, y, strict=True))
    quirky = (
        "\ufeffa,b,a,y\r\n"
        + "".join(
            f'"{r[0]}", {r[1]} ,{r[2]},{t}.0\r\n' + ("\r\n" if i % 7 == 0 else "")
            for i, (r, t) in enumerate(zip(x, y, strict=True))
        )
        + "\r\n\r\n"
    )
    write(tmp_path / "plain.csv", plain)
    (tmp_path / "quirky.csv").write_bytes(quirky.encode())
    a, b = (
        load_dataset(data_of({"dataset": f"csv:{n}.csv", "target": "y"}, tmp_path), seed=0) for n in ("plain", "quirky")
    )
    assert a.task == b.task == "classification" and a.n_features == b.n_features == 3
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_numbers_pyarrow_does_not_read_are_read_as_float_does(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "a,b,y\n" + "1_000,2,0\n 3 ,\t4\t,1\n" * 6)
    ds = load_dataset(data_of({"dataset": "csv:d.csv", "target": "y", "validation_split": 0.5}, tmp_path), seed=0)
    raw = np.concatenate([ds.x_train, ds.x_val])
    assert sorted(set(np.round(raw[:, 0], 3))) == [-1.0, 1.0]  # 1000 and 3, standardised


def test_quoted_text_labels_with_commas_and_newlines(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "a,b,y\n" + '1,2,"cat, black"\n3,4,"dog\nbrown"\n' * 6)
    data = data_of({"dataset": "csv:d.csv", "target": "y"}, tmp_path)
    ds = load_dataset(data, seed=0)
    assert data.task == "classification" and ds.n_classes == 2 and len(ds.x_train) + len(ds.x_val) == 12


def test_a_row_longer_than_pyarrows_block_is_read_by_the_csv_module(tmp_path: Path) -> None:
    tiny = "0." + "0" * 100_000 + "1"  # 1e-100001, which is 0.0: a finite number 100 kB long
    short = ",".join(["0"] * 12) + ",{}\n"
    rows = [short.format(i % 2) for i in range(11)] + [",".join([tiny] * 12) + ",1\n"]  # 1.2 MB: more than a block
    write(tmp_path / "d.csv", ",".join("abcdefghijkl") + ",y\n" + "".join(rows))
    ds = load_dataset(data_of({"dataset": "csv:d.csv", "target": "y"}, tmp_path), seed=0)
    assert len(ds.x_train) + len(ds.x_val) == 12 and ds.n_features == 12 and ds.n_classes == 2


def test_validation_and_training_read_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner import datafiles

    reads: list[Path] = []
    read_csv = datafiles._read_csv
    monkeypatch.setattr(datafiles, "_read_csv", lambda path, target: reads.append(path) or read_csv(path, target))
    path = write(tmp_path / "d.csv", "a,b,y\n" + ROWS)
    spec = load_spec(write(tmp_path / "s.yaml", "data: {dataset: 'csv:d.csv', target: y}\noptimizers: {adam: {}}\n"))
    load_dataset(spec.data, seed=0)
    assert len(reads) == 1  # validation read it; training took its arrays
    load_dataset(spec.data, seed=0)
    assert len(reads) == 2  # taken, not kept: the driver holds no second copy for the whole study
    load_spec(tmp_path / "s.yaml")
    write(path, "a,b,y\n" + ROWS + "5,6,1\n")  # an edit between validation and training: size and mtime change
    ds = load_dataset(spec.data, seed=0)
    assert len(reads) == 4 and len(ds.y_train) + len(ds.y_val) == 13
