"""The bridge's spool: bounded, counted, confirmed and resent in order."""

from __future__ import annotations

import pytest

from tracecap.tools.spool import Entry, Spool


def entry(n: int, size: int = 10) -> Entry:
    return Entry(f"tracecap.h.t{n % 2}", f"h:1:t.:{n}", {}, b"x" * size)


def test_entries_are_sent_in_order_and_confirmed_from_the_front() -> None:
    spool = Spool(10, 1000)
    for n in range(3):
        assert spool.add(entry(n))
    assert [spool.next_to_send().msg_id for _ in range(3)] == [f"h:1:t.:{n}" for n in range(3)]
    assert spool.next_to_send() is None
    assert spool.confirm().msg_id == "h:1:t.:0"
    assert (len(spool), spool.bytes, spool.sent) == (2, 20, 2)
    assert spool.counters.stored == 1 and spool.counters.stored_bytes == 10


def test_a_rewind_sends_everything_unconfirmed_again_in_order() -> None:
    spool = Spool(10, 1000)
    for n in range(4):
        spool.add(entry(n))
    spool.next_to_send()
    spool.next_to_send()
    spool.confirm()
    spool.rewind()
    assert [spool.next_to_send().msg_id for _ in range(3)] == ["h:1:t.:1", "h:1:t.:2", "h:1:t.:3"]


def test_past_its_bounds_new_messages_are_dropped_and_counted_per_subject() -> None:
    spool = Spool(3, 25)
    assert spool.add(entry(0)) and spool.add(entry(1))
    assert not spool.add(entry(2))  # 30 bytes > 25
    assert spool.add(entry(3, size=5))
    assert not spool.add(entry(5, size=1))  # 3 messages
    c = spool.counters
    assert (c.dropped_messages, c.dropped_bytes) == (2, 11)
    assert c.dropped == {"tracecap.h.t0": 1, "tracecap.h.t1": 1}
    assert (c.spooled, c.peak_messages, c.peak_bytes) == (3, 3, 25)
    spool.next_to_send()
    spool.confirm()
    assert spool.add(entry(6))  # room again


def test_confirming_nothing_in_flight_is_a_bug_not_a_silent_loss() -> None:
    spool = Spool(1, 1)
    with pytest.raises(RuntimeError):
        spool.confirm()
    with pytest.raises(ValueError):
        Spool(0, 1)
