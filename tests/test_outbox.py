"""The outbox on its own: order, durability, retries, refusals, a running launch's lock.

The receiver here is a plain function standing in for MLflow, which tests/test_tracking.py runs for real (a
real ``mlflow server`` killed and started again mid-study).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tuner import outbox


class Receiver:
    """Takes records in order; while ``down`` it raises Unreachable; it refuses records marked ``bad``."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.retried: list[int] = []
        self.down = threading.Event()

    def __call__(self, record: dict[str, Any], sent_before: bool) -> Any:
        if sent_before:
            self.retried.append(record["n"])
        if self.down.is_set():
            raise outbox.Unreachable("connection refused")
        if record.get("bad"):
            raise ValueError("no such run")
        self.got.append(record)
        return f"answer-{record['n']}"


def numbers(records: list[dict[str, Any]]) -> list[Any]:
    return [r.get("i") for r in records]


def test_records_go_in_order_and_the_outbox_is_removed_once_empty(tmp_path: Path) -> None:
    box = outbox.Outbox(outbox.new_directory(tmp_path), {"study": "s"})
    receiver = Receiver()
    box.start(receiver, lambda text: None, "here")
    for i in range(50):
        box.put({"i": i})
    assert box.close(patience=10) == 0
    assert numbers(receiver.got) == list(range(50))
    assert not list(tmp_path.iterdir())


def test_an_unreachable_receiver_holds_nothing_up_and_gets_everything_when_back(tmp_path: Path) -> None:
    warnings: list[str] = []
    box = outbox.Outbox(outbox.new_directory(tmp_path), {"study": "s"})
    receiver = Receiver()
    receiver.down.set()
    box.start(receiver, warnings.append, "the server")
    started = time.monotonic()
    for i in range(20):
        box.put({"i": i})
    assert time.monotonic() - started < 1.0  # putting never waits on the receiver
    time.sleep(1.5)
    assert receiver.got == [] and box.waiting() == 20 and box.down == "connection refused"
    receiver.down.clear()
    assert box.close(patience=10) == 0
    assert numbers(receiver.got) == list(range(20))
    assert receiver.retried and receiver.retried[0] == receiver.got[0]["n"]  # the first was tried again
    assert [w.split(" (")[0] for w in warnings] == ["mlflow: the server does not answer", warnings[1]]
    assert warnings[1] == "mlflow: the server answers again; sending the records that waited"


def test_closing_with_the_receiver_down_gives_up_at_once_and_keeps_the_records(tmp_path: Path) -> None:
    directory = outbox.new_directory(tmp_path)
    box = outbox.Outbox(directory, {"study": "s", "tracking_uri": "http://x"})
    receiver = Receiver()
    receiver.down.set()
    box.start(receiver, lambda text: None, "here")
    for i in range(5):
        box.put({"i": i})
    started = time.monotonic()
    assert box.close(patience=60) == 5
    assert time.monotonic() - started < 10  # one more try, not the whole patience
    assert outbox.waiting(directory) == 5 and outbox.header(directory) == {"study": "s", "tracking_uri": "http://x"}

    receiver.down.clear()
    learned: list[tuple[int, Any]] = []
    assert outbox.drain(directory, receiver, lambda r, a: learned.append((r["n"], a)), print) == 5
    assert numbers(receiver.got) == list(range(5))
    assert learned == [(1, None)]  # the header, sent (to nobody) before the receiver went away
    assert not directory.exists()


def test_a_refused_record_is_dropped_with_a_warning_and_the_rest_go(tmp_path: Path) -> None:
    warnings: list[str] = []
    box = outbox.Outbox(outbox.new_directory(tmp_path), {"study": "s"})
    receiver = Receiver()
    box.start(receiver, warnings.append, "here")
    box.put({"i": 0})
    box.put({"i": 1, "bad": True})
    box.put({"i": 2})
    assert box.close(patience=10) == 0
    assert numbers(receiver.got) == [0, 2]
    assert warnings == [
        f"mlflow: here refused a record (ValueError: no such run); it is kept in {tmp_path}/refused.jsonl"
    ]
    (kept,) = [json.loads(line) for line in (tmp_path / "refused.jsonl").read_text().splitlines()]
    assert kept["record"]["i"] == 1 and kept["error"] == "ValueError: no such run"


def test_a_crashed_launch_leaves_its_records_for_the_next_process(tmp_path: Path) -> None:
    """What a ``kill -9`` leaves: records on disk, some sent, the last line cut short; the lock released."""
    directory = outbox.new_directory(tmp_path)
    box = outbox.Outbox(directory, {"study": "s"})
    receiver = Receiver()
    receiver.down.set()
    box.start(receiver, lambda text: None, "here")
    for i in range(3):
        box.put({"i": i})
    with pytest.raises(outbox.Busy):  # while the launch runs, only it sends its records
        outbox.drain(directory, receiver, lambda r, a: None, print)
    while box.down is None:  # the header has gone, the first record has failed
        time.sleep(0.01)
    box.close(patience=0)
    with open(directory / outbox.SENT, "a") as sent:  # record 2 ({"i": 0}) went before the crash
        sent.write(json.dumps({"n": 2, "answer": "answer-2"}) + "\n")
    with open(directory / outbox.RECORDS, "a") as records:
        records.write('{"n": 5, "i"')  # the write the crash cut short
    receiver.down.clear()
    receiver.retried.clear()
    learned: list[tuple[int, Any]] = []
    assert outbox.drain(directory, receiver, lambda r, a: learned.append((r["n"], a)), print) == 2
    assert numbers(receiver.got) == [1, 2]
    assert learned == [(1, None), (2, "answer-2")]
    assert receiver.retried == [3, 4]  # a record an earlier process may have sent is marked as such


def test_outboxes_are_listed_oldest_first(tmp_path: Path) -> None:
    """Named oldest first, made on disk in a mixed order: neither a directory listing in the order of making
    (or its reverse), nor one in hash order, gives the names' order by chance."""
    names = [outbox.new_directory(tmp_path) for _ in range(8)]
    assert names == sorted(names) and len(set(names)) == 8
    for i in (3, 0, 6, 1, 7, 4, 2, 5):
        outbox.Outbox(names[i], {"study": "s"}).close(patience=0)  # never started: its header waits
    assert outbox.outboxes(tmp_path) == names


def test_a_sending_thread_that_dies_is_noticed_at_the_end(tmp_path: Path) -> None:
    """A fault of the sender itself (here its warning breaks) ends the thread: close() does not wait for it."""

    def warn(text: str) -> None:
        raise BrokenPipeError("stderr is gone")

    box = outbox.Outbox(outbox.new_directory(tmp_path), {"study": "s"})
    receiver = Receiver()
    receiver.down.set()
    box.start(receiver, warn, "here")
    box.put({"i": 0})
    started = time.monotonic()
    assert box.close(patience=60) == 1
    assert time.monotonic() - started < 5


def test_a_sent_line_cut_short_by_a_crash_does_not_swallow_the_next(tmp_path: Path) -> None:
    directory = outbox.new_directory(tmp_path)
    box = outbox.Outbox(directory, {"study": "s"})
    for i in range(2):
        box.put({"i": i})
    box.close(patience=0)  # never started: all wait
    with open(directory / outbox.SENT, "a") as sent:
        sent.write('{"n": 1, "ans')  # the crash cut this line short
    receiver = Receiver()
    receiver.down.set()
    with pytest.raises(outbox.Unreachable):  # after it marked the header sent
        outbox.drain(directory, receiver, lambda r, a: None, print)
    assert outbox.waiting(directory) == 2
