"""Ring: draining a BPF ring buffer laid out as the kernel lays it out, in anonymous memory."""

import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.ring_reader import (
    BUSY_BIT,
    DISCARD_BIT,
    RELEASE_EVERY_BYTES,
    Ring,
    RingReader,
    RingReaderError,
    record_bytes,
)

PAGE = mmap.PAGESIZE


class FakeKernel:
    """The producer side: writes records and the producer position as the kernel does."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.consumer = mmap.mmap(-1, PAGE)
        self.upper = mmap.mmap(-1, PAGE + size)
        self.prod = 0
        self.seen: list[bytes] = []
        self.consumer_at_callback: list[int] = []

    def ring(self, callback=None) -> Ring:
        def record(raw: bytes | memoryview) -> None:
            self.seen.append(bytes(raw))  # a view is valid only during the call
            self.consumer_at_callback.append(self.consumer_pos)

        return Ring(self.consumer, self.upper, PAGE, self.size, callback or record)

    @property
    def consumer_pos(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]

    def free(self) -> int:
        return self.size - (self.prod - self.consumer_pos)

    def put(self, payload: bytes, flags: int = 0, publish: bool = True) -> int:
        """Reserve and fill a record (busy while ``flags`` has BUSY_BIT); returns its position."""
        at = self.prod
        assert record_bytes(len(payload)) <= self.free()
        self._write(at + 8, payload)
        self._write(at, struct.pack("<II", len(payload) | flags, 0))
        self.prod += record_bytes(len(payload))
        if publish:
            struct.pack_into("<Q", self.upper, 0, self.prod)
        return at

    def commit(self, at: int) -> None:
        header = struct.unpack_from("<I", self.upper, PAGE + at % self.size)[0]
        struct.pack_into("<I", self.upper, PAGE + at % self.size, header & ~BUSY_BIT)

    def _write(self, pos: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.upper[PAGE + (pos + i) % self.size] = byte


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(n))


def test_records_come_out_whole_and_in_order_and_their_space_is_handed_back():
    k = FakeKernel(4096)
    records = [payload(n, n) for n in (1, 7, 8, 100, 0, 513)]
    for r in records:
        k.put(r)
    assert k.ring().drain() == len(records)
    assert k.seen == records
    assert k.consumer_pos == k.prod


def test_a_limit_stops_the_drain_once_that_much_ring_space_is_taken():
    k = FakeKernel(4096)
    records = [payload(100, n) for n in range(5)]  # 112 bytes of ring space each
    for r in records:
        k.put(r)
    ring = k.ring()
    assert ring.drain(0) == 0 and ring.pending() and k.consumer_pos == 0
    assert ring.drain(-5) == 0 and k.consumer_pos == 0  # no room is no room
    assert ring.drain(1) == 1  # a record is taken whole once any room is left
    assert ring.drain(224) == 2 and k.consumer_pos == 3 * 112  # the rest waits, not lost
    assert ring.pending() and ring.held_back
    assert ring.drain(None) == 2 and not ring.pending() and not ring.held_back
    assert k.seen == records


def test_the_reader_drains_a_ring_with_a_budget_within_it_unless_told_otherwise():
    bounded, free = FakeKernel(4096), FakeKernel(4096)
    room = [0]
    reader = RingReader()
    reader._rings += [(bounded.ring(), lambda: room[0]), (free.ring(), None)]
    for k in (bounded, free):
        for n in range(3):
            k.put(payload(8, n))  # 16 bytes of ring space each
    assert reader.consume() == 3 and bounded.seen == [] and reader.pending()
    assert reader.held_back()
    room[0] = 16
    assert reader.consume() == 1 and len(bounded.seen) == 1
    assert reader.consume(bounded=False) == 2 and not reader.pending()
    assert not reader.held_back()
    free.put(b"arrived later")  # waiting, but for no budget: the next wakeup takes it
    assert reader.pending() and not reader.held_back()
    reader.close()


def test_a_mark_is_reached_once_every_record_reserved_before_it_is_handed_over():
    """What a loss notice waits for (collector/drop_notices.py): the records every ring held
    when the kernel's loss table was drained, a record still being written included."""
    bounded, free = FakeKernel(4096), FakeKernel(4096)
    room = [16]
    reader = RingReader()
    reader._rings += [(bounded.ring(), lambda: room[0]), (free.ring(), None)]
    for n in range(2):
        bounded.put(payload(8, n))
    busy = free.put(payload(8, 9), flags=BUSY_BIT)
    mark = reader.mark()
    bounded.put(b"after the mark")
    assert not reader.reached(mark)
    reader.consume()  # one of the two within the budget; the busy one stops its ring
    assert not reader.reached(mark)
    room[0] = 4096
    reader.consume()
    assert not reader.reached(mark)  # still being written
    free.commit(busy)
    reader.consume()
    assert reader.reached(mark) and bounded.seen[-1] == b"after the mark"
    reader.close()


