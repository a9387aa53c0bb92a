"""The reorder window on a fake clock: what it holds, when it lets go, in which order, and how
every item that comes too late or does not fit is still handed out and counted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from writers.reorder import GRAIN_NS, ReorderWindow

MS = 1_000_000
W = 1000 * MS


def window(max_bytes: int = 1 << 30, window_ns: int = W) -> ReorderWindow[str]:
    return ReorderWindow(window_ns, max_bytes)


def test_nothing_leaves_before_its_window_and_everything_after() -> None:
    w = window()
    assert not w.push(100, "a", 1, now=0)
    assert not w.push(200, "b", 1, now=5 * MS)  # within a's grain: one step, aged by b
    assert w.release(W + 5 * MS - 1) == []
    assert w.push(300, "c", 1, now=W + 5 * MS)  # the step's window has closed
    assert w.release(W + 5 * MS) == ["a", "b"]
    assert len(w) == 1 and w.held_bytes == 1
    assert w.release(2 * W) == []  # c arrived at W + 5 ms: not yet
    assert w.release(2 * W + 5 * MS) == ["c"]
    assert (w.late, w.forced, len(w), w.held_bytes) == (0, 0, 0, 0)


def test_a_straggler_within_the_window_goes_in_its_place() -> None:
    w = window()
    w.push(1_000, "owned-1", 1, now=0)
    w.push(3_000, "owned-3", 1, now=50 * MS)
    w.push(2_000, "unowned-2", 1, now=310 * MS)  # the collector held it 300 ms
    w.push(4_000, "owned-4", 1, now=320 * MS)
    assert w.release(W + 60 * MS) == ["owned-1", "unowned-2", "owned-3"]
    assert w.release(W + 330 * MS) == ["owned-4"]
    assert w.late == 0


def test_a_quiet_stream_is_flushed_without_any_later_item() -> None:
    w = window()
    w.push(7, "only", 1, now=0)
    assert w.release(W - 1) == []
    assert w.release(W) == ["only"]


def test_a_wait_never_exceeds_the_window_plus_one_grain() -> None:
    w = window()
    arrivals = range(0, 3 * GRAIN_NS, MS)  # one item a millisecond, in order
    out: list[tuple[int, int]] = []  # (arrival, released at)
    for i, now in enumerate(arrivals):
        w.push(i, now, 1, now)
    for now in range(0, W + 4 * GRAIN_NS, MS):
        out += [(arrival, now) for arrival in w.release(now)]
    assert [a for a, _ in out] == list(arrivals)
    assert all(W <= released - arrival <= W + GRAIN_NS for arrival, released in out)


def test_late_items_are_handed_out_at_once_and_counted() -> None:
    w = window()
    w.push(500, "b", 1, now=0)
    assert w.release(W) == ["b"]
    assert w.push(400, "a", 1, now=W + 1)  # earlier than what already left
    assert w.late == 1
    assert w.release(W + 1) == ["a"]  # never dropped, never held back for nothing
    w.push(500, "b2", 1, now=W + 2)  # the same time as the last released is not late
    assert w.late == 1


def test_ties_keep_their_arrival_order() -> None:
    w = window()
    for i, name in enumerate("abcde"):
        w.push(10 if name != "c" else 5, name, 1, now=i)
    assert w.drain() == ["c", "a", "b", "d", "e"]


def test_the_byte_bound_forces_the_earliest_out_and_counts_them() -> None:
    w = window(max_bytes=100)
    w.push(30, "30", 40, now=0)
    w.push(10, "10", 40, now=1)
    assert w.push(20, "20", 40, now=2)  # 120 bytes held: something must go
    assert w.release(2) == ["10"]
    assert (w.forced, w.held_bytes) == (1, 80)
    w.push(5, "5", 40, now=3)  # earlier than what was forced out: late
    assert w.late == 1
    assert w.release(3) == ["5"]
    assert w.drain() == ["20", "30"] and w.held_bytes == 0


def test_drain_hands_out_everything_in_order() -> None:
    w = window()
    for i, ts in enumerate([5, 3, 9, 1, 7, 3]):
        w.push(ts, f"{ts}.{i}", 1, now=i)
    assert w.drain() == ["1.3", "3.1", "3.5", "5.0", "7.4", "9.2"]
    assert len(w) == 0 and w.release(10 * W) == []


def test_items_lists_what_is_held() -> None:
    w = window()
    for i, ts in enumerate([5, 3, 9]):
        w.push(ts, str(ts), 1, now=i)
    assert sorted(w.items()) == ["3", "5", "9"]


def test_a_zero_window_releases_at_once() -> None:
    w = window(window_ns=0)
    assert w.push(5, "a", 1, now=0)
    assert w.release(0) == ["a"]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        ReorderWindow(-1, 10)
    with pytest.raises(ValueError):
        ReorderWindow(10, 0)


@st.composite
def delayed_stream(draw: st.DrawFn) -> list[tuple[int, int]]:
    """(ts, arrival) of items whose source sends each one at most ``W`` after any item with a
    later timestamp: arrival = ts + a delay in [0, W), consumers polled every 10 ms."""
    n = draw(st.integers(1, 60))
    ts = sorted(draw(st.lists(st.integers(0, 5 * W), min_size=n, max_size=n)))
    delays = draw(st.lists(st.integers(0, W - GRAIN_NS), min_size=n, max_size=n))
    return sorted(((t, t + d) for t, d in zip(ts, delays, strict=True)), key=lambda x: x[1])


@settings(max_examples=200, deadline=None)
@given(stream=delayed_stream(), poll=st.integers(1, 50))
def test_delays_within_the_window_come_out_sorted_and_whole(
    stream: list[tuple[int, int]], poll: int
) -> None:
    w: ReorderWindow[tuple[int, int]] = window()
    out: list[tuple[int, int]] = []
    for i, (ts, arrival) in enumerate(stream):
        if w.push(ts, (ts, i), 1, arrival) or i % poll == 0:
            out += w.release(arrival)
    out += w.drain()
    assert sorted(out) == out and len(out) == len(stream)
    assert w.late == 0 and w.forced == 0
