"""The file writer: written and read file contents, stored as Tracee's ``--capture write|read``.

Each ``file.write.``/``file.read.`` message carries a chunk of one syscall's transfer; chunks land
at their file offset (``pwrite``) or, for streams, at the end of the artifact. An artifact's index
record is appended once it has been idle for ``idle_seconds`` and again at close; more data after
a flush yields another record for the same path, and **the last record for a path is current**.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from tracecap import bus
from writers.base import PAYLOAD_QUEUE_MESSAGES, Writer
from writers.budget import DiskBudget
from writers.fileartifact import FileArtifact, syscalls
from writers.fileio import FdCache, digest_fd, write_all
from writers.gaps import Gap
from writers.index import Index
from writers.naming import container_dir, file_artifact_name
from writers.outdir import OutputDir
from writers.ratelog import RateLimitedLog

DIRECTIONS = {"write": bus.TOPIC_FILE_WRITE, "read": bus.TOPIC_FILE_READ}
#: Writes to /dev/null are split per pid: they are what droppers use to hide output, and one
#: artifact mixing every process's discarded bytes would say nothing about any of them.
#: Bus gaps remembered per artifact (the index's gap records hold them all).
MAX_BUS_GAPS = 16
_DEV_NULL = b"/dev/null"

_Key = tuple[str, str]  # (container directory, artifact name)


class FileWriter(Writer):
    """Persists file contents and keeps one ``FileArtifact`` per output file.

    Open fds are an LRU of ``max_open``: artifacts are opened without truncation and written at
    explicit offsets (or with ``O_APPEND``), so closing one and reopening it later is harmless.
    Artifact bookkeeping is kept for the writer's lifetime so later records stay cumulative.
    """

    queue_messages = PAYLOAD_QUEUE_MESSAGES

    name = "file"

    def __init__(
        self,
        out: OutputDir,
        index: Index,
        directions: Iterable[str] = ("write", "read"),
        *,
        max_open: int = 128,
        idle_seconds: float = 1.0,
        max_hash_bytes: int = 4 << 30,
        clock: Callable[[], float] = time.monotonic,
        log: RateLimitedLog | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        super().__init__(budget)
        self.directions = tuple(directions)
        unknown = set(self.directions) - DIRECTIONS.keys()
        if unknown or not self.directions:
            raise ValueError(f"directions must be among {sorted(DIRECTIONS)}, got {directions!r}")
        self.topics = tuple(DIRECTIONS[d] for d in self.directions)
        self._out = out
        self._index = index
        self._idle = idle_seconds
        self._max_hash_bytes = max_hash_bytes
        self._clock = clock
        self._log = log or RateLimitedLog("tracecap-writer[file]")
        self._artifacts: dict[_Key, FileArtifact] = {}
        #: The inode generation that owns each artifact name (Tracee #2888).
        self._generations: dict[_Key, int] = {}
        self._dirty: OrderedDict[_Key, None] = OrderedDict()  # oldest activity first
        self._fds: FdCache[_Key] = FdCache(max_open)
        self.counters.update(
            dict.fromkeys(
                (
                    "artifacts",
                    "records",
                    "bytes_written",
                    "write_errors",
                    "rejected",
                    "index_errors",
                    "hash_skipped",
                ),
                0,
            )
        )

    # -- messages ----------------------------------------------------------------------------

    def _direction(self, topic: bytes) -> str | None:
        for direction in self.directions:
            if topic.startswith(DIRECTIONS[direction]):
                return direction
        return None

    def on_gap(self, gap: Gap) -> None:
        """Messages of this direction were lost on the bus: every artifact still being written
        may have lost bytes in them, so each says so (``bus_gaps``, ``complete: false``)."""
        direction = self._direction(gap.topic)
        for key in self._dirty:
            art = self._artifacts.get(key)
            if art is not None and art.kind == direction and len(art.bus_gaps) < MAX_BUS_GAPS:
                art.bus_gaps.append([gap.epoch, gap.from_seq, gap.to_seq])

    def _generation_name(self, subdir: str, name: str, generation: object) -> str:
        """A file that reuses a freed inode number is another file: it gets its own artifact
        (``.gen-<G>`` added) instead of writing over, or inheriting the tail of, the old one.
        Messages without a generation (loss notices) stay with the name's first owner."""
        if not isinstance(generation, int) or isinstance(generation, bool) or generation <= 0:
            return name
        owner = self._generations.setdefault((subdir, name), generation)
        return name if owner == generation else f"{name}.gen-{generation}"

    def handle(self, msg: bus.Message) -> None:
        direction = self._direction(msg.topic)
        if direction is None:
            return
        env, payload = msg.env, msg.payload
        try:
            lost = bus.parse_lost(env.get("lost"))
            bus.check_transfer(env, len(payload))
            subdir = container_dir(env["container_id"])
            pid = env["pid"] if direction == "write" and env["path"] == _DEV_NULL else None
            name = file_artifact_name(direction, env["dev"], env["inode"], pid)
        except ValueError as exc:  # bus.BadFileMessage, or values that cannot name a file
            self.counters["rejected"] += 1
            self._log("rejected", f"file message refused: {exc}")
            return
        name = self._generation_name(subdir, name, env.get("generation"))
        key = (subdir, name)
        now = self._clock()
        art = self._artifacts.get(key)
        if art is None:
            art = FileArtifact(f"{subdir}/{name}", direction, env["append"], env, now)
            self._artifacts[key] = art
            self.counters["artifacts"] += 1
        art.observe(env, now)
        self._dirty[key] = None
        self._dirty.move_to_end(key)

        if lost:
            for start, end in lost:
                art.add_missing(start, end)
            accounted = sum(end - start for start, end in lost)
        else:
            accounted = len(payload)
            if payload:
                self._write(key, art, env["off"], payload)
        art.account_io(
            env["io_id"], env["io_len"], env["io_off"], env["off"], accounted, syscalls(env)
        )

    def _write(self, key: _Key, art: FileArtifact, off: int, payload: bytes) -> None:
        """Put ``payload`` in place; whatever could not be written is recorded as missing.

        The disk budget is asked first: refused bytes are missing exactly like bytes the disk
        would not take, so the index never presents them as captured."""
        if self._budget is not None and not self._budget.allow(len(payload)):
            art.add_missing(off, off + len(payload))
            return
        try:
            fd = self._fd(key, art)
        except OSError as exc:
            done, error = 0, exc
        else:
            done, error = write_all(fd, payload, off, art.append)
        if error is not None:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{art.path}: {error}")
            art.add_missing(off + done, off + len(payload))
        if done:
            art.wrote(off, done)
            self.counters["bytes_written"] += done

    def _fd(self, key: _Key, art: FileArtifact) -> int:
        fd = self._fds.get(key)
        if fd is None:
            subdir, name = key
            fd = self._out.open_artifact(subdir, name, append=art.append)
            self._fds.add(key, fd)
        return fd

    # -- flushing ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Flush artifacts idle for ``idle_seconds``; oldest first, so stop at a busy one."""
        while self._dirty:
            key = next(iter(self._dirty))
            if now - self._artifacts[key].last_activity < self._idle:
                return
            self._flush(key)

    def _digest(self, key: _Key, art: FileArtifact) -> tuple[int, str | None]:
        """Size and sha256 of what is actually on disk, read back through the artifact's fd."""
        try:
            size, sha256 = digest_fd(self._fd(key, art), self._max_hash_bytes)
        except OSError as exc:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{art.path}: cannot hash: {exc}")
            return art.extent, None
        if sha256 is None:
            self.counters["hash_skipped"] += 1
        return size, sha256

    def _flush(self, key: _Key) -> None:
        self._dirty.pop(key, None)
        art = self._artifacts[key]
        art.settle()
        size, sha256 = self._digest(key, art)
        art.dirty = False
        record = art.record(size, sha256)
        if self._index.append_or_count(record, self.counters, self._log, f"{art.path}: record"):
            self.counters["records"] += 1

    def close(self) -> None:
        while self._dirty:
            self._flush(next(iter(self._dirty)))
        self._fds.close_all()
