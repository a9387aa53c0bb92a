"""Sequence-gap detection: how a writer learns what the bus dropped.

PUB/SUB drops silently (high-water mark, slow joiner, writer restart); the collector numbers
messages per topic from 0 under a random per-start ``epoch``, so a hole in ``seq`` is the only
trace of a loss. Pure logic, no clock and no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """Messages ``from_seq..to_seq`` (inclusive) of ``topic`` under ``epoch`` never arrived."""

    epoch: int
    topic: bytes
    from_seq: int
    to_seq: int

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1


class GapTracker:
    """Last ``seq`` seen per ``(epoch, topic)``.

    A new epoch starts fresh (a collector restart is not a loss), but its first message reveals a
    gap if it is not ``seq`` 0: the writer joined late or was restarted. The table is bounded so a
    stream of forged epochs cannot grow memory; the least recently used key is forgotten.
    """

    def __init__(self, max_keys: int = 1024) -> None:
        self._last: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._max_keys = max_keys
        #: Messages whose seq did not move forward (duplicate or replay); not gaps, but odd.
        self.regressions = 0

    def state(self) -> dict[str, int]:
        """The last seq per (epoch, topic), as JSON-friendly ``"epoch:topic"`` keys."""
        return {
            f"{e}:{t.decode('ascii', 'backslashreplace')}": s for (e, t), s in self._last.items()
        }

    def restore(self, state: object) -> None:
        """Continue from a previous process's state, so that a restarted writer counts as lost
        only what arrived while it was down (at most a second more: the state is that old)."""
        if not isinstance(state, dict):
            return
        for key, seq in list(state.items())[-self._max_keys :]:
            epoch, sep, topic = str(key).partition(":")
            if sep and epoch.isdecimal() and type(seq) is int and seq >= 0:
                self._last[(int(epoch), topic.encode("ascii", "replace"))] = seq

    def last(self, epoch: int, topic: bytes) -> int | None:
        """The last seq seen of ``(epoch, topic)``, None if none is remembered."""
        return self._last.get((epoch, topic))

    def observe(self, epoch: int, topic: bytes, seq: int, width: int = 1) -> Gap | None:
        """The gap before a message numbered ``seq``; it covers ``width`` numbers (a packet
        batch: its packets, bus.seq_width), the last of which is remembered."""
        key = (epoch, topic)
        last = self._last.get(key)
        self._last[key] = seq + width - 1
        self._last.move_to_end(key)
        if len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        if last is None:
            return Gap(epoch, topic, 0, seq - 1) if seq > 0 else None
        if seq == last + 1:
            return None
        if seq <= last:
            self.regressions += 1
            return None
        return Gap(epoch, topic, last + 1, seq - 1)
