"""Putting a stream's messages back in ``seq`` order when JetStream stored a few out of it.

Pure. The bridge resends in order after a failed publish, but while a stream's leader is being
elected the publishes after a refused one may be stored before it: a remote writer then meets
seq N+k before N..N+k-1. Counting that as a gap would report a loss that is not one, so a
message ahead of its stream's next seq waits here (at most MAX_HELD messages, or HOLD_S) for
the ones before it; what is still missing after that is a gap, as on the bus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
#: The bridge has at most 256 publishes in flight: more than that cannot be out of order.
MAX_HELD = 1024
HOLD_S = 3.0

Key = tuple[str, int, bytes]  # (host, epoch, topic)


@dataclass
class _Held(Generic[T]):
    since: float
    items: dict[int, T] = field(default_factory=dict)


class SeqOrder(Generic[T]):
    """Items keyed by stream and seq; ``expected(key)`` is the next seq the consumer wants
    (None: any, it has seen nothing of the stream)."""

    def __init__(
        self,
        expected: Callable[[Key], int | None],
        max_held: int = MAX_HELD,
        hold_s: float = HOLD_S,
    ) -> None:
        self._expected = expected
        self._held: dict[Key, _Held[T]] = {}
        self._max_held = max_held
        self._hold_s = hold_s
        self.count = 0
        #: Messages that were put back in order (held, then released in sequence).
        self.reordered = 0

    def offer(self, key: Key, seq: int, item: T, now: float) -> list[T]:
        """What to process now, in order: ``item`` and any held ones it lets through, or
        nothing (``item`` is held)."""
        expected = self._expected(key)
        held = self._held.get(key)
        if expected is None or seq <= expected or (held is None and seq == expected):
            if held is None:
                return [item]
            return self._through(key, [item], seq + 1)
        if held is None:
            held = self._held[key] = _Held(now)
        held.items[seq] = item
        self.count += 1
        if self.count > self._max_held:
            return self.release(now, force=True)
        return []

    def _through(self, key: Key, ready: list[T], nxt: int) -> list[T]:
        held = self._held[key]
        while nxt in held.items:
            ready.append(held.items.pop(nxt))
            self.count -= 1
            self.reordered += 1
            nxt += 1
        if not held.items:
            del self._held[key]
        return ready

    def release(self, now: float, force: bool = False) -> list[T]:
        """Held items whose wait is over (all with ``force``), in seq order per stream: the
        seqs they skip are lost."""
        out: list[T] = []
        for key in [k for k, h in self._held.items() if force or now - h.since >= self._hold_s]:
            held = self._held.pop(key)
            for seq in sorted(held.items):
                out.append(held.items[seq])
                self.count -= 1
        return out

    def floors(self, host: str) -> dict[str, int]:
        """Lowest held seq per ``"epoch:topic"`` of ``host`` (not acknowledgeable yet)."""
        return {
            f"{epoch}:{topic.decode('ascii', 'replace')}": min(h.items)
            for (h_host, epoch, topic), h in self._held.items()
            if h_host == host and h.items
        }
