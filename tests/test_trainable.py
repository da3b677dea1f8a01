"""The trial function's own rules (the trial function itself runs in every study test)."""

from __future__ import annotations

import time

from tuner.trainable import _checkpoint_rule


def test_checkpoints_come_by_time_by_default() -> None:
    due = _checkpoint_rule(None, 0.3)
    assert [due(epoch) for epoch in (1, 2, 3)] == [False, False, False]  # well under 0.3 s
    time.sleep(0.35)
    assert due(4)  # 0.3 s of training since the start
    assert not due(5)  # the clock starts again at each checkpoint
    time.sleep(0.35)
    assert due(6)


def test_checkpoint_every_given_counts_epochs_whatever_the_time() -> None:
    due = _checkpoint_rule(3, 0.0)
    assert [epoch for epoch in range(1, 10) if due(epoch)] == [3, 6, 9]
