"""A user's data file (``csv:`` or ``npz:``) as numpy arrays, every fault refused with its place.

A CSV file is parsed by pyarrow (imported only for one) and read once per process: validating the spec reads
it to find the task and keeps the arrays for :func:`tuner.data.load_dataset`. Every error names the file line
(the header is line 1), the column and the value found, as Python's csv module would read the file.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import math
import threading
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_INFERRED_CLASSES", "MIN_EXAMPLES", "DataFileError", "csv_columns", "resolve_task", "user_arrays"]

#: An integer target with at most this many distinct values is read as class labels.
MAX_INFERRED_CLASSES = 20
#: The fewest examples a dataset may have: a validation split and a training part need a few each.
MIN_EXAMPLES = 10


class DataFileError(Exception):
    """A user's data file breaks a rule; spec validation turns it into a located :class:`SpecError`."""

    def __init__(self, key: str, rule: str, got: Any) -> None:
        super().__init__(f"{key}: {rule}")
        self.key, self.rule, self.got = key, rule, got


# Validating a spec reads its file (to find the task), and training needs the same arrays moments later in the same
# process: `tuner launch` and a submitted job both call load_spec, then load_dataset. So the arrays of the last file
# read are kept until load_dataset takes them: a launch reads its file once, and the driver does not keep a second
# copy of the data for the whole study. One entry, as a spec names one file. The key holds what changes when the file
# does (size, mtime_ns), so a file edited between validation and training is read afresh.
_last_read: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
_last_read_lock = threading.Lock()  # a program may validate and load from several threads


