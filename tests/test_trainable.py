"""The trial function's own rules (the trial function itself runs in every study test)."""

from __future__ import annotations

from tuner.trainable import _checkpoint_rule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_come_by_time_by_default() -> None:
    clock = Clock()
    due = _checkpoint_rule(None, 10.0, clock)
    clock.now += 4
    assert not due(1)
    clock.now += 4
    assert not due(2)  # 8 s of training
    clock.now += 3
    assert due(3)  # 11 s since the start
    clock.now += 9
    assert not due(4)  # the clock starts again at each checkpoint: 9 s
    clock.now += 1
    assert due(5)


def test_checkpoint_every_given_counts_epochs_whatever_the_time() -> None:
    clock = Clock()
    due = _checkpoint_rule(3, 0.001, clock)
    seen = []
    for epoch in range(1, 10):
        clock.now += 60
        seen.append(due(epoch))
    assert [epoch for epoch, yes in zip(range(1, 10), seen, strict=True) if yes] == [3, 6, 9]
