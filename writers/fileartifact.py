"""What the index says about one captured file: the bookkeeping half of the file writer.

Pure: it is told what arrived and what could not be written, and answers which byte ranges are
missing and what the index record is. The I/O half lives in ``writers.file``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tracecap.bus import FILE_SOURCES, container_fields
from tracecap.text import is_utf8, text_field
from writers.ranges import RangeSet
from writers.recent import RecentKeys

#: Bounds on per-artifact sets fed by process behaviour, so one busy pipe cannot grow memory.
MAX_PENDING_IOS = 1024
MAX_PIDS = 4096
MAX_SYSCALLS = 32
#: Bus gaps remembered per artifact (the index's gap records hold them all).
MAX_BUS_GAPS = 16
_RECENT_IOS = 256
#: The record fields of an ``untouched`` artifact beside its identity (and ``last_ts``, which
#: equals ``first_ts``): what ``from_state`` adds to a journal's ``new`` state.
_UNTOUCHED: dict[str, Any] = {
    "size": 0,
    "end": 0,
    "missing": [],
    "pids": [],
    "syscalls": [],
    "ios": 0,
    "complete": True,
}


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
        #: The inode generation of the file this artifact is (None: not known), so that a file
        #: reusing the inode number gets its own artifact (Tracee #2888).
        generation = env.get("generation")
        self.generation: int | None = (
            generation if type(generation) is int and generation > 0 else None
        )
        self.kind = kind
        self.append = append
        self.first = {k: env[k] for k in ("pid", "tid", "ppid", "uid", "cgroup_id")}
        self.comm: bytes = env["comm"]
        self.container_id: str = env["container_id"]
        #: what the runtime said of the container (name, image, pod); taken from a later
        #: message when the first ones went out before the collector knew it
        self.container: dict[str, str] = container_fields(env)
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
        #: Ranges known to be in the file, in the same coordinates as ``missing``.
        self.written = RangeSet()
        #: Where in the artifact the bytes are that no syscall's user buffer carried, by the
        #: ``source`` that says how they were obtained (tracecap.bus.FILE_SOURCES: read back
        #: from a file after copy_file_range, sendfile, splice; a shared mapping's dirty pages).
        #: Artifact offsets, also for append artifacts (where ``written`` and ``missing`` are
        #: stream offsets). Each is an index field named by its source.
        self.obtained: dict[str, RangeSet] = {}
        #: How far the artifact's coordinates reach: every byte below is written, missing, or
        #: (unless ``uncertain``) a hole the workload never wrote.
        self.end = 0
        #: Set when bytes may have been lost where no message says (a bus gap while it was
        #: written, a writer that died with it open): then every byte below ``end`` not known
        #: written is missing, not only the ranges losses named.
        self.uncertain = False
        #: A writer died with this artifact open: bytes sent while no writer was there may be
        #: lost beyond anything named, so it is never complete again.
        self.interrupted = False
        #: Transfers lost whose byte count is unknown (bus ``lost_unsized``): no range names
        #: them, so the artifact is incomplete by that many transfers beyond ``missing``.
        self.lost_unsized = 0
        #: Its file existed with no index line found for it (beyond the index scan): what an
        #: earlier line listed missing, possibly past ``end``, is not repeated here, so it is
        #: never complete again.
        self.history_unknown = False
        self._pending: OrderedDict[int, _PendingIo] = OrderedDict()
        self._recent: RecentKeys[int] = RecentKeys(_RECENT_IOS)
        self.last_activity = now
        self.dirty = True

    def observe(self, env: dict[str, Any], now: float) -> None:
        """Note who touched the file and when, whatever the message carries."""
        self.first_ts = min(self.first_ts, env["ts"])
        self.last_ts = max(self.last_ts, env["ts"])
        if not self.container and env["container_id"] == self.container_id:
            self.container = container_fields(env)
        if len(self.pids) < MAX_PIDS:
            self.pids.add(env["pid"])
        elif env["pid"] not in self.pids:
            self.pids_truncated = True
        if len(self.syscalls) < MAX_SYSCALLS:
            self.syscalls.add(env["syscall"][:64])
        self.last_activity = now
        self.dirty = True

    def wrote(self, start: int, length: int) -> None:
        """``length`` bytes reached the file at ``start`` (append: at its end; ``start`` is
        then the stream offset)."""
        if self.append:
            self.extent += length
        else:
            self.extent = max(self.extent, start + length)
        self.written.add(start, start + length)
        self.end = max(self.end, start + length)

    def obtained_by(self, source: str, start: int, length: int) -> None:
        """``length`` bytes at ``start`` were obtained as ``source`` says (see ``obtained``)."""
        self.obtained.setdefault(source, RangeSet()).add(start, start + length)

    def add_missing(self, start: int, end: int) -> None:
        self.missing.add(start, end)
        self.end = max(self.end, end)

    def reach(self, end: int) -> None:
        """A message named bytes up to ``end`` (arrived, lost or refused)."""
        self.end = max(self.end, end)

    def mark_uncertain(self, gap: list[int] | None = None) -> None:
        """Bytes may have been lost unseen: a bus gap (``[epoch, from_seq, to_seq]``, kept up to
        MAX_BUS_GAPS) or a predecessor's death (None)."""
        self.uncertain = True
        if gap is not None and len(self.bus_gaps) < MAX_BUS_GAPS:
            self.bus_gaps.append(gap)

    def missing_ranges(self) -> RangeSet:
        """What the index lists as missing: the ranges losses named, and when ``uncertain``
        every byte below ``end`` not known written."""
        if not self.uncertain:
            return self.missing
        unknown = RangeSet()
        for start, end in self.written.holes(0, self.end):
            unknown.add(start, end)
        return self.missing.union(unknown)

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

    def identity(self) -> dict[str, Any]:
        """The fields of the index record fixed by the artifact's first message: who wrote
        which file, where. The rest of a record is what happened since."""
        rec: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "append": self.append,
            **self.first,
            "comm": text_field(self.comm),
            "container_id": self.container_id,
            **self.container,
            "first_ts": self.first_ts,
            "source_path": text_field(self.source_path),
            "dev": self.dev,
            "inode": self.inode,
        }
        if not is_utf8(self.comm):
            rec["comm_hex"] = self.comm.hex()
        if not is_utf8(self.source_path):
            rec["source_path_hex"] = self.source_path.hex()
        if self.generation is not None:
            rec["generation"] = self.generation
        return rec

    def record(self, size: int, sha256: str | None) -> dict[str, Any]:
        """The index line for the artifact as it is now. ``end`` lets a later process rebuild
        the artifact from this line (``from_record``)."""
        missing = self.missing_ranges()
        rec = self.identity()
        rec.update(
            size=size,
            sha256=sha256,
            complete=not (
                missing
                or self.bus_gaps
                or self.interrupted
                or self.lost_unsized
                or self.history_unknown
            ),
            missing=[[s, e] for s, e in missing.ranges()],
            end=self.end,
            last_ts=self.last_ts,
            pids=sorted(self.pids),
            syscalls=sorted(self.syscalls),
            ios=self.ios,
        )
        if self.pids_truncated:
            rec["pids_truncated"] = True
        if self.bus_gaps:
            rec["bus_gaps"] = self.bus_gaps
        if self.interrupted:
            rec["interrupted"] = True
        if self.lost_unsized:
            rec["lost_unsized"] = self.lost_unsized
        if self.history_unknown:
            rec["history_unknown"] = True
        for source, ranges in self.obtained.items():
            rec[source] = [[s, e] for s, e in ranges.ranges()]
        return rec

    def untouched(self) -> bool:
        """Nothing has happened to the artifact since its first message built it: its record
        is its ``identity`` and the rest at its initial values."""
        return not (
            self.end
            or self.extent
            or self.written
            or self.missing
            or self.pids
            or self.syscalls
            or self.ios
            or self.bus_gaps
            or self.uncertain
            or self.interrupted
            or self.lost_unsized
            or self.history_unknown
            or self.obtained
            or self._pending
        ) and (self.last_ts == self.first_ts)

    # -- leaving memory and coming back --------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the journal keeps of an open artifact: its record so far and the ranges known
        to be in the file (``from_state`` reads it back). An ``untouched`` artifact, the state
        written before a new file's first byte, keeps only its ``identity``: its line took
        8-23 us to build against 21-86 us for the full state (timeit, loaded 2-core host)."""
        if self.untouched():
            return {"new": self.identity()}
        return {
            "record": self.record(self.extent, None),
            "written": [[s, e] for s, e in self.written.ranges()],
            "extent": self.extent,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any], now: float) -> FileArtifact:
        """The artifact an index line describes, to continue it when the file is written
        again after its state was released. Everything below its ``end`` that the line does
        not list as missing counts as written (that is what the line claimed). ValueError when
        the line is not a file record of ours."""
        try:
            env = {k: rec[k] for k in ("pid", "tid", "ppid", "uid", "cgroup_id", "dev", "inode")}
            if not all(type(v) is int for v in env.values()):
                raise ValueError("a numeric field is not an integer")
            env["comm"] = _bytes_field(rec, "comm")
            env["path"] = _bytes_field(rec, "source_path")
            env["container_id"] = rec["container_id"]
            env.update(container_fields(rec))
            env["ts"] = rec["first_ts"]
            env["generation"] = rec.get("generation")
            kind, append, path = rec["kind"], rec["append"], rec["path"]
            if kind not in ("write", "read") or type(append) is not bool:
                raise ValueError(f"not a file record: kind {kind!r}")
            if not isinstance(path, str) or not isinstance(env["container_id"], str):
                raise ValueError("path and container_id must be strings")
            art = cls(path, kind, append, env, now)
            art.last_ts = int(rec["last_ts"])
            art.missing = RangeSet.of(rec["missing"])
            size = rec["size"]
            end = rec.get("end", size)
            if type(size) is not int or type(end) is not int or size < 0 or end < 0:
                raise ValueError("size and end must be non-negative integers")
            art.extent = size
            art.end = max(end, art.missing.end())
            for start, stop in art.missing.holes(0, art.end):
                art.written.add(start, stop)
            pids, syscalls_ = rec["pids"], rec["syscalls"]
            if not isinstance(pids, list) or not isinstance(syscalls_, list):
                raise ValueError("pids and syscalls must be lists")
            art.pids = {p for p in pids[:MAX_PIDS] if type(p) is int}
            art.pids_truncated = bool(rec.get("pids_truncated")) or len(pids) > MAX_PIDS
            art.syscalls = {str(c)[:64] for c in syscalls_[:MAX_SYSCALLS]}
            art.ios = int(rec["ios"])
            gaps = rec.get("bus_gaps", [])
            if not isinstance(gaps, list):
                raise ValueError("bus_gaps must be a list")
            art.bus_gaps = [list(g) for g in gaps[:MAX_BUS_GAPS] if isinstance(g, list)]
            # an incomplete line may have lost bytes it could not name: holes stay missing
            art.uncertain = rec.get("complete") is not True
            art.interrupted = rec.get("interrupted") is True
            art.history_unknown = rec.get("history_unknown") is True
            unsized = rec.get("lost_unsized", 0)
            if type(unsized) is not int or unsized < 0:
                raise ValueError("lost_unsized must be a non-negative integer")
            art.lost_unsized = unsized
            art.obtained = {s: RangeSet.of(rec[s]) for s in FILE_SOURCES if rec.get(s)}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a file record: {exc.__class__.__name__}: {exc}") from None
        return art

    @classmethod
    def from_state(cls, state: dict[str, Any], now: float) -> FileArtifact:
        """An artifact a dead writer left open, from its journal state: only the ranges the
        journal says were written count as written, so everything else below ``end`` is
        missing (``uncertain``). ValueError when the state is damaged."""
        if not isinstance(state, dict):
            raise ValueError("journal state is not an object")
        if isinstance(state.get("new"), dict):
            new = state["new"]
            record = {**new, **_UNTOUCHED, "last_ts": new.get("first_ts")}
            state = {"record": record, "written": [], "extent": 0}
        if not isinstance(state.get("record"), dict):
            raise ValueError("journal state without a record")
        art = cls.from_record(state["record"], now)
        art.written = RangeSet.of(state.get("written"))
        extent = state.get("extent", 0)
        art.extent = extent if type(extent) is int and extent >= 0 else 0
        art.end = max(art.end, art.written.end())
        art.uncertain = art.interrupted = True
        return art


def _bytes_field(rec: dict[str, Any], name: str) -> bytes:
    """A text field of a record as the bytes it stood for (``<name>_hex`` when not UTF-8)."""
    hexed = rec.get(f"{name}_hex")
    if isinstance(hexed, str):
        return bytes.fromhex(hexed)
    value = rec[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value.encode()
