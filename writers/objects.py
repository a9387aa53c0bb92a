"""Whole-object artifacts: executed binaries, memory regions, kernel modules, BPF programs.

Unlike files, these objects have a known size and an end: the collector streams one as messages
sharing an ``obj_id`` and marks the last one. ``ObjectWriter`` assembles each object in a hidden
temporary file, hashes what actually reached the disk, and only then gives it its final name,
so an artifact under a final name is always finished, and a kind can put the content's sha256 in
the name and deduplicate on it. The bookkeeping half (``ObjectAssembly``, ``check_object``,
``parse_index_line``) is pure; the I/O half is ``ObjectWriter``.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import json
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import IO, Any

from tracecap import bus
from tracecap.text import text_fields
from writers.base import PAYLOAD_QUEUE_MESSAGES, Writer
from writers.budget import DiskBudget
from writers.digest import sha256_of_fd
from writers.fileartifact import parse_lost
from writers.naming import container_dir, partial_name
from writers.outdir import FILE_MODE, INDEX_NAME, Index, OutputDir
from writers.ranges import RangeSet
from writers.ratelog import RateLimitedLog

#: Objects assembled at once; past this the least recently active one is finalised incomplete,
#: so a collector that never sends ``last`` cannot exhaust fds or memory.
MAX_IN_FLIGHT = 64
#: An object that sees no message this long is given up (its chunks arrive back to back).
IDLE_SECONDS = 30.0
#: The largest object accepted. Bigger than any binary, module or region we expect, and small
#: enough that hashing the (possibly sparse) result cannot stall the writer for minutes.
MAX_OBJECT_BYTES = 4 << 30
#: Finished (epoch, obj_id) pairs remembered so a late duplicate chunk is not a new object.
MAX_RECENT_DONE = 4096
#: Dedup keys kept; past this the oldest are forgotten, which can only cause a re-capture.
MAX_DEDUP_KEYS = 1 << 20
#: ``.1`` ... ``.<n>`` tried when a final name is taken (fits naming.COLLISION_ROOM).
MAX_COLLISIONS = 1000
MAX_ERROR_CHARS = 1024
#: Longest index line considered when rebuilding dedup state; longer ones are counted bad.
MAX_INDEX_LINE = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ZERO_SHA256 = "0" * 64
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_INDEX_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_COMMON = ("pid", "tid", "ppid", "uid", "cgroup_id")

Meta = dict[str, Any]
DedupKey = tuple[Any, ...]
_Key = tuple[int, int]  # (epoch, obj_id)


class BadObjectMessage(ValueError):
    """An object message that decodes but cannot describe a real object."""


def check_object(env: Meta) -> list[tuple[int, int]]:
    """Refuse sizes and offsets no real object has, before they reach ``pwrite``; return the
    message's ``lost`` ranges. ``ts`` and ``pid`` name artifacts, so they must be non-negative."""
    obj_off, obj_len = env["obj_off"], env["obj_len"]
    if not 0 <= obj_len <= MAX_OBJECT_BYTES:
        raise BadObjectMessage(f"obj_len {obj_len} outside [0, {MAX_OBJECT_BYTES}]")
    if not 0 <= obj_off <= MAX_OBJECT_BYTES:
        raise BadObjectMessage(f"obj_off {obj_off} outside [0, {MAX_OBJECT_BYTES}]")
    if env["ts"] < 0 or env["pid"] < 0:
        raise BadObjectMessage(f"negative ts {env['ts']} or pid {env['pid']}")
    if not isinstance(env.get("ok", True), bool):
        raise BadObjectMessage(f"ok is a {type(env['ok']).__name__}, not a bool")
    return parse_lost(env.get("lost"))


def error_text(value: object) -> str:
    """The collector's reason an object could not be read, bounded for the index."""
    if value is None:
        return "unreadable"
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_ERROR_CHARS] or "unreadable"