def user_arrays(kind: str, path: Path, target: str | None, *, take: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A user file's features and target, kept for a later call; ``take`` hands them over and keeps nothing."""
    stat = path.stat()
    key = (kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns, target)
    with _last_read_lock:
        kept = _last_read.get(key)
        if take:
            _last_read.clear()
    if kept is not None:
        return kept
    if kind == "csv":
        assert target is not None
        arrays = _read_csv(path, target)
    else:
        arrays = _read_npz(path)
    if not take:
        with _last_read_lock:
            _last_read.clear()
            _last_read[key] = arrays
    return arrays


def _check_utf8(path: Path, kind: str) -> None:
    """Refuse a file that is not UTF-8 text (a byte-order mark is allowed), naming the line of the first bad byte.
    Read in chunks, so that a large file is not held whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 24):
                if not chunk.isascii() or decoder.getstate()[0]:
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raw = path.read_bytes()  # rare: find where, in the whole file ("utf-8": positions count the BOM)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            rule = f"{path} line {line}: must be UTF-8 text; byte 0x{raw[exc.start]:02x} is not"
            raise DataFileError("data.dataset", rule, f"{kind}:{path}") from None


def _csv_rows(path: Path) -> Generator[tuple[int, list[str]]]:
    """A UTF-8 CSV file's rows as Python's csv module reads them, header first, each with the file line it starts on
    (a quoted field may span lines); a blank line is an empty row."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file)
        end = 0
        try:
            for row in reader:
                yield end + 1, row
                end = reader.line_num
        except csv.Error as exc:  # e.g. an unclosed quote that runs past the csv module's field size limit
            rule = f"{path} line {reader.line_num}: cannot be read as CSV: {exc}"
            raise DataFileError("data.dataset", rule, f"csv:{path}") from None


def _csv_header(path: Path) -> list[str] | None:
    """The first row of a UTF-8 CSV file; None if it has none."""
    rows = _csv_rows(path)
    first = next(rows, None)
    rows.close()
    return None if first is None else first[1]


def _row(path: Path, index: int) -> tuple[int, list[str]]:
    """Data row ``index`` (0-based, below the header, blank lines not counted) and the file line it starts on."""
    rows = _csv_rows(path)
    found = next(itertools.islice(((n, row) for n, row in itertools.islice(rows, 1, None) if row), index, None))
    rows.close()
    return found


def csv_columns(path: Path) -> list[str]:
    """The header of a CSV file (empty if the file is).

    Raises:
        DataFileError: the file is not UTF-8 text.
    """
    _check_utf8(path, "csv")
    return _csv_header(path) or []


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    """A CSV file's features (float64) and target, read by pyarrow in parallel and converted a column at a time.

    pyarrow reads the feature columns as numbers if it can (fastest, and no text kept), else every cell as text;
    a file it cannot parse at all (a row of the wrong length, a row longer than pyarrow's block) is read by Python's
    csv module, row by row. Either way the file reads as the csv module reads it, the same error is found (the first
    in the file) and, to keep the work off the common path, only then is the file scanned for the line it is on.
    """
    import numpy as np
    import pyarrow as pa

    _check_utf8(path, "csv")
    header = _csv_header(path)
    if header is None:
        raise DataFileError("data.dataset", f"{path} is empty", f"csv:{path}")
    features = _features(path, header, target)
    t = header.index(target)
    table = None
    for numbers in (features, []):
        try:
            table = _parse_csv(path, len(header), numbers, labels=t)
            break
        except pa.ArrowInvalid:  # a cell pyarrow does not read as a number, or a row it cannot parse
            continue
        except pa.ArrowException as exc:
            raise DataFileError("data.dataset", f"{path}: pyarrow cannot read it: {exc}", f"csv:{path}") from None
    if table is None:
        return _scan_csv(path, header, target, features)
    _check_size(path, table.num_rows, target, features)
    x = np.empty((table.num_rows, len(features)), dtype=np.float64)
    errors: list[tuple[int, int]] = []  # (row, place): the first bad row of each column (the target's place is last)
    for j, i in enumerate(features):
        _floats(table.column(i), into=x[:, j])
        bad = ~np.isfinite(x[:, j])
        if bad.any():
            errors.append((int(bad.argmax()), j))
    cells = table.unify_dictionaries().column(t)  # one dictionary for every chunk: the distinct labels
    labels: list[str] = cells.chunk(0).dictionary.to_pylist()
    codes = _copy([chunk.indices for chunk in cells.chunks], np.empty(table.num_rows, dtype=np.int32))
    blank = [k for k, label in enumerate(labels) if not label.strip()]
    if blank:
        errors.append((int(np.isin(codes, blank).argmax()), len(features)))
    if errors:  # the first a reading row by row would meet
        index, j = min(errors)
        line, row = _row(path, index)
        if j < len(features):
            raise _bad_feature(path, line, header[features[j]], row[features[j]])
        raise _no_target(path, line, target, row[t])
    return x, _labels(labels, codes, path, target, lambda index: _row(path, index)[0])


def _parse_csv(path: Path, width: int, numbers: list[int], *, labels: int) -> Any:
    """The cells below the header as a pyarrow Table: the columns at places ``numbers`` as float64, the one at
    ``labels`` as dictionary-encoded text (its distinct cells and an index into them), the rest as text. Columns
    are named by place, as a header may repeat a name.

    Raises:
        pyarrow.ArrowInvalid: a row pyarrow cannot parse, or a cell of ``numbers`` that it does not read as a number.
    """
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    names, typed = [str(i) for i in range(width)], set(numbers)
    types = {name: pa.float64() if i in typed else pa.string() for i, name in enumerate(names)}
    types[names[labels]] = pa.dictionary(pa.int32(), pa.string())
    with pa.OSFile(str(path)) as file:  # a file object: no guessing compression from the file's name
        return pa_csv.read_csv(
            file,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows_after_names=1),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),  # quoted newlines, as the csv module reads them
            convert_options=pa_csv.ConvertOptions(
                column_types=types, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )


def _floats(cells: Any, *, into: np.ndarray) -> None:
    """Write a pyarrow column into ``into`` as float64, NaN where float() cannot read a cell. pyarrow reads a subset of
    what float() does (not '1_000' or other scripts' digits; as text, not ' 1' either) and rounds as it does; float()
    reads the rest."""
    import pyarrow as pa

    if cells.type == pa.float64():
        _copy(cells.chunks, into)
        return
    import pyarrow.compute as pc  # a tenth of a second; only for a file whose numbers are not all plain

    for attempt in (cells, pc.ascii_trim_whitespace(cells)):
        try:
            _copy(pc.cast(attempt, pa.float64()).chunks, into)
            return
        except pa.ArrowInvalid:
            pass
    into[:] = [_float(cell) for cell in cells.to_pylist()]


