"""Reads BPF ring buffers straight from their shared memory, without libbpf's callbacks.

Why not libbpf's ``ring_buffer__poll``: it calls back into Python through a ctypes trampoline
for every record and copies it once more with ``string_at``; at 100,000 records a second that
alone was a fifth of the collector's time. The layout this module relies on is the kernel's
ABI (kernel/bpf/ringbuf.c, mirrored by libbpf's ringbuf.c):

- page 0 of the map, mapped read-write: the consumer position (u64), which user space
  advances to hand space back to the producers;
- page 1, read-only: the producer position (u64);
- from page 2, read-only: the data area, a power-of-two ``size`` of bytes. Each record starts
  8-byte aligned with an 8-byte header: u32 length whose bit 31 says the record is still being
  written (stop there) and bit 30 that it was discarded (skip it), then u32 page offset.

The kernel maps the data area twice in a row so that libbpf never sees a record wrap; here it
is mapped once (half the resident memory) and a record that wraps is joined from its two
pieces. x86-64 orders loads with loads and stores with stores, which is all the acquire and
release ordering the protocol needs; other architectures would need barriers we cannot issue
from Python, so the reader refuses them.
"""

from __future__ import annotations

import mmap
import platform
import select
from collections.abc import Callable

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_BYTES = 8
#: Hand space back to the kernel at least this often while draining a long batch, so that
#: producers are not refused for space the collector has already read.
RELEASE_EVERY_BYTES = 256 * 1024


class RingReaderError(RuntimeError):
    """The ring cannot be read this way here (mapping refused, unsupported architecture)."""


def record_bytes(length: int) -> int:
    """Space a record of ``length`` payload bytes takes in the ring: header, 8-byte aligned."""
    return (length + HEADER_BYTES + 7) & ~7


class Ring:
    """One ring buffer over two mappings: ``consumer`` (its first 8 bytes are the consumer
    position) and ``upper`` (the producer position at 0, the data area from ``data_at``).

    The logic needs nothing but the two buffers, so unit tests drive it with anonymous mmaps
    laid out like the kernel's; ``Ring.map`` maps the real one.

    Positions and headers are read and written through native-typed memoryviews, which move
    each as one aligned load or store. ``struct``'s little-endian formats go byte by byte: a
    position torn that way reads as far behind (the kernel then refuses records for want of
    space) or, for the producer's, far ahead (garbage taken for records).
    """

    def __init__(
        self,
        consumer: mmap.mmap,
        upper: mmap.mmap,
        data_at: int,
        size: int,
        callback: Callable[[bytes | memoryview], None],
    ) -> None:
        if size & (size - 1) or size < HEADER_BYTES or len(upper) < data_at + size:
            raise RingReaderError(f"ring data area of {size} bytes is not a power of two")
        if data_at % HEADER_BYTES:
            raise RingReaderError(f"ring data area at {data_at} is not 8-byte aligned")
        self.size = size
        self._maps = (consumer, upper)
        self._consumer_pos = memoryview(consumer)[:8].cast("Q")
        self._producer_pos = memoryview(upper)[:8].cast("Q")
        self._words = memoryview(upper)[data_at : data_at + size].cast("I")
        self._view = memoryview(upper).toreadonly()
        self._upper = upper
        self._data_at = data_at
        self._callback = callback
        #: the last drain stopped at its limit with records left
        self.held_back = False

    @classmethod
    def map(cls, map_fd: int, size: int, callback: Callable[[bytes | memoryview], None]) -> Ring:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise RingReaderError(
                f"reading ring buffers from Python needs x86-64 memory ordering, not "
                f"{platform.machine()}"
            )
        page = mmap.PAGESIZE
        try:
            consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            upper = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError as exc:
            raise RingReaderError(f"cannot map ring buffer (fd {map_fd}): {exc}") from exc
        return cls(consumer, upper, page, size, callback)

    def drain(self, limit: int | None = None) -> int:
        """Hand every complete record to the callback, in order; returns how many. With a
        ``limit``, stop before the next record once records of that many bytes of ring space
        have been taken: the rest waits in the ring (see RingReader.add's ``budget``).

        A record that lies in one piece is handed over as a read-only view of the ring, not a
        copy: copying memory another CPU has just written was about 15% of the collector in
        perf under a 4 KiB flood, and the assembler copies the bytes into their run anyway.
        The view is valid only during the call (the kernel reuses the space once the drain
        hands it back), so the callback copies whatever it keeps. A record that wraps round the
        end of the data area is joined into bytes.

        A record's space is handed back only once its callback has returned. It counts as
        consumed even if the callback raises: that one record is lost rather than seen again
        for ever.
        """
        consumer_pos, producer_pos, words = self._consumer_pos, self._producer_pos, self._words
        upper, view = self._upper, self._view
        base, size, mask = self._data_at, self.size, self.size - 1
        callback = self._callback
        cons = released = consumer_pos[0]
        stop_at = cons + max(limit, 0) if limit is not None else -1
        count = 0
        self.held_back = False
        try:
            while (prod := producer_pos[0]) > cons:
                while cons < prod:
                    if cons >= stop_at >= 0:
                        self.held_back = True
                        return count
                    at = cons & mask
                    header = words[at >> 2]
                    if header & BUSY_BIT:
                        return count
                    length = header & ~(BUSY_BIT | DISCARD_BIT)
                    start = (at + HEADER_BYTES) & mask
                    cons += record_bytes(length)
                    if not header & DISCARD_BIT:
                        end = start + length
                        raw: bytes | memoryview
                        if end <= size:
                            raw = view[base + start : base + end]
                        else:  # the record wraps round the end of the data area
                            raw = upper[base + start : base + size]
                            raw += upper[base : base + end - size]
                        count += 1
                        callback(raw)
                    if cons - released >= RELEASE_EVERY_BYTES:
                        consumer_pos[0] = released = cons
            return count
        finally:
            if cons != released:
                consumer_pos[0] = cons

    def pending(self) -> bool:
        """Whether records (complete or not) wait in the ring."""
        return self._producer_pos[0] > self._consumer_pos[0]

    def produced(self) -> int:
        """The producer position: every record reserved so far lies below it."""
        return int(self._producer_pos[0])

    def consumed(self) -> int:
        """The consumer position: every record below it has been handed to the callback."""
        return int(self._consumer_pos[0])

    def close(self) -> None:
        for view in (self._consumer_pos, self._producer_pos, self._words, self._view):
            view.release()
        for m in self._maps:
            m.close()


