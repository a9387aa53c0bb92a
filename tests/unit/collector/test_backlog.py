"""Backlog: the count of what ZeroMQ may still hold of one topic, released by markers."""

from __future__ import annotations

import random
from dataclasses import dataclass

from collector.backlog import MARK_BYTES, Backlog


@dataclass
class FakeTracker:
    done: bool = False


def test_copied_messages_are_marked_once_in_mark_bytes() -> None:
    backlog, marked = Backlog(), 0
    for _ in range(64 * 10):
        if backlog.wants_marker(4096):
            backlog.add_marker(FakeTracker(), 4096)
            marked += 1
        else:
            backlog.add_copied(4096)
    assert marked == 10 == 64 * 10 * 4096 // MARK_BYTES
    assert backlog.held() == 64 * 10 * 4096


def test_a_done_marker_releases_it_and_everything_charged_before() -> None:
    backlog = Backlog(mark_bytes=100)
    backlog.add_copied(30)
    backlog.add_copied(40)
    first = FakeTracker()
    backlog.add_marker(first, 50)
    backlog.add_copied(20)
    assert backlog.held() == 140
    first.done = True
    assert backlog.held() == 20  # what follows the marker waits for the next one


def test_markers_release_in_order_only() -> None:
    """A later marker done before an earlier one (its pipe was full and never took it) says
    nothing of what the earlier one's pipe still holds."""
    backlog = Backlog(mark_bytes=10)
    first, second, third = FakeTracker(), FakeTracker(), FakeTracker()
    for tracker in (first, second, third):
        backlog.add_copied(5)
        backlog.add_marker(tracker, 10)
    second.done = third.done = True
    assert backlog.held() == 45
    first.done = True
    assert backlog.held() == 0


def test_mark_bytes_zero_tracks_every_message() -> None:
    backlog = Backlog(mark_bytes=0)
    assert backlog.wants_marker(0) and backlog.wants_marker(60 * 1024)


def test_held_is_charged_less_released_through_the_last_done_marker() -> None:
    """Any interleaving: held equals the bytes charged after the last marker that is done with
    every earlier marker done too."""
    rng = random.Random(7)
    backlog = Backlog(mark_bytes=1000)
    log: list[tuple[FakeTracker | None, int]] = []
    for _ in range(2000):
        size = rng.randrange(1, 600)
        if backlog.wants_marker(size):
            tracker = FakeTracker()
            backlog.add_marker(tracker, size)
            log.append((tracker, size))
        else:
            backlog.add_copied(size)
            log.append((None, size))
        for tracker, _ in log:
            if tracker is not None and not tracker.done and rng.random() < 0.05:
                tracker.done = True
        released, running = 0, 0
        for tracker, size in log:
            running += size
            if tracker is not None:
                if not tracker.done:
                    break
                released = running
        assert backlog.held() == sum(size for _, size in log) - released
