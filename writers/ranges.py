"""Half-open byte ranges, merged: what arrived of a transfer, and what is missing from a file."""

from __future__ import annotations

import bisect


class RangeSet:
    """A set of ``[start, end)`` ranges kept sorted, disjoint and coalesced.

    Chunks may arrive twice or out of order; coalescing makes "is everything here" a length check
    and keeps memory proportional to the number of holes, not of chunks.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    @classmethod
    def of(cls, pairs: object) -> RangeSet:
        """A set from ``[[start, end], ...]`` as JSON holds it; ValueError for anything else
        (these come back from files a crash or another process may have damaged)."""
        out = cls()
        if not isinstance(pairs, list):
            raise ValueError(f"ranges must be a list, got {type(pairs).__name__}")
        for pair in pairs:
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(type(v) is int and v >= 0 for v in pair)
            ):
                raise ValueError(f"not a [start, end] range of offsets: {pair!r}")
            out.add(pair[0], pair[1])
        return out

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # Every range touching [start, end] (adjacent ranges merge too).
        lo = bisect.bisect_left(self._ends, start)
        hi = bisect.bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def covers(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` lies inside one stored range (empty ranges are covered)."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        out: list[tuple[int, int]] = []
        pos = start
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
        return out

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def union(self, other: RangeSet) -> RangeSet:
        out = RangeSet()
        for s, e in (*self.ranges(), *other.ranges()):
            out.add(s, e)
        return out

    def end(self) -> int:
        """Where the last range ends (0 when empty)."""
        return self._ends[-1] if self._ends else 0

    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)