class ObjectAssembly:
    """What arrived of one object, and what the index will say about it.

    ``received`` holds bytes that reached the temporary file; ``accounted`` also holds bytes the
    collector reported lost or that could not be written, so that an object whose every byte is
    either here or known to be gone can be finished as soon as its ``last`` message is seen, in
    whatever order the messages came.
    """

    def __init__(self, env: Meta, now: float) -> None:
        self.meta: Meta = dict(env)
        self.obj_len: int = env["obj_len"]
        self.first_ts: int = env["ts"]
        self.last_ts: int = env["ts"]
        self.received = RangeSet()
        self.accounted = RangeSet()
        self.saw_last = False
        #: Why the object could not be read at all (``ok`` false): no artifact, only a record.
        self.error: str | None = None
        #: Why reading stopped early (an ``error`` without ``ok`` false): the missing ranges say
        #: what it cost, this says why.
        self.read_error: str | None = None
        self.last_activity = now

    def observe(self, env: Meta, now: float) -> bool:
        """Note one message; return whether it made the object bigger.

        The size is the largest ``obj_len`` seen: the collector reads a file until EOF, so a
        binary that grows while it is read arrives with a growing ``obj_len``, and taking the
        maximum gives the same result whatever order the messages come in.
        """
        self.first_ts = min(self.first_ts, env["ts"])
        self.last_ts = max(self.last_ts, env["ts"])
        self.last_activity = now
        if env["last"]:
            self.saw_last = True
        if isinstance(env.get("error"), str) and self.read_error is None:
            self.read_error = error_text(env["error"])
        grown = env["obj_len"] > self.obj_len
        self.obj_len = max(self.obj_len, env["obj_len"])
        return grown

    @staticmethod
    def clip(off: int, length: int, obj_len: int) -> int:
        """How many of ``length`` bytes at ``off`` lie inside an object of ``obj_len`` bytes
        (the message's own ``obj_len``: bytes beyond what it announced are refused)."""
        return max(0, min(off + length, obj_len) - off)

    def wrote(self, start: int, end: int) -> None:
        self.received.add(start, end)
        self.accounted.add(start, end)

    def gone(self, start: int, end: int) -> None:
        """Bytes that will never arrive: reported lost, or not writable here. Not clipped to
        the current size, which may still grow."""
        self.accounted.add(max(0, start), end)

    def fail(self, error: str) -> None:
        self.error = error

    def done(self) -> bool:
        return self.error is not None or (self.saw_last and self.accounted.covers(0, self.obj_len))

    def missing(self) -> list[tuple[int, int]]:
        return self.received.holes(0, self.obj_len)

    def naming_meta(self) -> Meta:
        """The metadata names and index fields are built from: the first message's envelope,
        with ``ts`` the earliest timestamp of any of the object's messages."""
        return {**self.meta, "ts": self.first_ts}


