"""The bridge's spool: bus messages not yet stored by JetStream, bounded and counted.

Pure: the NATS half (tracecap/tools/nats_bridge.py) appends what the bus delivers, sends from
the front, and ``confirm``s in order what JetStream acknowledged. While NATS is unreachable the
spool fills; past its bounds a new message is dropped and counted per topic, and it reaches the
remote writers as a hole in ``seq``, exactly as a message ZeroMQ dropped (README "Fleet").
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One bus message as it will be published."""

    subject: str
    msg_id: str
    headers: dict[str, str]
    data: bytes


@dataclass
class SpoolCounters:
    """What went through the spool; ``dropped`` by bus topic subject."""

    spooled: int = 0
    stored: int = 0
    stored_bytes: int = 0
    dropped_messages: int = 0
    dropped_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    peak_messages: int = 0
    peak_bytes: int = 0


class Spool:
    """FIFO of entries not acknowledged yet; ``sent`` of them are in flight (the front ones)."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("spool bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self.bytes = 0
        #: Entries at the front handed to ``next_to_send`` and not confirmed or rewound.
        self.sent = 0
        self.counters = SpoolCounters()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Entry) -> bool:
        """Keep ``entry``; False (counted as dropped) when the spool is full."""
        size = len(entry.data)
        if len(self._entries) >= self.max_messages or self.bytes + size > self.max_bytes:
            c = self.counters
            c.dropped_messages += 1
            c.dropped_bytes += size
            c.dropped[entry.subject] = c.dropped.get(entry.subject, 0) + 1
            return False
        self._entries.append(entry)
        self.bytes += size
        c = self.counters
        c.spooled += 1
        c.peak_messages = max(c.peak_messages, len(self._entries))
        c.peak_bytes = max(c.peak_bytes, self.bytes)
        return True

    def next_to_send(self) -> Entry | None:
        """The first entry not in flight yet, now in flight; None when all are."""
        if self.sent >= len(self._entries):
            return None
        entry = self._entries[self.sent]
        self.sent += 1
        return entry

    def confirm(self) -> Entry:
        """The front entry is stored: forget it."""
        if not self.sent:
            raise RuntimeError("nothing in flight to confirm")
        entry = self._entries.popleft()
        self.sent -= 1
        self.bytes -= len(entry.data)
        self.counters.stored += 1
        self.counters.stored_bytes += len(entry.data)
        return entry

    def rewind(self) -> None:
        """What was in flight was not confirmed: send it again, from the front, in order (the
        stream's duplicate window drops the copies of what was stored after all)."""
        self.sent = 0
