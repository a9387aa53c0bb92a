"""``index.jsonl``: the record of what was captured, shared by every writer process.

With ``--capture index-rotate:`` the index is rotated by size (tracecap.rotation): the writer
whose append would take it past the size, holding the lock, closes it as ``index.<NNNNNN>.jsonl``
and puts in its place a new file whose first line is a ``rotation`` record naming the closed
segment. The new file is complete (record written, lock taken) before it gets the name, so no
record can come before its rotation record; every other process notices after taking the lock
that the name is another file than its fd's and follows it. Readers take the segments in order
(``tracecap.segments.iter_lines``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable
from typing import Any

from tracecap import rotation, segments
from tracecap.rotation import Rotation
from writers.outdir import OutputDir, check_component, open_regular

INDEX_NAME = "index.jsonl"
#: Longest wait for the index's lock (``flock``, which serialises append-and-maybe-cut between
#: the writer processes sharing the file). Past it the record is appended unlocked (counted),
#: and a short write is then only cut back when nothing else was appended after it. Any reader
#: of the index (the group may read it) can take the lock, so a holder costs at most this once
#: per LOCK_BACKOFF_S, never a stalled writer.
LOCK_TIMEOUT_S = 0.5
LOCK_BACKOFF_S = 30.0
_LOCK_POLL_S = 0.002
#: How far back from the end ``find_last`` reads before giving up (about 25,000 records).
MAX_SCAN_BYTES = 16 << 20
_SCAN_BLOCK = 1 << 20
#: Longest index line ``find_last`` will parse.
MAX_LINE = 1 << 20

#: ``write(fd, data)`` returning the bytes taken, ``truncate(fd, length)``: injectable for tests.
WriteFn = Callable[[int, bytes], int]
TruncateFn = Callable[[int, int], None]


#: Built once: ``json.dumps`` with options builds an encoder per call, a measurable share of a
#: small file's cost (three lines per artifact: journal ``open``, index, journal ``closed``).
_ENCODER = json.JSONEncoder(ensure_ascii=True, sort_keys=True, allow_nan=False)


def encode_record(record: dict[str, Any]) -> bytes:
    """One index line. ``ensure_ascii`` escapes every control and non-ASCII character, so no
    field, however hostile, can split or forge a line; NaN is refused (not JSON)."""
    return (_ENCODER.encode(record) + "\n").encode("ascii")


def last_line_matching(
    read_at: Callable[[int, int], bytes],
    size: int,
    needle: bytes,
    accept: Callable[[dict[str, Any]], bool],
    max_bytes: int = MAX_SCAN_BYTES,
) -> dict[str, Any] | None:
    """The last line of a file of ``size`` bytes (read with ``read_at(length, offset)``) that
    contains ``needle``, parses as a JSON object and is ``accept``-ed; None when there is none
    in the last ``max_bytes``. Pure apart from ``read_at``: lines are split on b"\\n" reading
    backwards one block at a time, so memory is one block plus one line."""
    end = size
    floor = max(0, size - max_bytes)
    tail = b""  # the start of a line whose end lies in an already-read block
    while end > floor:
        start = max(floor, end - _SCAN_BLOCK)
        block = read_at(end - start, start) + tail
        end = start
        lines = block.split(b"\n")
        # the first piece may begin in the block before, unless this one starts the file; a
        # line that begins before ``floor`` is never read whole and never matched
        tail = lines.pop(0) if end > 0 else b""
        if len(tail) > MAX_LINE:
            tail = b""  # an overlong line is never a record of ours: stop carrying it
        for line in reversed(lines):
            record = _matching(line, needle, accept)
            if record is not None:
                return record
    return None


def chunk_lines(lines: list[bytes | None], limit: int | None) -> list[list[int]]:
    """The indexes of ``lines`` (None: left out) grouped into appends of at most ``limit``
    bytes each (a line longer than that alone; None: one append): an index rotates only
    between appends, so a batch written whole would make a segment of any size."""
    chunks: list[list[int]] = []
    size = 0
    for i, line in enumerate(lines):
        if line is None:
            continue
        if not chunks or (limit is not None and size + len(line) > limit):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += len(line)
    return chunks


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One line of the index (or of a writer's journal) as a JSON object, or None when it is
    not one (torn by a crash, or tampered with)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _matching(
    line: bytes, needle: bytes, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    if needle not in line or len(line) > MAX_LINE:
        return None
    record = parse_line(line)
    return record if record is not None and accept(record) else None


class Index:
    """``index.jsonl``: one JSON object per line, the record of what was captured.

    A record is appended whole or not at all: it goes out in one ``write`` on an ``O_APPEND``
    fd, under an exclusive lock shared by every writer process, and a short or failed write is
    cut back (``ftruncate``) to the length the file had before it, so a full disk never leaves a
    torn line for the next record to be glued onto. A cut that itself fails is retried before
    the next append. ``write`` and ``truncate`` are injectable for tests.
    """

    def __init__(
        self,
        out: OutputDir,
        name: str = INDEX_NAME,
        *,
        write: WriteFn = os.write,
        truncate: TruncateFn = os.ftruncate,
        lock_timeout: float = LOCK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        rotation: Rotation | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        check_component(name)
        self._root_fd = out.root_fd
        self._name = name
        self._rotation = rotation
        self._wall_clock = wall_clock
        self._fd = self._open()
        self._write = write
        self._truncate = truncate
        self._lock_timeout = lock_timeout
        self._clock = clock
        #: Until when appends go unlocked after the lock was held past ``lock_timeout``.
        self._unlocked_until = float("-inf")
        #: A length the file must be cut back to before anything else is appended (a torn tail
        #: whose first cut failed), with the length it had then; None when the tail is whole.
        self._torn: tuple[int, int] | None = None
        #: Appends made without the lock (it was held past ``lock_timeout``).
        self.unlocked_appends = 0
        #: Rotations this process made, and closed segments whose compression or removal of
        #: old segments it still owes (done after the lock is released).
        self.rotations = 0
        self._closed: list[tuple[str, tuple[str, ...]]] = []
        #: What went wrong compressing or removing segments (the writer logs and counts them).
        self.rotation_problems: list[str] = []

    @property
    def rotation(self) -> Rotation | None:
        """How this file rotates (None: never); ``events.jsonl`` rotates as the index does."""
        return self._rotation

    def _open(self) -> int:
        # read-write: find_last reads back through the same fd (pread ignores O_APPEND)
        return open_regular(self._name, os.O_RDWR | os.O_APPEND, self._root_fd)

    def _current(self) -> bool:
        """Whether our fd is still the file that has the index's name (another process may
        have rotated it away); if not, it is replaced by the one that has."""
        try:
            st = os.stat(self._name, dir_fd=self._root_fd, follow_symlinks=False)
            mine = os.fstat(self._fd)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return True
        fd = self._open()
        os.close(self._fd)
        self._fd, self._torn = fd, None
        return False

    def _lock(self) -> bool:
        """Take the index's lock, waiting at most ``lock_timeout``; False when appending
        unlocked (counted in ``unlocked_appends``). Either way the fd is then the file that has
        the index's name."""
        now = self._clock()
        if now < self._unlocked_until:
            self.unlocked_appends += 1
            self._current()
            return False
        deadline = now + self._lock_timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    if self._current():
                        return True
                except OSError:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    raise
                continue  # rotated away while we waited: lock the new file
            except BlockingIOError:
                now = self._clock()
                if now >= deadline:
                    self._unlocked_until = now + LOCK_BACKOFF_S
                    self.unlocked_appends += 1
                    self._current()
                    return False
                time.sleep(_LOCK_POLL_S)

    def _cut(self, length: int, expected: int, locked: bool) -> None:
        """Cut the file back to ``length`` after a torn append that left it ``expected`` long.
        Without the lock, only if nothing was appended since (another record would be lost)."""
        size = os.fstat(self._fd).st_size
        if size <= length:
            self._torn = None
            return
        if not locked and size != expected:
            self._torn = None  # someone appended after the torn bytes: cutting would lose theirs
            return
        try:
            self._truncate(self._fd, length)
        except OSError:
            self._torn = (length, expected)
            raise
        self._torn = None

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, whole or not at all; OSError (or ValueError for a
        record that is not JSON) when it was not appended."""
        self._append(encode_record(record))

    def _append(self, data: bytes) -> None:
        """Append whole lines in one write, all of them or none (OSError)."""
        locked = self._lock()
        try:
            if self._torn is not None:
                self._cut(*self._torn, locked)
            start = os.fstat(self._fd).st_size
            how = self._rotation
            if locked and how is not None and rotation.due(start, len(data), how.size):
                try:
                    self._rotate(how)
                except OSError as exc:  # the record goes to the file as it is
                    self.rotation_problems.append(f"{self._name}: not rotated: {exc}")
                start = os.fstat(self._fd).st_size
            try:
                written = self._write(self._fd, data)
            except OSError:
                self._cut(start, start, locked)  # a failed write took nothing; checked anyway
                raise
            if written != len(data):
                self._cut(start, start + written, locked)
                raise OSError(errno.ENOSPC, f"short index write ({written} of {len(data)} bytes)")
        finally:
            if locked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._tidy()

    def _rotate(self, how: Rotation) -> None:
        """Close the index as its next segment, holding the lock: a new file with the rotation
        record as its first line, locked, takes the name (see the module docstring)."""
        names = os.listdir(self._root_fd)
        number = rotation.next_number(self._name, names)
        closed = rotation.segment_name(self._name, number)
        removed = rotation.expired(self._name, [*names, closed], how.count)
        staging = f".{self._name}.rotating"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging, dir_fd=self._root_fd)  # left by a crash mid-rotation
        fd = open_regular(staging, os.O_RDWR | os.O_APPEND | os.O_EXCL, self._root_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else has it yet: at once
            record = rotation.rotation_record(
                self._name, closed, number, removed, self._wall_clock()
            )
            record["compressed"] = how.compress
            data = encode_record(record)
            if self._write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write of the rotation record")
            os.rename(self._name, closed, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
            os.rename(staging, self._name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(staging, dir_fd=self._root_fd)
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd, self._torn = fd, None
        self.rotations += 1
        self._closed.append((closed, tuple(removed)))

    def _tidy(self) -> None:
        """Compress the segments this process closed and remove those past the count, after
        the lock is released: other writers need not wait for gzip."""
        how = self._rotation
        while self._closed and how is not None:
            closed, removed = self._closed.pop(0)
            if how.compress:
                try:
                    segments.compress(self._root_fd, closed)
                except OSError as exc:
                    self.rotation_problems.append(f"{closed}: not compressed: {exc}")
            for name in removed:
                try:
                    os.unlink(name, dir_fd=self._root_fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.rotation_problems.append(f"{name}: not removed: {exc}")

    def append_or_count(
        self,
        record: dict[str, Any],
        counters: dict[str, int],
        log: Callable[[str, str], None],
        what: str,
        errors: str = "index_errors",
    ) -> bool:
        """Append one line; a failure is counted (``errors``: ``index_errors`` for the index,
        ``events_errors`` for ``events.jsonl``) and logged as ``what`` not written, never raised:
        the writer goes on, and a later line may describe the same."""
        return self.append_all_or_count([record], counters, log, what, errors)[0]

    def append_all_or_count(
        self,
        records: list[dict[str, Any]],
        counters: dict[str, int],
        log: Callable[[str, str], None],
        what: str,
        errors: str = "index_errors",
        lines: list[bytes | None] | None = None,
    ) -> list[bool]:
        """Append ``records`` in as few writes as rotation allows (one lock, one ``write`` per
        chunk of at most the rotation size, so segments keep to their size), each chunk whole or
        not at all, and say which are in the index: a record that is not JSON is left out
        (counted in ``errors``, logged) and the others go; a failed append (OSError, or the
        ValueError of an fd already closed) leaves its chunk out, counted once. Never raises.
        ``lines``, if given, receives each record's line as written (None: not JSON)."""

        def lost(exc: Exception) -> None:
            counters[errors] = counters.get(errors, 0) + 1
            log(errors.removesuffix("s"), f"{what} not written: {exc}")

        if lines is None:
            lines = []
        for record in records:
            try:
                lines.append(encode_record(record))
            except ValueError as exc:
                lost(exc)
                lines.append(None)
        done = [False] * len(records)
        limit = self._rotation.size if self._rotation is not None else None
        try:
            for chunk in chunk_lines(lines, limit):
                try:
                    self._append(b"".join(lines[i] or b"" for i in chunk))
                except (OSError, ValueError) as exc:
                    lost(exc)
                    continue
                for i in chunk:
                    done[i] = True
        finally:
            while self.rotation_problems:
                counters["rotation_errors"] = counters.get("rotation_errors", 0) + 1
                log("rotation_error", f"{self._name} rotation: {self.rotation_problems.pop(0)}")
        return done

    def find_last(
        self, needle: bytes, accept: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The last record containing ``needle`` that ``accept`` takes, from the last
        MAX_SCAN_BYTES of the index (any process's lines), across rotated segments newest
        first (compressed ones are not searched: they cannot be read backwards); None if there
        is none."""
        self._current()
        size = os.fstat(self._fd).st_size
        found = last_line_matching(
            lambda length, off: os.pread(self._fd, length, off), size, needle, accept
        )
        budget = MAX_SCAN_BYTES - size
        if found is not None or self._rotation is None:
            return found
        closed = rotation.closed_segments(self._name, os.listdir(self._root_fd))
        for number in sorted(closed, reverse=True):
            name = closed[number]
            if budget <= 0 or name.endswith(rotation.GZIP_SUFFIX):
                return None
            try:
                fd = segments.open_segment_fd(self._root_fd, name)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                found = last_line_matching(
                    lambda length, off, fd=fd: os.pread(fd, length, off),
                    size,
                    needle,
                    accept,
                    max_bytes=budget,
                )
            finally:
                os.close(fd)
            if found is not None:
                return found
            budget -= size
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
