"""The disk budget: ``--capture limit:<N>mb|gb`` for the whole output tree, and a free-space floor
(``--capture floor:<N>mb|gb``, default ``tracecap.options.DEFAULT_FLOOR_BYTES``).

Every writer process decides for itself, before each artifact write, whether the bytes may go to
disk. There is no coordinator to ask (and none to crash or stall): each process measures the
shared tree on its own, by walking it at most once a second, and adds what it wrote itself since
that walk. Other processes' writes are therefore seen up to one walk late, so the tree can overshoot
the limit by what all writers together write in about a second; that is the price of needing no
shared state between unprivileged processes that may be killed and restarted at any moment.

Usage is the allocated size (``st_blocks * 512``) of everything under ``out/``, because that is what
the disk actually loses: a sparse object with a missing tail costs nothing, a 1-byte file costs a
block. The walk goes through directory fds with ``O_NOFOLLOW`` and never follows a symlink, so a
link planted in the tree cannot make us measure (or stall on) something outside it, and it is
bounded in entries and depth.

Refused data is never written; the caller records it as missing for its artifact. The budget keeps
the rest honest: counters, one log line and one index record when refusing starts, and one of each
when writes are allowed again. To keep a tree hovering at the limit from producing a pair of records
per write, resuming needs a margin (1/16 of the limit or floor) below the line that stopped it.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Any, Protocol

from tracecap.options import DEFAULT_FLOOR_BYTES
from writers.index import Index
from writers.outdir import DIR_FLAGS
from writers.ratelog import RateLimitedLog

#: Shortest time between two measurements (walk of the tree and statvfs).
REFRESH_SECONDS = 1.0
#: A walk may take at most this share of the time: a huge tree is measured less often, not longer.
MAX_WALK_SHARE = 0.1
#: Bounds of one walk; past them the count is a lower bound (counted in ``budget_walk_truncated``).
MAX_WALK_ENTRIES = 200_000
MAX_WALK_DEPTH = 16
#: Resuming needs this share of the limit (or floor) as room beyond the refused size.
RESUME_MARGIN_DIVISOR = 16

_COUNTERS = (
    "budget_refused_bytes",
    "budget_refused_writes",
    "budget_refusing_periods",
    "budget_walks",
    "budget_walk_errors",
    "budget_walk_truncated",
)


class StatvfsResult(Protocol):
    """The two fields of ``os.statvfs_result`` the floor needs (a fake in tests)."""

    @property
    def f_bavail(self) -> int: ...

    @property
    def f_frsize(self) -> int: ...


def tree_usage(
    root_fd: int, max_entries: int = MAX_WALK_ENTRIES, max_depth: int = MAX_WALK_DEPTH
) -> tuple[int, bool]:
    """Allocated bytes of everything below the directory ``root_fd``, and whether the walk was cut
    short by its bounds. Entries that vanish during the walk (a file deleted, an object renamed
    into place) are skipped; symlinks count their own blocks and are never followed."""
    total = 0
    entries = 0
    truncated = False
    # a fresh open file description: scandir on a dup of root_fd would share its read position
    stack: list[tuple[int, int]] = [(os.open(".", DIR_FLAGS, dir_fd=root_fd), 0)]
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        entries += 1
                        if entries > max_entries:
                            truncated = True
                            return total, truncated
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        total += st.st_blocks * 512
                        if not stat.S_ISDIR(st.st_mode):
                            continue
                        if depth + 1 > max_depth:
                            truncated = True
                            continue
                        try:
                            sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                        except OSError as exc:
                            # gone, or replaced by a symlink since the stat: not ours to measure
                            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                                continue
                            raise
                        stack.append((sub, depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total, truncated


class DiskBudget:
    """Says whether ``nbytes`` more of artifact data may be written, for one writer process.

    ``root`` is the output directory (``out/``), as an fd (borrowed, not closed) or a path (opened
    here without following a symlink). ``limit_bytes`` None means only the free-space floor
    applies. ``index`` and ``name`` make the refusing/resumed records; ``bind_counters`` lets a
    writer publish the budget's counters with its own.
    """

    def __init__(
        self,
        root: int | str,
        limit_bytes: int | None,
        floor_bytes: int = DEFAULT_FLOOR_BYTES,
        clock: Callable[[], float] = time.monotonic,
        *,
        statvfs: Callable[[int], StatvfsResult] = os.statvfs,
        index: Index | None = None,
        name: str = "writer",
        log: RateLimitedLog | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if limit_bytes is not None and limit_bytes <= 0:
            raise ValueError(f"limit_bytes must be positive, got {limit_bytes}")
        if floor_bytes < 0:
            raise ValueError(f"floor_bytes must not be negative, got {floor_bytes}")
        if isinstance(root, str):
            self._fd = os.open(root, DIR_FLAGS)
            self._owned = True
        else:
            self._fd = root
            self._owned = False
        self.limit_bytes = limit_bytes
        self.floor_bytes = floor_bytes
        self._clock = clock
        self._statvfs = statvfs
        self._index = index
        self._name = name
        self._log = log or RateLimitedLog(f"tracecap-writer[{name}]")
        self._wall_clock = wall_clock
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        #: Tree usage at the last walk (None: never measured, or the walk failed).
        self._walked: int | None = None
        #: Free bytes at the last statvfs (None: unknown, the floor cannot be judged).
        self._free: int | None = None
        #: Bytes this process allowed since the last measurement.
        self._since = 0
        self._next_refresh = float("-inf")
        self.refusing = False
        self._period_bytes = 0
        self._period_writes = 0

    def bind_counters(self, counters: dict[str, int]) -> None:
        """Count into the writer's own counters, so ``tracecap status`` shows them with its."""
        for key in _COUNTERS:
            counters.setdefault(key, self.counters.get(key, 0))
        counters.setdefault("index_errors", 0)
        self.counters = counters

    # -- measuring -----------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        """Measure the tree (only when there is a limit) and the free space, then start counting
        this process's writes from zero again. Failures make a figure unknown, never fatal."""
        took = 0.0
        if self.limit_bytes is not None:
            started = self._clock()
            try:
                self._walked, truncated = tree_usage(self._fd)
                self.counters["budget_walks"] += 1
                if truncated:
                    self.counters["budget_walk_truncated"] += 1
                    self._log(
                        "budget_walk",
                        "output tree too large to measure whole; usage is a lower bound",
                    )
            except OSError as exc:
                # keep the last figure plus what we wrote: better stale than none
                if self._walked is not None:
                    self._walked += self._since
                self.counters["budget_walk_errors"] += 1
                self._log("budget_walk", f"output tree not measured: {exc}")
            took = max(0.0, self._clock() - started)
        try:
            st = self._statvfs(self._fd)
            self._free = st.f_bavail * st.f_frsize
        except OSError as exc:
            self._free = None
            self._log("budget_statvfs", f"free space unknown: {exc}")
        self._since = 0
        self._next_refresh = now + max(REFRESH_SECONDS, took / MAX_WALK_SHARE)

    def used_bytes(self) -> int | None:
        """The tree's usage as this process knows it: the last walk plus its own writes since."""
        return None if self._walked is None else self._walked + self._since

    def free_bytes(self) -> int | None:
        """Free space as this process knows it: the last statvfs minus its own writes since."""
        return None if self._free is None else self._free - self._since

    def _refusal(self, nbytes: int) -> str | None:
        """Why ``nbytes`` may not be written now, or None. While refusing, the margin applies."""
        used = self.used_bytes()
        if self.limit_bytes is not None and used is not None:
            margin = self.limit_bytes // RESUME_MARGIN_DIVISOR if self.refusing else 0
            if used + nbytes > self.limit_bytes - margin:
                return f"limit {self.limit_bytes} bytes reached (used {used} bytes)"
        free = self.free_bytes()
        if free is not None:
            margin = self.floor_bytes // RESUME_MARGIN_DIVISOR if self.refusing else 0
            if free - nbytes < self.floor_bytes + margin:
                return f"free space below {self.floor_bytes} bytes (free {free} bytes)"
        return None

    # -- deciding ------------------------------------------------------------------------------

    def allow(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of artifact data may be written now. True means the caller writes
        them (they are counted as used until the next walk); False means it records them as
        missing. Never raises."""
        now = self._clock()
        if now >= self._next_refresh:
            self._refresh(now)
        reason = self._refusal(nbytes)
        if reason is None:
            if self.refusing:
                self._resume()
            self._since += nbytes
            return True
        self.counters["budget_refused_bytes"] += nbytes
        self.counters["budget_refused_writes"] += 1
        self._period_bytes += nbytes
        self._period_writes += 1
        if not self.refusing:
            self._start_refusing(reason)
        return False

    def _start_refusing(self, reason: str) -> None:
        self.refusing = True
        self.counters["budget_refusing_periods"] += 1
        self._log("budget_refusing", f"disk budget: {reason}; new artifact data is refused")
        self._append({"state": "refusing", "reason": reason})

    def _resume(self) -> None:
        refused_bytes, refused_writes = self._period_bytes, self._period_writes
        self.refusing = False
        self._period_bytes = self._period_writes = 0
        self._log(
            "budget_resumed",
            f"disk budget: room again; capture resumed ({refused_bytes} bytes in "
            f"{refused_writes} writes were refused)",
        )
        self._append(
            {"state": "resumed", "refused_bytes": refused_bytes, "refused_writes": refused_writes}
        )

    def _append(self, fields: dict[str, Any]) -> None:
        if self._index is None:
            return
        record: dict[str, Any] = {
            "kind": "budget",
            "writer": self._name,
            "limit_bytes": self.limit_bytes,
            "floor_bytes": self.floor_bytes,
            "ts": self._wall_clock(),
            **fields,
        }
        self._index.append_or_count(record, self.counters, self._log, "budget record")

    def close(self) -> None:
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