def _copy(chunks: Iterable[Any], into: np.ndarray) -> np.ndarray:
    """The chunks of a pyarrow column of numbers without nulls copied into ``into``, from their memory: pyarrow's
    own to_numpy imports pandas, a third of a second."""
    import numpy as np

    start = 0
    for chunk in chunks:
        values = np.frombuffer(
            chunk.buffers()[1], dtype=into.dtype, count=len(chunk), offset=chunk.offset * into.itemsize
        )
        into[start : start + len(chunk)] = values
        start += len(chunk)
    return into


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _scan_csv(path: Path, header: list[str], target: str, features: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV file with Python's csv module, row by row and cell by cell: for a file pyarrow cannot parse."""
    import numpy as np

    t = header.index(target)
    count, problem = 0, None
    x: list[list[float]] = []
    y: list[str] = []
    lines: list[int] = []
    for line, row in itertools.islice(_csv_rows(path), 1, None):
        if not row:
            continue
        count += 1  # every row counts towards the size, which is checked first
        if problem is not None:
            continue
        if len(row) != len(header):
            rule = f"{path} line {line} has {len(row)} fields, the header {len(header)}"
            problem = DataFileError("data.dataset", rule, f"csv:{path}")
            continue
        values = [_float(row[i]) for i in features]
        bad = next((j for j, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            problem = _bad_feature(path, line, header[features[bad]], row[features[bad]])
        elif not row[t].strip():
            problem = _no_target(path, line, target, row[t])
        else:
            x.append(values)
            y.append(row[t])
            lines.append(line)
    _check_size(path, count, target, features)
    if problem is not None:
        raise problem
    labels, codes = np.unique(np.array(y), return_inverse=True)
    return np.array(x, dtype=np.float64), _labels(labels.tolist(), codes, path, target, lines.__getitem__)


def _features(path: Path, header: list[str], target: str) -> list[int]:
    """The places of the feature columns: every column but the target's."""
    if target not in header:
        import difflib

        close = difflib.get_close_matches(target, header, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        rule = f"no such column in {path.name}{hint} (columns: {', '.join(header)})"
        raise DataFileError("data.target", rule, target)
    t = header.index(target)
    return [i for i in range(len(header)) if i != t]


def _check_size(path: Path, rows: int, target: str, features: list[int]) -> None:
    if rows < MIN_EXAMPLES:
        rule = f"{path} has {rows} row{'s' * (rows != 1)}; a dataset needs at least {MIN_EXAMPLES}"
        raise DataFileError("data.dataset", rule, f"csv:{path}")
    if not features:
        raise DataFileError("data.dataset", f"{path} has no feature columns besides {target!r}", f"csv:{path}")


def _bad_feature(path: Path, line: int, column: str, cell: str) -> DataFileError:
    rule = f"{path} line {line}, column {column!r}: features must be finite numbers"
    return DataFileError("data.dataset", rule, cell)


def _no_target(path: Path, line: int, target: str, cell: str) -> DataFileError:
    return DataFileError("data.target", f"{path} line {line}, column {target!r}: every row needs a target value", cell)


def _labels(labels: list[str], codes: np.ndarray, path: Path, target: str, line: Callable[[int], int]) -> np.ndarray:
    """The target column, given as its distinct cells and each row's index into them: numbers if every cell is one
    (integers if whole), else text labels. ``line(row)`` is the file line a row starts on."""
    import numpy as np

    try:
        numbers = np.array([float(v) for v in labels], dtype=np.float64)[codes]
    except ValueError:
        return np.array(labels)[codes]
    if not np.all(np.isfinite(numbers)):
        n = int(np.flatnonzero(~np.isfinite(numbers))[0])
        rule = f"{path} line {line(n)}, column {target!r}: a numeric target must be finite"
        raise DataFileError("data.target", rule, labels[codes[n]])
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

    _, y = user_arrays(kind, path, target)
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
