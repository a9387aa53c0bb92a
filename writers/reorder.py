"""A bounded reorder window: items come in roughly in time order and go out in exact time order.

Pure logic: the caller passes the arrival clock (``now``, monotonic ns) to every call, so tests
drive it with a fake clock.

The rule. An item stamped ``ts`` arrived at ``arrival``; once ``window_ns`` has passed since
that arrival, every item that was going to arrive before it has arrived (that is what choosing
``window_ns`` means), so everything held with a timestamp up to ``ts`` may go. The *watermark*
is therefore the largest timestamp among items that arrived at least ``window_ns`` ago, and
``release`` hands out, in timestamp order, every held item at or below it. Each item waits at
most ``window_ns`` (plus ``GRAIN_NS``) after its own arrival, whatever the traffic does: nothing
needs a later item to push it out, and a stream that goes quiet is flushed too.

Measuring the wait in arrival time rather than against the newest timestamp seen keeps the rule
right when the consumer falls behind: a source that sends an item up to D after items with later
timestamps makes it arrive up to D after them here too (a FIFO keeps that spacing, or shrinks it
while a backlog drains), so ``window_ns`` >= D suffices however far behind the queue is. A rule
on timestamps alone (hold until one ``window_ns`` newer is seen) breaks when the source catches
up on a backlog of its own, since timestamps then advance faster than time.

An item that arrives after a later-stamped one was already released is *late*: it is still held
and released (at the next ``release``, out of order) and counted, never dropped. When the held
items exceed ``max_bytes`` the earliest ones are released before their window closed and counted
as ``forced``; an item arriving after that may then be late.

Items that arrive in order (the common case) wait in a FIFO run; only stragglers go to a heap,
and ``release`` merges the two: no heap work per item when nothing is out of order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from itertools import chain
from typing import Generic, TypeVar

T = TypeVar("T")

#: Arrivals within this span share one watermark step (its first and latest arrival and its
#: largest timestamp): the bookkeeping is ``window_ns / GRAIN_NS`` entries, not one per item, and
#: an item waits at most this much longer than ``window_ns``.
GRAIN_NS = 10_000_000


class ReorderWindow(Generic[T]):
    """Holds items for ``window_ns`` after their arrival and releases them in ``ts`` order
    (ties in arrival order). ``size`` of an item is what it counts against ``max_bytes``."""

    def __init__(self, window_ns: int, max_bytes: int) -> None:
        if window_ns < 0 or max_bytes <= 0:
            raise ValueError(f"bad reorder window {window_ns} ns / {max_bytes} bytes")
        self.window_ns = window_ns
        self.max_bytes = max_bytes
        # entries are (ts, arrival order, size, item): unique keys, items never compared
        self._run: deque[tuple[int, int, int, T]] = deque()  # ts never decreasing
        self._heap: list[tuple[int, int, int, T]] = []  # the stragglers
        #: [first arrival, latest arrival, largest ts] per GRAIN_NS of arrivals, oldest first
        self._steps: deque[list[int]] = deque()
        self._order = 0
        self._watermark = -1
        #: the largest timestamp released so far
        self.released_ts = -1
        self.held_bytes = 0
        #: items that arrived after a later-stamped item had been released
        self.late = 0
        #: items released before their window closed because ``max_bytes`` was reached
        self.forced = 0

    def __len__(self) -> int:
        return len(self._run) + len(self._heap)

    def items(self) -> Iterator[T]:
        """The items held, in no particular order."""
        for entry in self._run:
            yield entry[3]
        for entry in self._heap:
            yield entry[3]

    def push(self, ts: int, item: T, size: int, now: int) -> bool:
        """Hold ``item`` (stamped ``ts``, counting ``size`` bytes) that arrived at ``now``.
        True when ``release(now)`` has something to hand out."""
        if ts < self.released_ts:
            self.late += 1
        steps = self._steps
        step = steps[-1] if steps else None
        if step is not None and step[0] <= now < step[0] + GRAIN_NS:
            step[1] = now
            if ts > step[2]:
                step[2] = ts
        else:
            steps.append([now, now, ts])
        entry = (ts, self._order, size, item)
        self._order += 1
        run = self._run
        if not run or ts >= run[-1][0]:
            run.append(entry)
        else:
            heapq.heappush(self._heap, entry)
        self.held_bytes += size
        return (
            ts <= self._watermark
            or self.held_bytes > self.max_bytes
            or now - steps[0][1] >= self.window_ns
        )

    def release(self, now: int) -> list[T]:
        """In ``ts`` order: every held item no earlier one can still arrive before, then the
        earliest ones while more than ``max_bytes`` are held (counted in ``forced``)."""
        steps = self._steps
        while steps and now - steps[0][1] >= self.window_ns:
            ts = steps.popleft()[2]
            if ts > self._watermark:
                self._watermark = ts
        out: list[T] = []
        run, heap, watermark = self._run, self._heap, self._watermark
        while run or heap:
            from_run = not heap or (run and run[0] < heap[0])
            ts, _, size, item = run[0] if from_run else heap[0]
            if ts > watermark:
                if self.held_bytes <= self.max_bytes:
                    break
                self.forced += 1
            if from_run:
                run.popleft()
            else:
                heapq.heappop(heap)
            self.held_bytes -= size
            if ts > self.released_ts:
                self.released_ts = ts
            out.append(item)
        return out

    def drain(self) -> list[T]:
        """Everything held, in ``ts`` order (at stop)."""
        self._steps.clear()
        newest = max((entry[0] for entry in chain(self._run, self._heap)), default=-1)
        self._watermark = max(self._watermark, newest)
        return self.release(0)
