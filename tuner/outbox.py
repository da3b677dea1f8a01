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
        self._stopping = self._hurry = False
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
                with self._condition:
                    self._failures += 1
                    self._condition.notify_all()
                if self.down is None:
                    warn(f"mlflow: {where} does not answer ({exc}); its records wait in {self.directory}")
                self.down = str(exc)
                with self._condition:
                    self._condition.wait_for(lambda: self._stopping or self._hurry, timeout=retry)
                    retry = RETRY_FIRST if self._hurry else min(retry * 2, RETRY_MAX)
                    self._hurry = False
                continue
            except Exception as exc:  # refused, not unreachable: sending it again would fail again
                warn(f"mlflow: {where} refused a record ({type(exc).__name__}: {_first_line(exc)}); it is dropped")
                answer = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
            self._sent.write(json.dumps({"n": record["n"], "answer": answer}) + "\n")
            self._sent.flush()
            with self._condition:
                self._queue.pop(0)
                self._condition.notify_all()
            if self.down is not None:
                warn(f"mlflow: {where} answers again; sending the records that waited")
                self.down, retry = None, RETRY_FIRST

    def waiting(self) -> int:
        """How many records are not sent yet."""
        with self._condition:
            return len(self._queue)

    def close(self, *, patience: float) -> int:
        """Stop sending once every record is sent, or once ``patience`` seconds pass with none sent, or once
        the receiver, unreachable, fails the one more try it gets at once; returns how many records wait. With
        none waiting, the outbox is removed."""
        with self._condition:
            self._hurry = True
            self._condition.notify_all()
            last, progress, failures = len(self._queue), time.monotonic(), self._failures
            while self._queue and self._thread is not None and time.monotonic() - progress < patience:
                if self.down is not None and self._failures > failures:
                    break
                self._condition.wait(timeout=0.2)
                if len(self._queue) < last:
                    last, progress = len(self._queue), time.monotonic()
            self._stopping = True
            self._condition.notify_all()
            left = len(self._queue)
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # it may be inside a request; it is a daemon and holds nothing
        self._records.close()
        self._sent.close()
        if not left:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._lock.close()
        return left


def drain(
    directory: Path, send: Send, learn: Callable[[dict[str, Any], Any], None], warn: Callable[[str], None]
) -> int:
    """Send what an outbox still holds, in order, in this thread; returns how many records it sent and
    removes the outbox once none waits. ``learn(record, answer)`` is first given every record sent earlier;
    a record the receiver refuses is dropped, with a ``warn``.

    Raises:
        Unreachable: the receiver did not answer; what is sent so far stays sent.
        Busy: a running launch holds the outbox.
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
    with open(directory / SENT, "a", encoding="utf-8") as out:
        for record in records:
            if int(record["n"]) in answers:
                continue
            try:
                answer = None if "header" in record else send(record, True)
            except Unreachable:
                raise
            except Exception as exc:  # refused: sending it again would fail again
                warn(f"mlflow: a record was refused ({type(exc).__name__}: {_first_line(exc)}); it is dropped")
                answer = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
            out.write(json.dumps({"n": record["n"], "answer": answer}) + "\n")
            out.flush()
            sent += 1
    shutil.rmtree(directory, ignore_errors=True)
    return sent


def header(directory: Path) -> dict[str, Any]:
    """What an outbox is about: the header it was created with."""
    with open(directory / RECORDS, encoding="utf-8") as lines:
        return dict(json.loads(lines.readline())["header"])


def waiting(directory: Path) -> int:
    """How many of an outbox's records are not sent yet."""
    sent = {int(line["n"]) for line in _lines(directory / SENT)}
    return sum(1 for record in _lines(directory / RECORDS) if int(record["n"]) not in sent)


def outboxes(root: Path) -> list[Path]:
    """The outboxes under ``root``, oldest first (see :func:`new_directory`)."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / RECORDS).is_file())


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