def test_a_discarded_record_is_skipped_but_consumed():
    k = FakeKernel(4096)
    k.put(b"kept-1")
    k.put(b"thrown away", DISCARD_BIT)
    k.put(b"kept-2")
    assert k.ring().drain() == 2
    assert k.seen == [b"kept-1", b"kept-2"]
    assert k.consumer_pos == k.prod


def test_a_record_still_being_written_stops_the_drain_until_it_is_committed():
    k = FakeKernel(4096)
    k.put(b"first")
    busy = k.put(b"second", BUSY_BIT)
    k.put(b"third")
    ring = k.ring()
    assert ring.drain() == 1
    assert k.consumer_pos == busy  # nothing past the busy record is handed back
    k.commit(busy)
    assert ring.drain() == 2
    assert k.seen == [b"first", b"second", b"third"]


def test_a_record_that_wraps_round_the_end_is_joined():
    k = FakeKernel(256)
    ring = k.ring()
    k.put(payload(200))
    ring.drain()
    wrapping = payload(120, 3)  # starts at 208: header fits, 40 bytes then 80 from the start
    k.put(wrapping)
    assert ring.drain() == 1
    assert k.seen[-1] == wrapping


def test_a_record_in_one_piece_is_lent_as_a_read_only_view_of_the_ring_not_copied():
    k = FakeKernel(256)
    lent: list[object] = []

    def callback(raw: bytes | memoryview) -> None:
        lent.append((type(raw), getattr(raw, "readonly", None), bytes(raw)))

    ring = k.ring(callback)
    at = k.put(b"in place")
    ring.drain()
    assert lent == [(memoryview, True, b"in place")]
    # it is the ring's memory: what the kernel writes there next shows through such a view
    view = ring._view[PAGE + at + 8 : PAGE + at + 16]
    k._write(at + 8, b"reused!!")
    assert bytes(view) == b"reused!!"
    view.release()
    k.put(payload(200))
    ring.drain()
    k.put(payload(100, 5))  # wraps: joined into bytes
    ring.drain()
    assert lent[-1] == (bytes, None, payload(100, 5))


def test_a_header_in_the_last_eight_bytes_has_its_payload_at_the_start():
    k = FakeKernel(256)
    ring = k.ring()
    k.put(payload(240))  # 248 bytes: the next header sits at 248
    ring.drain()
    k.put(b"after the wrap")
    ring.drain()
    assert k.seen[-1] == b"after the wrap"


def test_space_is_handed_back_during_a_long_drain_but_never_before_a_record_is_taken():
    size = 4 * RELEASE_EVERY_BYTES
    k = FakeKernel(size)
    big = payload(RELEASE_EVERY_BYTES // 2 - 8)
    for _ in range(7):
        k.put(big)
    k.ring().drain()
    assert k.consumer_at_callback[0] == 0  # not yet a release's worth
    assert any(0 < c < k.prod for c in k.consumer_at_callback)  # released on the way
    for i, cons in enumerate(k.consumer_at_callback):
        assert cons <= i * record_bytes(len(big))  # never past the start of the record read


def test_a_callback_that_raises_loses_only_its_own_record():
    k = FakeKernel(4096)
    for r in (b"a", b"bad", b"c"):
        k.put(r)
    got = []

    def callback(raw: bytes) -> None:
        if raw == b"bad":
            raise ValueError("boom")
        got.append(raw)

    ring = k.ring(callback)
    with pytest.raises(ValueError):
        ring.drain()
    assert ring.drain() == 1
    assert got == [b"a", b"c"]
    assert k.consumer_pos == k.prod


def test_records_published_during_the_drain_are_taken_in_the_same_drain():
    k = FakeKernel(4096)
    k.put(b"one")

    def callback(raw: bytes | memoryview) -> None:
        k.seen.append(bytes(raw))
        if raw == b"one":
            k.put(b"two")

    assert k.ring(callback).drain() == 2
    assert k.seen == [b"one", b"two"]


def test_an_area_that_is_not_a_power_of_two_is_refused():
    with pytest.raises(RingReaderError, match="power of two"):
        Ring(mmap.mmap(-1, PAGE), mmap.mmap(-1, PAGE + 3000), PAGE, 3000, lambda raw: None)


def test_close_unmaps_both_areas():
    k = FakeKernel(4096)
    k.ring().close()
    assert k.consumer.closed and k.upper.closed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.booleans(), st.booleans()), max_size=60))
def test_any_sequence_of_records_and_drains_delivers_each_kept_record_once_in_order(steps):
    k = FakeKernel(1024)
    ring = k.ring()
    kept = []
    for i, (n, discard, drain_after) in enumerate(steps):
        if record_bytes(n) > k.free():
            ring.drain()
        data = payload(n, i)
        k.put(data, DISCARD_BIT if discard else 0)
        if not discard:
            kept.append(data)
        if drain_after:
            ring.drain()
    ring.drain()
    assert k.seen == kept
    assert k.consumer_pos == k.prod


def test_other_architectures_are_refused_before_anything_is_mapped(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    with pytest.raises(RingReaderError, match="x86-64"):
        Ring.map(-1, 4096, lambda raw: None)
