"""Whole-object artifacts: executed binaries, memory regions, kernel modules, BPF programs.

Unlike files, these objects have a known size and an end: the collector streams one as messages
sharing an ``obj_id`` and marks the last one. ``ObjectWriter`` assembles each object in a hidden
temporary file, hashes what actually reached the disk, and only then gives it its final name,
so an artifact under a final name is always finished, and a kind can put the content's sha256 in
the name and deduplicate on it. This is the I/O half; the bookkeeping (what arrived, dedup keys,
index lines and records) is ``writers.objectartifact``.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from tracecap import bus, segments
from writers.base import PAYLOAD_QUEUE_MESSAGES, Writer
from writers.budget import DiskBudget
from writers.fileio import sha256_of_fd, write_all
from writers.index import INDEX_NAME, Index
from writers.naming import container_dir, partial_name
from writers.objectartifact import (
    MAX_COLLISIONS,
    BadIndexLine,
    DedupKey,
    Meta,
    ObjectAssembly,
    ObjectKey,
    dedup_entry_of_line,
    error_text,
    final_names,
    read_lines,
)
from writers.outdir import FILE_MODE, OutputDir
from writers.ratelog import RateLimitedLog
from writers.recent import RecentKeys

#: Objects assembled at once; past this the least recently active one is finalised incomplete,
#: so a collector that never sends ``last`` cannot exhaust fds or memory.
MAX_IN_FLIGHT = 64
#: An object that sees no message this long is given up (its chunks arrive back to back).
IDLE_SECONDS = 30.0
#: Finished (epoch, obj_id) pairs remembered so a late duplicate chunk is not a new object.
MAX_RECENT_DONE = 4096
#: Dedup keys kept; past this the oldest are forgotten, which can only cause a re-capture.
#: A key (container directory, sha256) takes about 275 bytes: 18 MB at the bound (1 << 20 keys
#: were 290 MB).
MAX_DEDUP_KEYS = 1 << 16
_ZERO_SHA256 = "0" * 64
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Object:
    """One object in flight: its bookkeeping plus where it is being assembled on disk."""

    def __init__(self, env: Meta, subdir: str, duplicate: bool, now: float) -> None:
        self.asm = ObjectAssembly(env, now)
        self.subdir = subdir
        self.duplicate = duplicate
        self.dir_fd = -1
        self.fd = -1
        self.tmp = partial_name(*self.asm.key)


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
    #: Whether a duplicate still gets its index record (path null, ``duplicate_of`` naming the
    #: artifact that holds its bytes), so that dedup never hides who did what.
    records_duplicates: bool = False

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
        self._clock = clock
        self._log = log or RateLimitedLog(f"tracecap-writer[{self.kind}]")
        #: Objects being assembled, least recently active first.
        self._pending: OrderedDict[ObjectKey, _Object] = OrderedDict()
        self._done: RecentKeys[ObjectKey] = RecentKeys(MAX_RECENT_DONE)
        self._seen: RecentKeys[DedupKey] = RecentKeys(max_dedup_keys)
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

    def incomplete_name(self, meta: Meta) -> str | None:
        """The name of an artifact not captured whole, for kinds whose names carry the
        content's sha256: the hash of what was captured is not the object's, so such an
        artifact must not be named (nor deduplicated) by it. None: named as a whole one."""
        return None

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
            lost = bus.check_object(env)
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

    def _start(self, key: ObjectKey, env: Meta, now: float) -> _Object | None:
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
        obj = _Object(env, subdir, early is not None and early in self._seen, now)
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
            self._log("rejected", f"object {asm.key}: bytes beyond obj_len {obj_len}")
        if self._budget is not None and length and not self._budget.allow(length):
            # refused by the disk budget: lost to the artifact, which is then not complete
            asm.gone(off, off + length)
            return
        try:
            fd = self._open_temp(obj)
        except OSError as exc:
            done, error = 0, exc
        else:
            done, error = write_all(fd, memoryview(payload)[:length], off)
        if error is not None:
            self.counters["write_errors"] += 1
            self._log("write_error", f"{obj.subdir}/{obj.tmp}: {error}")
            asm.gone(off + done, off + length)
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
            self._finish(obj.asm.key)

    def close(self) -> None:
        """Finish everything still in flight, as incomplete: nothing more will arrive."""
        while self._pending:
            self._finish(next(iter(self._pending)))

    def _finish(self, key: ObjectKey) -> None:
        obj = self._pending.pop(key)
        self._done.add(key)
        try:
            self._finalise(obj)
        except OSError as exc:
            # Still one index line for the object: an analyst must see that it was there.
            self.counters["write_errors"] += 1
            self.counters["failed"] += 1
            self._log("write_error", f"{obj.subdir}/{obj.tmp}: not stored: {exc}")
            obj.asm.fail(error_text(f"not stored: {exc}"))
            self._append(self._record(obj.asm, None, 0, None))
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
        if asm.error is not None:
            self.counters["failed"] += 1
            self._append(self._record(asm, None, 0, None))
            return
        fd = self._open_temp(obj)
        size, sha256 = self._digest(fd, asm.obj_len)
        meta = asm.naming_meta()
        partial = self.incomplete_name(meta) if asm.missing() else None
        key = None if partial is not None else self.dedup_key(meta, sha256)
        if key is not None and self._is_duplicate(asm, key):
            if self.records_duplicates:
                record = self._record(asm, None, size, sha256)
                self._append(record | {"duplicate_of": self._seen.get(key)})
            return
        name = self._place(obj, partial or self.final_name(meta, sha256))
        record = self._record(asm, f"{obj.subdir}/{name}", size, sha256)
        self.counters["artifacts"] += 1
        if not record["complete"]:
            self.counters["incomplete"] += 1
        self._append(record)
        self._placed(record, key)

    def _is_duplicate(self, asm: ObjectAssembly, key: DedupKey) -> bool:
        """Whether a finished object is a known artifact (then it is only counted)."""
        if key in self._seen:
            self.counters["duplicates"] += 1
            return True
        return False

    def _placed(self, record: dict[str, Any], key: DedupKey | None) -> None:
        """An artifact got its name and record; a complete one now makes its key known."""
        if record["complete"] and key is not None:
            self._seen.add(key, record["path"])

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
        for candidate in final_names(name):
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
        self, asm: ObjectAssembly, path: str | None, size: int, sha256: str | None
    ) -> dict[str, Any]:
        return asm.record(self.kind, self.index_fields(asm.naming_meta()), path, size, sha256)

    def _append(self, record: dict[str, Any]) -> None:
        self._index.append_or_count(
            record, self.counters, self._log, f"{record.get('path')}: record"
        )

    # -- dedup state ---------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Refill the dedup set from this kind's complete records in ``index.jsonl`` and its
        rotated segments, in order, read through the output root fd (a planted symlink or FIFO
        there is refused, not followed)."""
        root = self._out.root_fd
        try:
            names = segments.segments(root, INDEX_NAME)
        except OSError as exc:
            self.counters["index_errors"] += 1
            self._log("index_error", f"index not read, dedup starts empty: {exc}")
            return
        for name in names:
            try:
                stream = segments.open_segment(root, name)
            except FileNotFoundError:
                continue  # compressed or removed since the listing; a live index not yet made
            except OSError as exc:
                self.counters["index_errors"] += 1
                self._log("index_error", f"{name} not read: {exc}")
                continue
            try:
                with stream:
                    for line in read_lines(stream):
                        self._rebuild_line(line)
            except (OSError, EOFError) as exc:
                self.counters["index_errors"] += 1
                self._log("index_error", f"{name} not fully read: {exc}")

    def _rebuild_line(self, line: bytes | None) -> None:
        try:
            entry = dedup_entry_of_line(line, self.kind, self.dedup_key_from_record)
        except BadIndexLine:
            self.counters["index_bad_lines"] += 1
            return
        if entry is not None:
            self._seen.add(*entry)
            self.counters["dedup_rebuilt"] += 1