class RingReader:
    """Several rings behind one epoll: wait for a wakeup, then drain every ring.

    Every ring is drained on each poll, not only those that signalled: the kernel side sends
    most records without a wakeup (see ``tc_wakeup_flag``), and those would otherwise wait.
    The epoll is edge-triggered, so a poll waits for the next wakeup (256 KiB waiting) or the
    timeout: level-triggered, it returned at once while any record waited, a few records a
    poll, and the loop around it cost more than the records.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._rings: list[tuple[Ring, Callable[[], int] | None]] = []

    def add(
        self,
        map_fd: int,
        size: int,
        callback: Callable[[bytes | memoryview], None],
        budget: Callable[[], int] | None = None,
    ) -> None:
        """Drain the ring of ``map_fd`` into ``callback``; with ``budget``, at most budget()
        bytes of ring space per drain: records the consumer has no room for stay in the ring,
        which is the larger buffer, until it has (``pending`` tells that some wait)."""
        ring = Ring.map(map_fd, size, callback)
        self._rings.append((ring, budget))
        self._epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)

    def poll(self, timeout_ms: int) -> int:
        self._epoll.poll(timeout_ms / 1000)
        return self.consume()

    def consume(self, bounded: bool = True) -> int:
        """Drain every ring, within its budget unless ``bounded`` is False."""
        return sum(
            ring.drain(budget() if budget and bounded else None) for ring, budget in self._rings
        )

    def pending(self) -> bool:
        """Whether any ring holds records not yet drained (left there by a budget, or arrived
        since the drain)."""
        return any(ring.pending() for ring, _ in self._rings)

    def mark(self) -> tuple[int, ...]:
        """Where each ring's producer is now: ``reached`` says when every record reserved
        before this call has been handed over."""
        return tuple(ring.produced() for ring, _ in self._rings)

    def reached(self, mark: tuple[int, ...]) -> bool:
        return all(ring.consumed() >= at for (ring, _), at in zip(self._rings, mark, strict=True))

    def held_back(self) -> bool:
        """Whether the last drain left records in a ring for want of budget: the loop then
        polls again soon rather than wait for the next wakeup."""
        return any(ring.held_back for ring, _ in self._rings)

    def close(self) -> None:
        for ring, _ in self._rings:
            ring.close()
        self._rings.clear()
        if not self._epoll.closed:
            self._epoll.close()
