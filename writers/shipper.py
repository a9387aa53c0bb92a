"""``tracecap writer ship``: follow ``index.jsonl`` and put each artifact into an object store.

Runs as the tracecap user (it reads what the writers wrote, through the same symlink-refusing
opens), holds no lock on anything the writers use, and never writes into ``out/`` except its
state journal (writers/shipstate.py). One loop, once per POLL_S:

1. read the index lines appended since last time (whole lines only: a torn tail is left for
   later); each artifact's latest line is what ships, an earlier one still waiting is
   superseded. A rotated index (``index-rotate:``) is read file by file in order: the oldest
   closed segment there at the first start, then each next one (compressed or not), then the
   live file; the file followed is left for the next only once it is closed (the live name is
   a file whose rotation record says so), read to its end and its lines are up;
2. put the lines read as one index object (writers/shipkeys.py names it by its byte range);
3. put each waiting artifact whose bytes are what its line says (sha256 checked before a file
   that can still change is sent, and of the bytes actually sent, always);
4. with ``--delete-after-upload``, remove local copies once stored and final.

A store that fails stops the round; the next attempt waits 0.5 s, doubling up to 30 s. What is
waiting meanwhile stays on disk, where the writers' disk budget (``--capture limit:``) bounds it,
and is counted (``ship_pending``, ``ship_pending_bytes``); the budget's own refusals, read from
its index records, are counted in ``ship_budget_refused_bytes``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tracecap import rotation, segments
from tracecap.fsutil import DIR_FLAGS, default_opener
from writers.index import INDEX_NAME, parse_line
from writers.s3store import ObjectRefused, Store, StoreError
from writers.shipkeys import BadRecord, artifact_path, index_chunk_key, metadata, object_key
from writers.shipstate import StateJournal, position, split_position

POLL_S = 0.5
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: Most index bytes in one index object (whole lines; a longer line goes up alone).
MAX_CHUNK_BYTES = 8 << 20
#: Kinds whose file can still grow after its index line (a later line then describes it):
#: their bytes are hashed before sending, and a local copy is deleted only once idle this long.
MUTABLE_KINDS = frozenset({"write", "read"})
DELETE_IDLE_S = 60.0
_READ_BLOCK = 1 << 20

COUNTERS = (
    "shipped_artifacts",
    "shipped_bytes",
    "shipped_incomplete",
    "shipped_index_objects",
    "shipped_index_bytes",
    "ship_superseded",
    "ship_already_shipped",
    "ship_changed",
    "ship_gone",
    "ship_bad_records",
    "ship_refused",
    "ship_store_errors",
    "ship_deleted",
    "ship_delete_errors",
    "ship_budget_refused_bytes",
    "ship_index_segments_lost",
    "ship_pending",
    "ship_pending_bytes",
)


@dataclass
class Waiting:
    """An artifact's latest index line, not yet stored."""

    offset: int
    path: str
    record: dict[str, Any]


@dataclass
class Stored:
    """A local copy to delete once it is final (unchanged since it was read)."""

    path: str
    size: int
    mtime_ns: int
    mutable: bool
    #: Its index line's offset: the journal's ``resolved`` stays before it until it is gone,
    #: so that a restart sees the line again and deletes what a killed predecessor did not.
    offset: int


class HashingReader:
    """A file object over an fd that hashes the bytes read, in file order: a part read again
    (a retried upload part seeks back) is not hashed twice."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb", closefd=False)
        self._sha = hashlib.sha256()
        self.hashed = 0

    def read(self, size: int = -1) -> bytes:
        pos = self._file.tell()
        data = self._file.read(size)
        if pos <= self.hashed < pos + len(data):
            self._sha.update(data[self.hashed - pos :])
            self.hashed = pos + len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        """s3transfer closes what it read; the fd stays open for its owner (closefd=False)."""
        self._file.close()


@contextlib.contextmanager
def _parent_beneath(root_fd: int, path: str) -> Iterator[tuple[int, str]]:
    """The directory holding ``path`` (relative, checked by shipkeys) under ``root_fd``, opened
    one component at a time with no symlink followed, and the file's name in it."""
    *dirs, name = path.split("/")
    opener = default_opener()
    fd = root_fd
    owned: list[int] = []
    try:
        for part in dirs:
            fd = opener.open(fd, part, DIR_FLAGS)
            owned.append(fd)
        yield fd, name
    finally:
        for dir_fd in owned:
            os.close(dir_fd)


