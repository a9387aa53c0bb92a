"""Loss notices held back until the records reserved before them have been read.

The kernel notes in ``file_drops`` which file lost which syscalls while the file ring was full;
the collector drains that table once a second. Records reserved earlier may still wait in the
ring then: its drain stops while the bus budget is spent (a stalled writer). A notice published
at once reached the writer before the file's earlier bytes: in a 50,000-file burst behind a
stopped writer, the notice's line (`missing [[512, 4096]]`) was written ~25,000 lines before
the file's first 512 bytes came, beyond the writer's 16 MiB index scan, and the file's next
line said `complete: true` at 512 of 4,096 bytes. Held until the rings' consumers pass where
their producers stood at the drain, a notice follows every record the kernel reserved before
the loss it reports.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from bpf.records import DroppedIo

#: Ring positions (one per ring) taken when a batch was drained.
Mark = tuple[int, ...]

#: Drops held at most (two drains of the kernel's two 16,384-entry halves; a few hundred bytes
#: each). Past it the oldest batch goes out before its mark is reached, counted ``early``: the
#: writer then marks a file it cannot find the line of ``history_unknown``, never complete.
MAX_HELD = 32768


class HeldDrops:
    """Batches of drops in drain order, each with the ring mark it waits for."""

    def __init__(self, limit: int = MAX_HELD) -> None:
        self._batches: deque[tuple[Mark, list[DroppedIo]]] = deque()
        self._held = 0
        self._limit = limit
        #: Drops released before the rings reached their mark (the bound, not the order).
        self.early = 0

    def __len__(self) -> int:
        return self._held

    def add(self, drops: list[DroppedIo], mark: Mark) -> None:
        if drops:
            self._batches.append((mark, drops))
            self._held += len(drops)

    def release(self, reached: Callable[[Mark], bool], force: bool = False) -> list[DroppedIo]:
        """The drops whose mark the rings have reached, oldest first; every one with
        ``force`` (the rings are drained for good); the oldest past MAX_HELD."""
        out: list[DroppedIo] = []
        while self._batches:
            mark, drops = self._batches[0]
            if not (force or reached(mark)):
                if self._held <= self._limit:
                    break
                self.early += len(drops)
            self._batches.popleft()
            self._held -= len(drops)
            out += drops
        return out
