"""What ZeroMQ may still hold of the payload messages sent on one topic (pure: no sockets).

Tracking a message costs a round trip through pyzmq's garbage-collector thread when libzmq
lets go of it (measured, a frame sent and taken by a SUB in another process: 42 us of CPU at
4 KiB, against 6 us for a copy), so copied messages are not tracked one by one. Instead one
message in every ``mark_bytes`` is sent as a tracked frame, a marker. Every message of one
topic goes to the same subscribers' pipes, each pipe is first in, first out, and libzmq
releases a frame only once every pipe that took it has passed it on: once a marker is done,
every message of its topic sent before it has left ZeroMQ, and its bytes are released. The
count is thus an upper bound of what ZeroMQ holds for the topic (up to ``mark_bytes`` of
messages after the last marker stay counted until the next marker is done).

Markers are released in order only: a later one may be done before an earlier one (its pipe
was at SEND_HWM and did not take it), but only the earliest not-done marker says what a
stalled pipe still holds.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

#: Copied bytes (of one topic) between two markers: a 4 KiB message is tracked once in 64, so
#: tracking costs under 1 us a message on average (NOTES.md, Issue 16 part 4).
MARK_BYTES = 256 * 1024


class Tracker(Protocol):
    """What the count needs of a ``zmq.MessageTracker``."""

    @property
    def done(self) -> bool: ...


class Backlog:
    """Bytes charged to one topic and not yet known to have left ZeroMQ.

    ``mark_bytes`` 0 makes every message a marker (tracked one by one)."""

    def __init__(self, mark_bytes: int = MARK_BYTES) -> None:
        self._mark_bytes = mark_bytes
        # (marker, bytes charged up to and including it), oldest first
        self._marks: deque[tuple[Tracker, int]] = deque()
        self._charged = 0
        self._released = 0
        self._unmarked = 0

    def wants_marker(self, size: int) -> bool:
        """Whether the next message, of ``size`` bytes, must be sent as a marker."""
        return self._unmarked + size >= self._mark_bytes

    def add_copied(self, size: int) -> None:
        """A message sent without a tracker: it leaves the count with the next marker."""
        self._charged += size
        self._unmarked += size

    def add_marker(self, tracker: Tracker, size: int) -> None:
        """A message sent as a tracked frame: once ``tracker`` is done it and every message
        charged before it leave the count."""
        self._charged += size
        self._unmarked = 0
        self._marks.append((tracker, self._charged))

    def held(self) -> int:
        """Bytes not yet known to have been passed on by every subscriber."""
        while self._marks and self._marks[0][0].done:
            self._released = self._marks.popleft()[1]
        return self._charged - self._released
