"""What the index says about one captured file: the bookkeeping half of the file writer.

Pure: it is told what arrived and what could not be written, and answers which byte ranges are
missing and what the index record is. The I/O half lives in ``writers.file``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tracecap.text import is_utf8, text_field
from writers.ranges import RangeSet
from writers.recent import RecentKeys

#: Bounds on per-artifact sets fed by process behaviour, so one busy pipe cannot grow memory.
MAX_PENDING_IOS = 1024
MAX_PIDS = 4096
MAX_SYSCALLS = 32
_RECENT_IOS = 256


def syscalls(env: dict[str, Any]) -> int:
    """How many syscalls a message's transfer stands for (``io_count``, checked by
    ``bus.check_transfer``; a message without a count stands for one)."""
    count: int = env.get("io_count", 1)
    return count


@dataclass
class _PendingIo:
    """A transfer of the artifact with bytes still unaccounted for: ``got`` is which of its
    ``length`` bytes arrived or were reported lost. When it is settled incomplete, the rest
    becomes the artifact's missing ranges (at ``base``). At most MAX_PENDING_IOS per artifact."""

    base: int  # offset of the syscall's first byte, in the artifact's coordinates
    length: int
    got: RangeSet = field(default_factory=RangeSet)


class FileArtifact:
    """One ``write.*``/``read.*`` artifact: identity from its first message, history since.

    Missing ranges are file offsets for positional artifacts. For append artifacts (pipes,
    sockets, character devices) they are in the collector's stream coordinates (``off``), the
    only coordinates in which a hole in a stream can be named.
    """

    def __init__(self, path: str, kind: str, append: bool, env: dict[str, Any], now: float):
        self.path = path
        self.kind = kind
        self.append = append
        self.first = {k: env[k] for k in ("pid", "tid", "ppid", "uid", "cgroup_id")}
        self.comm: bytes = env["comm"]
        self.container_id: str = env["container_id"]
        self.source_path: bytes = env["path"]
        self.dev: int = env["dev"]
        self.inode: int = env["inode"]
        self.first_ts: int = env["ts"]
        self.last_ts: int = env["ts"]
        self.pids: set[int] = set()
        self.pids_truncated = False
        self.syscalls: set[str] = set()
        self.ios = 0
        self.missing = RangeSet()
        #: Bus gaps ([epoch, from_seq, to_seq]) while this artifact was being written: the lost
        #: messages may have carried its bytes, at offsets no one can know any more.
        self.bus_gaps: list[list[int]] = []
        #: Bytes this writer put into the file: the fallback size when it cannot be read back.
        self.extent = 0
        self._pending: OrderedDict[int, _PendingIo] = OrderedDict()
        self._recent: RecentKeys[int] = RecentKeys(_RECENT_IOS)
        self.last_activity = now
        self.dirty = True

    def observe(self, env: dict[str, Any], now: float) -> None:
        """Note who touched the file and when, whatever the message carries."""
        self.first_ts = min(self.first_ts, env["ts"])
        self.last_ts = max(self.last_ts, env["ts"])
        if len(self.pids) < MAX_PIDS:
            self.pids.add(env["pid"])
        elif env["pid"] not in self.pids:
            self.pids_truncated = True
        if len(self.syscalls) < MAX_SYSCALLS:
            self.syscalls.add(env["syscall"][:64])
        self.last_activity = now
        self.dirty = True

    def wrote(self, start: int, length: int) -> None:
        """``length`` bytes reached the file at ``start`` (append: at its end)."""
        if self.append:
            self.extent += length
        else:
            self.extent = max(self.extent, start + length)

    def add_missing(self, start: int, end: int) -> None:
        self.missing.add(start, end)

    def account_io(
        self, io_id: int, io_len: int, io_off: int, off: int, length: int, syscalls: int = 1
    ) -> None:
        """Record that ``[io_off, io_off+length)`` of transfer ``io_id`` arrived or was
        accounted for (written, or reported lost). A transfer is one syscall, or a run of
        ``syscalls`` consecutive ones the collector merged. Completed transfers are forgotten."""
        io = self._pending.get(io_id)
        if io is None:
            if io_id in self._recent:
                return  # a duplicate of a syscall already complete
            self.ios += syscalls
            io = _PendingIo(base=max(0, off - io_off), length=io_len)
            self._pending[io_id] = io
            if len(self._pending) > MAX_PENDING_IOS:
                self._settle_io(*self._pending.popitem(last=False))
        io.got.add(io_off, min(io_off + length, io.length))
        if io.got.covers(0, io.length):
            del self._pending[io_id]
            self._recent.add(io_id)

    def _settle_io(self, io_id: int, io: _PendingIo) -> None:
        for start, end in io.got.holes(0, io.length):
            self.missing.add(io.base + start, io.base + end)
        self._recent.add(io_id)

    def settle(self) -> None:
        """Give up on syscalls still incomplete: their chunks arrive microseconds apart, so after
        an idle period the rest was lost. Their unreceived ranges become missing."""
        while self._pending:
            self._settle_io(*self._pending.popitem(last=False))

    def record(self, size: int, sha256: str | None) -> dict[str, Any]:
        """The index line for the artifact as it is now."""
        rec: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "append": self.append,
            "size": size,
            "sha256": sha256,
            "complete": not self.missing and not self.bus_gaps,
            "missing": [[s, e] for s, e in self.missing.ranges()],
            **self.first,
            "comm": text_field(self.comm),
            "container_id": self.container_id,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "source_path": text_field(self.source_path),
            "dev": self.dev,
            "inode": self.inode,
            "pids": sorted(self.pids),
            "syscalls": sorted(self.syscalls),
            "ios": self.ios,
        }
        if not is_utf8(self.comm):
            rec["comm_hex"] = self.comm.hex()
        if not is_utf8(self.source_path):
            rec["source_path_hex"] = self.source_path.hex()
        if self.pids_truncated:
            rec["pids_truncated"] = True
        if self.bus_gaps:
            rec["bus_gaps"] = self.bus_gaps
        return rec