def parse_index_line(line: bytes) -> dict[str, Any] | None:
    """One index line as a record, or None when it is not a JSON object (torn or tampered)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def read_lines(stream: IO[bytes], max_line: int = MAX_INDEX_LINE) -> Iterator[bytes | None]:
    """Lines of ``stream``, each at most ``max_line`` bytes; None stands for a longer line,
    skipped without ever holding it in memory."""
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line:
            while line and not line.endswith(b"\n"):
                line = stream.readline(max_line)
            yield None
        else:
            yield line


def content_key(sha256: str | None) -> DedupKey | None:
    """The dedup key of kinds captured once per content (modules, BPF programs)."""
    return None if sha256 is None else ("sha256", sha256)


def content_key_from_record(record: dict[str, Any]) -> DedupKey | None:
    sha256 = record.get("sha256")
    if isinstance(sha256, str) and _SHA256.fullmatch(sha256):
        return ("sha256", sha256)
    return None


class _Object:
    """One object in flight: its bookkeeping plus where it is being assembled on disk."""

    def __init__(self, key: _Key, env: Meta, subdir: str, duplicate: bool, now: float) -> None:
        self.key = key
        self.asm = ObjectAssembly(env, now)
        self.subdir = subdir
        self.duplicate = duplicate
        self.dir_fd = -1
        self.fd = -1
        self.tmp = partial_name(*key)


class ObjectWriter(Writer):
    """Assembles whole objects of one kind and stores each under its final name.

    A subclass sets ``kind`` (the index kind and writer name) and ``topic``, and says how to
    name an artifact, what makes it a duplicate, and what the index says about it. Dedup state
    is rebuilt from ``index.jsonl`` at start, so a restarted writer does not capture again what
    its predecessor did; only complete artifacts count, so a damaged capture is retried.
    """

    queue_messages = PAYLOAD_QUEUE_MESSAGES

    kind: str = ""
    topic: bytes = b""
    #: Whether the kind deduplicates at all (if not, the index is not read at start).
    deduplicates: bool = True

    def __init__(
        self,
        out: OutputDir,
        index: Index,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        idle_seconds: float = IDLE_SECONDS,
        max_dedup_keys: int = MAX_DEDUP_KEYS,
        clock: Callable[[], float] = time.monotonic,
        log: RateLimitedLog | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        super().__init__(budget)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
        self.name = self.kind
        self.topics = (self.topic,)
        self._out = out
        self._index = index
        self._max_in_flight = max_in_flight
        self._idle = idle_seconds
        self._max_dedup_keys = max_dedup_keys
        self._clock = clock
        self._log = log or RateLimitedLog(f"tracecap-writer[{self.kind}]")
        self._pending: OrderedDict[_Key, _Object] = OrderedDict()  # least recently active first
        self._done: OrderedDict[_Key, None] = OrderedDict()
        self._seen: OrderedDict[DedupKey, None] = OrderedDict()
        self.counters.update(
            dict.fromkeys(
                (
                    "objects",
                    "artifacts",
                    "incomplete",
                    "failed",
                    "duplicates",
                    "evicted",
                    "abandoned",
                    "rejected",
                    "rejected_bytes",
                    "late_messages",
                    "grown",
                    "bytes_written",
                    "write_errors",
                    "name_collisions",
                    "index_errors",
                    "index_bad_lines",
                    "dedup_rebuilt",
                ),
                0,
            )
        )
        if self.deduplicates:
            self._rebuild()

    # -- what a kind says ----------------------------------------------------------------------

    @abc.abstractmethod
    def final_name(self, meta: Meta, sha256: str) -> str:
        """The artifact's name inside its container directory; raises ValueError if ``meta``
        cannot name one (checked when the object starts, before any byte is written)."""

    @abc.abstractmethod
    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        """What makes two objects the same artifact, or None for never a duplicate.

        Called with ``sha256`` None when the object starts: a key that does not depend on the
        content lets a known duplicate be dropped without writing a byte of it."""

    @abc.abstractmethod
    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        """The same key, read back from one of this kind's complete index records."""

    @abc.abstractmethod
    def index_fields(self, meta: Meta) -> dict[str, Any]:
        """The kind's own fields of the index record."""

    # -- messages ------------------------------------------------------------------------------

    def handle(self, msg: bus.Message) -> None:
        if not msg.topic.startswith(self.topic):
            return
        env, payload = msg.env, msg.payload
        try:
            lost = check_object(env)
        except ValueError as exc:
            self._reject(f"object message refused: {exc}")
            return
        key = (env["epoch"], env["obj_id"])
        if key in self._done:
            self.counters["late_messages"] += 1
            return
        now = self._clock()
        obj = self._pending.get(key)
        if obj is None:
            obj = self._start(key, env, now)
            if obj is None:
                return
        else:
            self._pending.move_to_end(key)
        asm = obj.asm
        if asm.observe(env, now):
            self.counters["grown"] += 1
        if env.get("ok") is False:
            asm.fail(error_text(env.get("error")))
        elif not obj.duplicate:
            for start, end in lost:
                asm.gone(start, end)
            if payload:
                self._write(obj, env["obj_off"], env["obj_len"], payload)
        if asm.done() or (obj.duplicate and asm.saw_last):
            self._finish(key)

    def _reject(self, reason: str) -> None:
        self.counters["rejected"] += 1
        self._log("rejected", reason)

    def _start(self, key: _Key, env: Meta, now: float) -> _Object | None:
        """A new object, or None when its metadata cannot name an artifact."""
        try:
            subdir = container_dir(env["container_id"])
            self.final_name(env, _ZERO_SHA256)
            early = self.dedup_key(env, None)
        except ValueError as exc:
            self._reject(f"object {key} refused: {exc}")
            return None
        while len(self._pending) >= self._max_in_flight:
            self.counters["evicted"] += 1
            self._finish(next(iter(self._pending)))
        obj = _Object(key, env, subdir, early is not None and early in self._seen, now)
        self._pending[key] = obj
        self.counters["objects"] += 1
        return obj

    def _open_temp(self, obj: _Object) -> int:
        """The temporary file, created on first use; a leftover of a killed writer that was
        assembling the same object is replaced, never followed (O_EXCL, O_NOFOLLOW)."""
        if obj.fd >= 0:
            return obj.fd
        obj.dir_fd = self._out.dir_fd(obj.subdir)
        try:
            fd = os.open(obj.tmp, _TEMP_FLAGS, FILE_MODE, dir_fd=obj.dir_fd)
        except FileExistsError:
            os.unlink(obj.tmp, dir_fd=obj.dir_fd)
            fd = os.open(obj.tmp, _TEMP_FLAGS, FILE_MODE, dir_fd=obj.dir_fd)
        obj.fd = fd
        os.fchmod(fd, FILE_MODE)  # whatever the umask: group-readable, never executable
        return fd

    def _write(self, obj: _Object, off: int, obj_len: int, payload: bytes) -> None:
        """Put the payload's in-object part at ``off``; what cannot be written becomes missing."""
        asm = obj.asm
        length = asm.clip(off, len(payload), obj_len)
        if length < len(payload):
            self.counters["rejected_bytes"] += len(payload) - length
            self._log("rejected", f"object {obj.key}: bytes beyond obj_len {obj_len}")
        if self._budget is not None and length and not self._budget.allow(length):
            # refused by the disk budget: lost to the artifact, which is then not complete
            asm.gone(off, off + length)
            return
        view = memoryview(payload)[:length]
        done = 0
        try:
            fd = self._open_temp(obj)
            while done < length:
                n = os.pwrite(fd, view[done:], off + done)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "no progress writing object")
                done += n
        except OSError as exc:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{obj.subdir}/{obj.tmp}: {exc}")
            asm.gone(off + done, off + length)
        finally:
            if done:
                asm.wrote(off, off + done)
                self.counters["bytes_written"] += done

    # -- finishing -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Give up on objects idle for ``idle_seconds``; oldest first, so stop at a busy one."""
        while self._pending:
            obj = next(iter(self._pending.values()))
            if now - obj.asm.last_activity < self._idle:
                return
            self.counters["abandoned"] += 1
            self._finish(obj.key)

    def close(self) -> None:
        """Finish everything still in flight, as incomplete: nothing more will arrive."""
        while self._pending:
            self._finish(next(iter(self._pending)))

    def _finish(self, key: _Key) -> None:
        obj = self._pending.pop(key)
        self._done[key] = None
        if len(self._done) > MAX_RECENT_DONE:
            self._done.popitem(last=False)
        try:
            self._finalise(obj)
        except OSError as exc:
            # Still one index line for the object: an analyst must see that it was there.
            self.counters["write_errors"] += 1
            self.counters["failed"] += 1
            self._log("write_error", f"{obj.subdir}/{obj.tmp}: not stored: {exc}")
            obj.asm.fail(error_text(f"not stored: {exc}"))
            self._append(self._record(obj, obj.asm.naming_meta(), None, 0, None))
        finally:
            self._discard(obj)

    def _discard(self, obj: _Object) -> None:
        """Close the temporary file and remove its name (gone already once it was placed)."""
        if obj.fd < 0:
            return
        os.close(obj.fd)
        obj.fd = -1
        try:
            os.unlink(obj.tmp, dir_fd=obj.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{obj.subdir}/{obj.tmp}: not removed: {exc}")

    def _finalise(self, obj: _Object) -> None:
        asm = obj.asm
        if obj.duplicate:
            self.counters["duplicates"] += 1
            return
        meta = asm.naming_meta()
        if asm.error is not None:
            self.counters["failed"] += 1
            self._append(self._record(obj, meta, None, 0, None))
            return
        fd = self._open_temp(obj)
        size, sha256 = self._digest(fd, asm.obj_len)
        key = self.dedup_key(meta, sha256)
        if key is not None and key in self._seen:
            self.counters["duplicates"] += 1
            return
        name = self._place(obj, self.final_name(meta, sha256))
        record = self._record(obj, meta, f"{obj.subdir}/{name}", size, sha256)
        self.counters["artifacts"] += 1
        if not record["complete"]:
            self.counters["incomplete"] += 1
        elif key is not None:
            self._remember(key)
        self._append(record)

    def _digest(self, fd: int, obj_len: int) -> tuple[int, str]:
        """Size and sha256 of what is on disk, read back through the fd. A missing tail is
        zero-filled up to ``obj_len`` so offsets in the artifact are offsets in the object."""
        if os.fstat(fd).st_size < obj_len:
            os.ftruncate(fd, obj_len)
        return sha256_of_fd(fd)

    def _place(self, obj: _Object, name: str) -> str:
        """Give the temporary file its final name without ever replacing anything there.

        ``link`` fails with EEXIST on any existing entry, symlinks included, and never follows
        one, so taken names get ``.1``, ``.2``...; the temporary name is removed afterwards.
        """
        for n in range(MAX_COLLISIONS + 1):
            candidate = f"{name}.{n}" if n else name
            try:
                os.link(obj.tmp, candidate, src_dir_fd=obj.dir_fd, dst_dir_fd=obj.dir_fd)
            except FileExistsError:
                self.counters["name_collisions"] += 1
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                    raise
                if not self._rename_if_free(obj, candidate):
                    self.counters["name_collisions"] += 1
                    continue
                return candidate
            with contextlib.suppress(OSError):  # retried, and counted, by _discard
                os.unlink(obj.tmp, dir_fd=obj.dir_fd)
            return candidate
        raise OSError(errno.EEXIST, f"{name!r} and {MAX_COLLISIONS} suffixed names are taken")

    @staticmethod
    def _rename_if_free(obj: _Object, candidate: str) -> bool:
        """For file systems without hard links: rename unless the name exists (racy, but only
        against another process of our own user creating the same name at the same moment)."""
        try:
            os.stat(candidate, dir_fd=obj.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(obj.tmp, candidate, src_dir_fd=obj.dir_fd, dst_dir_fd=obj.dir_fd)
            return True
        return False

    def _record(
        self, obj: _Object, meta: Meta, path: str | None, size: int, sha256: str | None
    ) -> dict[str, Any]:
        asm = obj.asm
        if asm.error is not None:
            missing = [[0, asm.obj_len]] if asm.obj_len else []
        else:
            missing = [[s, e] for s, e in asm.missing()]
        record = self.index_fields(meta)
        record.update(
            {
                "path": path,
                "kind": self.kind,
                "size": size,
                "sha256": sha256,
                "complete": asm.error is None and not missing,
                "missing": missing,
                **{k: meta[k] for k in _COMMON},
                **text_fields("comm", meta["comm"]),
                "container_id": meta["container_id"],
                "ts": asm.first_ts,
                "last_ts": asm.last_ts,
                "epoch": obj.key[0],
                "obj_id": obj.key[1],
                "obj_len": asm.obj_len,
            }
        )
        if asm.error is not None or asm.read_error is not None:
            record["error"] = asm.error or asm.read_error
        return record

    def _append(self, record: dict[str, Any]) -> None:
        self._index.append_or_count(
            record, self.counters, self._log, f"{record.get('path')}: record"
        )

    # -- dedup state ---------------------------------------------------------------------------

    def _remember(self, key: DedupKey) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > self._max_dedup_keys:
            self._seen.popitem(last=False)

    def _rebuild(self) -> None:
        """Refill the dedup set from this kind's complete records in ``index.jsonl``, read
        through the output root fd (a planted symlink or FIFO there is refused, not followed)."""
        try:
            fd = os.open(INDEX_NAME, _INDEX_FLAGS, dir_fd=self._out.root_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.counters["index_errors"] += 1
            self._log("index_error", f"index not read, dedup starts empty: {exc}")
            return
        try:
            with os.fdopen(fd, "rb") as stream:
                if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                    raise OSError(errno.EINVAL, f"{INDEX_NAME} is not a regular file")
                os.set_blocking(stream.fileno(), True)
                for line in read_lines(stream):
                    self._rebuild_line(line)
        except OSError as exc:
            self.counters["index_errors"] += 1
            self._log("index_error", f"index not fully read: {exc}")

    def _rebuild_line(self, line: bytes | None) -> None:
        record = None if line is None else parse_index_line(line)
        if record is None:
            if line is None or line.strip():
                self.counters["index_bad_lines"] += 1
            return
        if (
            record.get("kind") != self.kind
            or record.get("complete") is not True
            or not isinstance(record.get("path"), str)
        ):
            return
        try:
            key = self.dedup_key_from_record(record)
        except (KeyError, TypeError, ValueError):
            key = None
        if key is None:
            self.counters["index_bad_lines"] += 1
            return
        self._remember(key)
        self.counters["dedup_rebuilt"] += 1
