"""Which JetStream deliveries a remote writer may acknowledge: those whose data is on disk.

Pure. The consumer acknowledges with AckAll (one ack covers every earlier delivery), so the
question is how far the front of the deliveries, in stream order, is durable. A delivery is
durable when its writer holds nothing of it that a restart would lose: the writer reports, per
host, the lowest bus ``seq`` per ``"epoch:topic"`` (GapTracker's keys) of the messages it
received whose artifact has no index line yet (``Writer.unindexed``); a delivery below that, or
of a key the writer does not hold, is durable.

``acked`` is, per host, the last bus ``seq`` per key acknowledged: a restarted writer's gap
tracker starts from it, so that what the stream delivers again is no gap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class Delivery:
    """One delivery in stream order; ``reply`` is where its ack goes (the latest delivery's:
    a recreated consumer delivers again under new reply subjects)."""

    stream_seq: int
    host: str
    key: str | None  # None: nothing of it is held (another topic, malformed)
    bus_seq: int
    reply: str


class AckLedger:
    """Deliveries not acknowledged yet, oldest first."""

    def __init__(self, acked: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self._pending: deque[Delivery] = deque()
        self._by_seq: dict[int, Delivery] = {}
        #: Highest stream seq handled by this process: anything at or below is a redelivery.
        self.highest = 0
        self.acked: dict[str, dict[str, int]] = {h: dict(k) for h, k in (acked or {}).items()}

    def __len__(self) -> int:
        return len(self._pending)

    def seen(self, stream_seq: int, reply: str) -> bool:
        """True (and its ack subject refreshed) when ``stream_seq`` was handled already."""
        if stream_seq > self.highest:
            return False
        delivery = self._by_seq.get(stream_seq)
        if delivery is not None:
            delivery.reply = reply
        return True

    def delivered(self, delivery: Delivery) -> None:
        if delivery.stream_seq <= self.highest:
            raise ValueError(f"stream seq {delivery.stream_seq} after {self.highest}")
        self.highest = delivery.stream_seq
        self._pending.append(delivery)
        self._by_seq[delivery.stream_seq] = delivery

    def advance(self, held: Callable[[str], Mapping[str, int]]) -> Delivery | None:
        """Drop the durable front; the last delivery dropped (ack its ``reply``), or None.
        ``acked`` is updated to match."""
        floors: dict[str, Mapping[str, int]] = {}
        last = None
        while self._pending:
            d = self._pending[0]
            if d.key is not None:
                if d.host not in floors:
                    floors[d.host] = held(d.host)
                floor = floors[d.host].get(d.key)
                if floor is not None and d.bus_seq >= floor:
                    break
                self.acked.setdefault(d.host, {})[d.key] = d.bus_seq
            self._pending.popleft()
            del self._by_seq[d.stream_seq]
            last = d
        return last
