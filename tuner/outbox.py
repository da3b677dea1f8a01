"""A launch's tracking records, kept in the work directory and sent by a background thread.

The Tune loop only appends a record here, which costs a local write; a thread sends the records in order. When
the tracking server does not answer, the records wait on disk and the study carries on at full speed; the
thread retries, and at the end of the launch whatever is still waiting is left for ``tuner sync``.

Nothing here knows MLflow: a record is a JSON object, and the caller gives the function that sends one (see
:mod:`tuner.tracking`). An outbox is a directory: ``records.jsonl`` (one record per line, in order),
``sent.jsonl`` (the number of each record sent, with what sending it returned) and ``files/`` (copies of the
files records refer to, which may be gone by the time they are sent).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["Busy", "Outbox", "Unreachable", "drain", "header", "new_directory", "outboxes", "waiting"]

RECORDS = "records.jsonl"
LOCK = "lock"
#: Beside the outboxes: the records a receiver refused, kept for a person to read.
REFUSED = "refused.jsonl"
#: How long a request may take (tuner.tracking sets MLflow's timeout to this): close() waits for one.
REQUEST_SECONDS = 10.0
SENT = "sent.jsonl"
FILES = "files"
#: The first retry after a failure waits this long, doubling up to RETRY_MAX.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


class Busy(Exception):
    """The outbox belongs to a launch that is still running (and sending it)."""


class Unreachable(Exception):
    """The receiver did not answer (or answered that it cannot now): the record waits and is sent again."""


#: ``send(record, sent_before)``: send one record; what it returns (JSON) is kept with it in ``sent.jsonl``.
#: ``sent_before`` is true when an earlier attempt may have reached the receiver (a retry, or a record that an
#: earlier process was sending when it stopped), so that a record that creates something looks for it first.
Send = Callable[[dict[str, Any], bool], Any]


class Outbox:
    """An ordered, durable queue of records with one thread sending them.

    Args:
        directory: where the records are kept (a new directory).
        header: what the outbox is about (the study, the tracking URI), kept as its first record.
    """

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.directory = directory
        (directory / FILES).mkdir(parents=True, exist_ok=True)
        lock = _locked(directory)
        if lock is None:
            raise Busy(str(directory))
        self._lock = lock
        self._records = open(directory / RECORDS, "a", encoding="utf-8")  # noqa: SIM115 (open for the launch)
        self._sent = open(directory / SENT, "a", encoding="utf-8")  # noqa: SIM115
        self._queue: list[dict[str, Any]] = []
        self._numbers = self._files = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = self._hurry = self._closed = False
        self._failures = 0
        #: The last error while the receiver is unreachable; None while records go through.
        self.down: str | None = None
        self.put({"header": header})

    def file(self, source: Path, name: str | None = None) -> str:
        """Copy ``source`` (a file or a directory) into the outbox; the path, relative to the outbox, that a
        record names it by."""
        with self._condition:
            self._files += 1
            relative = f"{FILES}/{self._files}/{name or source.name}"
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        return relative

    def put(self, record: dict[str, Any]) -> None:
        """Keep ``record`` on disk and queue it for sending."""
        with self._condition:
            self._numbers += 1
            record = {"n": self._numbers, **record}
            self._records.write(json.dumps(record) + "\n")
            self._records.flush()
            self._queue.append(record)
            self._condition.notify_all()

    def start(self, send: Send, warn: Callable[[str], None], where: str) -> None:
        """Send the records on a daemon thread, in order, as they come. ``warn`` is called when the receiver
        (``where``) stops answering, when it answers again, and when it refuses a record (which is dropped)."""
        self._thread = threading.Thread(target=self._run, args=(send, warn, where), name="tuner-outbox", daemon=True)
        self._thread.start()

    def _run(self, send: Send, warn: Callable[[str], None], where: str) -> None:
        try:
            self._loop(send, warn, where)
        except Exception as exc:  # a fault of this machine (a full disk): say so; close() sees the thread gone
            with contextlib.suppress(Exception):
                warn(f"mlflow: stopped sending records ({type(exc).__name__}: {_first_line(exc)})")

    def _loop(self, send: Send, warn: Callable[[str], None], where: str) -> None:
        retry = RETRY_FIRST
        tried: set[int] = set()
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                record = self._queue[0]
            try:
                answer = None if "header" in record else send(record, record["n"] in tried)
            except Unreachable as exc:
                tried.add(record["n"])
                if self.down is None:
                    warn(f"mlflow: {where} does not answer ({exc}); its records wait in {self.directory}")
                with self._condition:
                    self.down = str(exc)
                    self._failures += 1
                    self._condition.notify_all()
                    self._condition.wait_for(lambda: self._stopping or self._hurry, timeout=retry)
                    retry = RETRY_FIRST if self._hurry else min(retry * 2, RETRY_MAX)
                    self._hurry = False
                continue
            except Exception as exc:  # refused, not unreachable: sending it again would fail again
                answer = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
                kept = _refuse(self.directory, record, answer["error"])
                warn(f"mlflow: {where} refused a record ({answer['error']}); it is kept in {kept}")
            with self._condition:
                if self._closed:  # close() gave up on this request; the record counts as waiting
                    return
                self._sent.write(json.dumps({"n": record["n"], "answer": answer}) + "\n")
                self._sent.flush()
                self._queue.pop(0)
                back, self.down = self.down is not None, None
                self._condition.notify_all()
            if back:
                warn(f"mlflow: {where} answers again; sending the records that waited")
                retry = RETRY_FIRST

    def waiting(self) -> int:
        """How many records are not sent yet."""
        with self._condition:
            return len(self._queue)

    def close(self, *, patience: float) -> int:
        """Stop sending once every record is sent, or once ``patience`` seconds pass with none sent, or once
        the receiver, unreachable, fails the one more try it gets at once; returns how many records wait. With
        none waiting, the outbox is removed."""
        thread = self._thread
        with self._condition:
            self._hurry = True
            self._condition.notify_all()
            last, progress, failures = len(self._queue), time.monotonic(), self._failures
            while self._queue and thread is not None and thread.is_alive():
                if time.monotonic() - progress > patience or (self.down is not None and self._failures > failures):
                    break
                self._condition.wait(timeout=0.2)
                if len(self._queue) < last:
                    last, progress = len(self._queue), time.monotonic()
            self._stopping = True
            self._condition.notify_all()
        if thread is not None:
            thread.join(timeout=REQUEST_SECONDS)  # a request under way ends within its timeout
        with self._condition:
            self._closed = True  # a request still under way now writes nothing
            left = len(self._queue)
            self._records.close()
            self._sent.close()
        if not left:
            _remove(self.directory)
        self._lock.close()
        return left


def drain(
    directory: Path, send: Send, learn: Callable[[dict[str, Any], Any], None], warn: Callable[[str], None]
) -> int:
    """Send what an outbox still holds, in order, in this thread; returns how many records it sent and
    removes the outbox once none waits. ``learn(record, answer)`` is first given every record sent earlier;
    a record the receiver refuses is set aside (see :func:`refused`), with a ``warn``.

    Raises:
        Unreachable: the receiver did not answer; what is sent so far stays sent.
        Busy: another process holds the outbox (a running launch, or another sync).
        FileNotFoundError: the outbox is gone (another process finished it).
    """
    lock = _locked(directory)
    if lock is None:
        raise Busy(str(directory))
    with lock:
        return _drain(directory, send, learn, warn)


def _drain(
    directory: Path, send: Send, learn: Callable[[dict[str, Any], Any], None], warn: Callable[[str], None]
) -> int:
    answers = {int(line["n"]): line.get("answer") for line in _lines(directory / SENT)}
    records = list(_lines(directory / RECORDS))
    for record in records:
        if int(record["n"]) in answers:
            learn(record, answers[int(record["n"])])
    sent = 0
    with open(directory / SENT, "a+", encoding="utf-8") as out:
        if out.tell() and (out.seek(out.tell() - 1), out.read(1))[1] != "\n":
            out.write("\n")  # the line a crash cut short ends here; it does not count
        for record in records:
            if int(record["n"]) in answers:
                continue
            try:
                answer = None if "header" in record else send(record, True)
            except Unreachable:
                raise
            except Exception as exc:  # refused: sending it again would fail again
                answer = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
                kept = _refuse(directory, record, answer["error"])
                warn(f"mlflow: a record was refused ({answer['error']}); it is kept in {kept}")
            out.write(json.dumps({"n": record["n"], "answer": answer}) + "\n")
            out.flush()
            sent += "header" not in record
    _remove(directory)
    return sent


def _refuse(directory: Path, record: dict[str, Any], error: str) -> Path:
    """Keep a record the receiver refused beside the outboxes, where it outlives its outbox."""
    kept = directory.parent / REFUSED
    with open(kept, "a", encoding="utf-8") as out:
        out.write(json.dumps({"outbox": directory.name, "error": error, "record": record}) + "\n")
    return kept


def _remove(directory: Path) -> None:
    """Remove an outbox, first out of sight (renamed, with its lock still held), so that no other process
    opens it half-deleted."""
    gone = directory.with_name(f".{directory.name}.done")
    with contextlib.suppress(OSError):
        directory.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)


def header(directory: Path) -> dict[str, Any] | None:
    """What an outbox is about: the header it was created with; None if it has none (yet), or is gone."""
    try:
        with open(directory / RECORDS, encoding="utf-8") as lines:
            return dict(json.loads(lines.readline())["header"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def waiting(directory: Path) -> int:
    """How many of an outbox's records are not sent yet."""
    sent = {int(line["n"]) for line in _lines(directory / SENT)}
    return sum(1 for record in _lines(directory / RECORDS) if int(record["n"]) not in sent)


def outboxes(root: Path) -> list[Path]:
    """The outboxes under ``root``, oldest first (see :func:`new_directory`)."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if not d.name.startswith(".") and (d / RECORDS).is_file())


def new_directory(root: Path) -> Path:
    """A name for a new outbox under ``root``: by names, outboxes sort oldest first."""
    return root / f"{time.time_ns():020d}-{os.getpid()}"


def _locked(directory: Path) -> IO[str] | None:
    """The outbox's lock, held (a launch holds its own outbox's while it runs; the system drops it if the
    launch dies), or None if another process holds it."""
    import fcntl

    lock = open(directory / LOCK, "a")  # noqa: SIM115 (held until closed)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of ``path``; a last line cut short (the process died writing it) does not count."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