def open_beneath(root_fd: int, path: str) -> int:
    """Open ``path`` read-only under ``root_fd`` (``_parent_beneath``), never blocking on a
    FIFO; only a regular file."""
    with _parent_beneath(root_fd, path) as (fd, name):
        file_fd = default_opener().open(fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    os.set_blocking(file_fd, True)
    return file_fd


def unlink_beneath(root_fd: int, path: str) -> None:
    """Remove the file ``path`` under ``root_fd`` through directory fds (no symlink followed)."""
    with _parent_beneath(root_fd, path) as (fd, name):
        os.unlink(name, dir_fd=fd)


@dataclass
class IndexFile:
    """One file of the index being read: the live file or a plain closed segment through its fd,
    or a compressed segment's content (closed: it never changes)."""

    number: int
    ino: int
    live: bool
    fd: int = -1
    data: bytes | None = None

    @property
    def id(self) -> str:
        """Names its index objects: its inode, with its number past the first file."""
        return str(self.ino) if self.number == 1 else f"{self.ino}-{self.number:06d}"

    def pread(self, length: int, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        return os.pread(self.fd, length, offset)

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def file_sha256(fd: int) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    while block := os.pread(fd, _READ_BLOCK, size):
        sha.update(block)
        size += len(block)
    return sha.hexdigest(), size


class Shipper:
    """The loop's state; ``step`` is one round, ``run`` loops until ``stop``."""

    def __init__(
        self,
        root_fd: int,
        store: Store,
        host: str,
        prefix: str = "",
        *,
        delete_after_upload: bool = False,
        journal: StateJournal | None = None,
        log: Callable[[str, str], None] = lambda _category, _msg: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._root_fd = root_fd
        self._store = store
        self.host = host
        self.prefix = prefix
        self._delete = delete_after_upload
        self.journal = journal or StateJournal(root_fd)
        self._log = log
        self._clock = clock
        self._wall = wall_clock
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.waiting: OrderedDict[str, Waiting] = OrderedDict()
        self._to_delete: dict[str, Stored] = {}
        #: The index file being read, and where: its number and the byte after the last whole
        #: line taken. A restart reads from the journal's ``resolved`` (which may lie in a file
        #: before the one the journal follows: those are read again, their index objects are up).
        self._file: IndexFile | None = None
        self._read_number, self.read_offset = split_position(self.journal.state.resolved)
        self._failures = 0
        self._retry_at = float("-inf")
        self.store_down = False

    # -- the index ----------------------------------------------------------------------------

    def _open_live(self) -> IndexFile | None:
        """The live index file (None while the name is missing, or not a regular file)."""
        try:
            fd = open_beneath(self._root_fd, INDEX_NAME)
        except OSError:
            return None
        number = segments.live_number(fd, INDEX_NAME)
        return IndexFile(number, os.fstat(fd).st_ino, True, fd)

    def _open_closed(self, number: int) -> IndexFile | None:
        """Closed segment ``number``: the plain file while it is there, else its ``.gz`` read
        whole; None when neither is (removed to keep the count)."""
        plain = rotation.segment_name(INDEX_NAME, number)
        try:
            fd = segments.open_segment_fd(self._root_fd, plain)
            return IndexFile(number, os.fstat(fd).st_ino, False, fd)
        except FileNotFoundError:
            pass
        try:
            with segments.open_segment(self._root_fd, plain + rotation.GZIP_SUFFIX) as stream:
                ino = os.fstat(stream.fileno()).st_ino
                return IndexFile(number, ino, False, data=stream.read())
        except FileNotFoundError:
            return None
        except (OSError, EOFError) as exc:  # not gzip, or cut short: its lines cannot be read
            self._log("index", f"{plain}{rotation.GZIP_SUFFIX} not readable: {exc}")
            return None

    def _open_reading(self) -> bool:
        """Open the file to read next (``_read_number``), starting over from the oldest file
        there when the index was begun again; False when there is none yet."""
        live = self._open_live()
        if live is None:
            return False
        state = self.journal.state
        replaced = (
            state.index_id is None
            or state.number > live.number
            or (state.number == live.number and state.index_id != live.id)
        )
        if replaced:
            if state.index_id is not None:
                self._log("index", f"{INDEX_NAME} was replaced: following it from its start")
            self.waiting.clear()
            self._read_number = segments.lowest_number(self._root_fd, INDEX_NAME, live.number)
            self.read_offset = 0
        while self._read_number < live.number:
            found = self._open_closed(self._read_number)
            if found is not None:
                live.close()
                return self._reading(found, replaced)
            self.counters["ship_index_segments_lost"] += 1
            self._log("index", f"index segment {self._read_number} gone before it was read")
            self._read_number += 1
            self.read_offset = 0
        return self._reading(live, replaced)

    def _reading(self, found: IndexFile, replaced: bool) -> bool:
        self._file = found
        if replaced:
            self.journal.record({"index": found.id, "number": found.number})
        elif found.number > self.journal.state.number:
            self.journal.record({"follow": found.number, "id": found.id})
        return True

    def _closed(self) -> bool:
        """Whether the file being read will get no more lines: a closed segment, or the live
        file once the name holds a later one (its writers append to that one from then on)."""
        assert self._file is not None
        if not self._file.live:
            return True
        try:
            st = os.stat(INDEX_NAME, dir_fd=self._root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False  # mid-rotation: the new file takes the name next
        if st.st_ino == self._file.ino:
            return False
        live = self._open_live()
        if live is None:
            return False
        live.close()
        if live.number > self._file.number:
            return True
        self._file.close()  # begun again (clear-dir): _open_reading starts over
        self._file = None
        return False

    def _read_index(self) -> bool:
        """Take the lines appended since last time; True when it moved on to a later file (whose
        lines then go up as index objects before it can move on again)."""
        moved = False
        while True:
            if self._file is None and not self._open_reading():
                return moved
            assert self._file is not None
            closed = self._closed()  # before reading: every line of a closed file is then read
            if self._file is None:
                continue
            for offset, line in self._read_lines():
                self._take(position(self._file.number, offset), line)
            if not closed:
                return moved
            state = self.journal.state
            if self._file.number == state.number and (
                state.chunk_open is not None or state.chunk_done < self.read_offset
            ):
                return moved  # its lines go up as index objects first
            if self.read_offset < self._file.size():  # a tail torn by a crash, never ended
                self.counters["ship_bad_records"] += 1
            self._file.close()
            self._file = None
            self._read_number += 1
            self.read_offset = 0
            moved = True

    def _read_lines(self) -> list[tuple[int, bytes]]:
        """The whole lines appended since ``read_offset``, with their offsets."""
        assert self._file is not None
        size = self._file.size()
        out: list[tuple[int, bytes]] = []
        while self.read_offset < size:
            data = self._file.pread(min(size - self.read_offset, MAX_CHUNK_BYTES), self.read_offset)
            end = data.rfind(b"\n")
            if end < 0:
                break  # a torn tail, or a line longer than a chunk: waits for its newline
            offset = self.read_offset
            for line in data[: end + 1].split(b"\n")[:-1]:
                out.append((offset, line))
                offset += len(line) + 1
            self.read_offset += end + 1
        return out

    def _take(self, offset: int, line: bytes) -> None:
        record = parse_line(line)
        if record is None:
            self.counters["ship_bad_records"] += 1
            return
        if record.get("kind") == "budget" and record.get("state") == "resumed":
            refused = record.get("refused_bytes")
            if isinstance(refused, int):
                self.counters["ship_budget_refused_bytes"] += refused
        try:
            path = artifact_path(record)
            if path is not None:
                object_key(self.prefix, self.host, path)
        except BadRecord as exc:
            self.counters["ship_bad_records"] += 1
            number, byte = split_position(offset)
            self._log(
                "bad_record", f"index line at byte {byte} of file {number} not shipped: {exc}"
            )
            return
        if path is None:
            return
        sha = record.get("sha256")
        if sha is not None and self.journal.state.shipped.get(path) == sha:
            self.counters["ship_already_shipped"] += 1
            if self._delete:
                self._redelete(offset, path, record, sha)
            return
        if self.waiting.pop(path, None) is not None:
            self.counters["ship_superseded"] += 1
        self.waiting[path] = Waiting(offset, path, record)

    # -- the store ----------------------------------------------------------------------------

    def _ship_index(self) -> None:
        """Put the lines of the file the journal follows in ``[chunk_done, read)`` (or a chunk
        begun before a crash) as index objects; none while an earlier file is read again."""
        state = self.journal.state
        index = self._file
        if index is None or index.number != state.number:
            return
        while True:
            if state.chunk_open is not None:
                start, stop = state.chunk_open
            elif state.chunk_done < self.read_offset:
                start = state.chunk_done
                data = index.pread(min(self.read_offset - start, MAX_CHUNK_BYTES), start)
                cut = data.rfind(b"\n")
                if cut < 0:
                    return
                stop = start + cut + 1
                self.journal.record({"chunk": [start, stop]})
            else:
                return
            data = index.pread(stop - start, start)
            key = index_chunk_key(self.prefix, self.host, state.index_id or "0", start, stop)
            meta = {"sha256": hashlib.sha256(data).hexdigest(), "kind": "index"}
            self._store.put_bytes(key, data, meta)
            self.journal.record({"chunk_done": stop})
            self.counters["shipped_index_objects"] += 1
            self.counters["shipped_index_bytes"] += len(data)

    def _ship_one(self, item: Waiting) -> bool:
        """Put one artifact; False when it must wait (it changed since its line). StoreError
        propagates (the round stops)."""
        record = item.record
        key = object_key(self.prefix, self.host, item.path)
        try:
            fd = open_beneath(self._root_fd, item.path)
        except OSError as exc:
            self.counters["ship_gone"] += 1
            self._log("gone", f"{item.path} not shipped: {exc}")
            return True
        try:
            mutable = record.get("kind") in MUTABLE_KINDS
            expected = record.get("sha256")
            if mutable or not isinstance(expected, str):
                expected, _ = file_sha256(fd)
                if record.get("sha256") not in (None, expected):
                    self.counters["ship_changed"] += 1
                    return False  # written again since its line: the next line describes it
            if item.path in self.journal.state.deleted:
                # written again after its copy was deleted: the writer started a new artifact
                # (the earlier bytes are gone from disk); the first object is never overwritten
                key = f"{key}.{expected}"
            st = os.fstat(fd)
            reader = HashingReader(fd)
            self._store.put_file(key, reader, metadata(record, expected))  # type: ignore[arg-type]
            if reader.hashed != st.st_size or reader.hexdigest() != expected:
                # changed while it went up: the object is not what its metadata says
                self.counters["ship_changed"] += 1
                self._store.delete(key)
                self.journal.record({"shipped": item.path, "sha256": None})
                return False
        finally:
            os.close(fd)
        self.journal.record({"shipped": item.path, "sha256": expected})
        self.counters["shipped_artifacts"] += 1
        self.counters["shipped_bytes"] += st.st_size
        if record.get("complete") is False:
            self.counters["shipped_incomplete"] += 1
        if self._delete:
            self._to_delete[item.path] = Stored(
                item.path, st.st_size, st.st_mtime_ns, mutable, item.offset
            )
        return True

    def _redelete(self, offset: int, path: str, record: dict[str, Any], sha: str) -> None:
        """After a restart: delete a local copy a predecessor stored and did not get to delete,
        once its bytes are checked to be what went up."""
        try:
            fd = open_beneath(self._root_fd, path)
        except OSError:
            return  # deleted already, or not ours to touch
        try:
            if file_sha256(fd)[0] != sha:
                return  # written again since: its next line ships it
            st = os.fstat(fd)
        finally:
            os.close(fd)
        mutable = record.get("kind") in MUTABLE_KINDS
        self._to_delete[path] = Stored(path, st.st_size, st.st_mtime_ns, mutable, offset)

    def _ship_waiting(self) -> None:
        for item in list(self.waiting.values()):
            try:
                shipped = self._ship_one(item)
            except ObjectRefused as exc:
                self.counters["ship_refused"] += 1
                self._log("refused", f"{item.path} not shipped: {exc}")
                shipped = True
            if shipped:
                del self.waiting[item.path]

    def _delete_stored(self) -> None:
        now = self._wall()
        for path, stored in list(self._to_delete.items()):
            try:
                st = os.stat(path, dir_fd=self._root_fd, follow_symlinks=False)
            except OSError:
                del self._to_delete[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (stored.size, stored.mtime_ns):
                del self._to_delete[path]  # written again: its next line ships and deletes it
                continue
            if stored.mutable and now - st.st_mtime_ns / 1e9 < DELETE_IDLE_S:
                continue
            del self._to_delete[path]
            try:
                unlink_beneath(self._root_fd, path)
                self.journal.record({"deleted": path})
                self.counters["ship_deleted"] += 1
            except OSError as exc:
                self.counters["ship_delete_errors"] += 1
                self._log("delete", f"{path}: local copy not deleted: {exc}")

    # -- the loop -----------------------------------------------------------------------------

    def _resolved(self) -> int:
        pending = [item.offset for item in self.waiting.values()]
        pending += [stored.offset for stored in self._to_delete.values()]
        return min(pending, default=position(self._read_number, self.read_offset))

    def _gauges(self) -> None:
        self.counters["ship_pending"] = len(self.waiting)
        total = 0
        for item in self.waiting.values():
            size = item.record.get("size")
            total += size if isinstance(size, int) else 0
        self.counters["ship_pending_bytes"] = total

    def step(self) -> None:
        """One round: read the index, then (unless backing off) put what waits."""
        self._read_index()
        now = self._clock()
        if now >= self._retry_at and self._file is not None:
            try:
                self._ship_index()
                while self._read_index():  # a rotated file whose lines are all up: the next
                    self._ship_index()
                self._ship_waiting()
            except StoreError as exc:
                self.counters["ship_store_errors"] += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self._failures)
                self._failures += 1
                self._retry_at = now + delay
                if not self.store_down:
                    self._log("store", f"store unreachable, artifacts kept locally: {exc}")
                self.store_down = True
            else:
                if self.store_down:
                    self._log("store", "store reachable again")
                self.store_down = False
                self._failures = 0
        if self._delete:
            self._delete_stored()
        resolved = self._resolved()
        if resolved > self.journal.state.resolved:
            self.journal.record({"resolved": resolved})
        self._gauges()

    def run(self, stop: threading.Event, on_round: Callable[[], None] = lambda: None) -> None:
        while not stop.is_set():
            self.step()
            on_round()
            stop.wait(POLL_S)
        self.step()  # what the writers indexed as they stopped
        on_round()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.journal.close()


def run_shipper(
    out_dir: str,
    bucket: str,
    *,
    prefix: str = "",
    endpoint_url: str | None = None,
    delete_after_upload: bool = False,
    stats_dir: str | None = None,
    host: str | None = None,
    drop_to: str | None = "tracecap",
    stop: threading.Event | None = None,
) -> int:
    """``tracecap writer ship``: drop to the tracecap user first (credentials and
    ``~/.aws/config`` are then that user's), then ship until SIGTERM/SIGINT, ending with one
    last round; its counters go to ``<stats_dir>/writer-ship.json`` and, at exit, to stderr."""
    import socket
    import sys

    from tracecap.privileges import drop_privileges
    from tracecap.stats import StatsFile
    from writers.outdir import OutputDir
    from writers.ratelog import RateLimitedLog
    from writers.runner import _install_signals, _restore_signals
    from writers.s3store import S3Store

    if drop_to is not None:
        drop_privileges(drop_to)
    log = RateLimitedLog("tracecap writer ship")
    stop = stop or threading.Event()
    out = OutputDir(out_dir)
    stats: StatsFile | None = None
    if stats_dir:
        try:
            stats = StatsFile(stats_dir, "ship")
        except OSError as exc:
            log("stats", f"no counters file in {stats_dir}: {exc}")
    try:
        store = S3Store(bucket, endpoint_url)
        shipper = Shipper(
            out.root_fd,
            store,
            host or socket.gethostname(),
            prefix,
            delete_after_upload=delete_after_upload,
            log=log,
        )

        def publish() -> None:
            if stats is not None:
                with contextlib.suppress(OSError):
                    stats.write({"name": "ship", "pid": os.getpid(), **shipper.counters})

        previous = _install_signals(stop)
        try:
            shipper.run(stop, publish)
        finally:
            _restore_signals(previous)
            shipper.close()
        summary = ", ".join(f"{k} {v}" for k, v in shipper.counters.items() if v)
        print(f"tracecap writer ship: {summary or 'nothing shipped'}", file=sys.stderr)
    finally:
        if stats is not None:
            stats.close()
        out.close()
    return 0
