"""Rotating and reading segmented files through a directory fd (the I/O of tracecap.rotation).

Everything happens relative to an open directory: a rename within it, files opened without
following symlinks and without blocking on a FIFO, so a name planted in the directory can neither
redirect a write nor stall a reader. Used by the front end for the events file, by every writer
for ``index.jsonl``, by the pcap writer, and by whatever reads the index back.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tracecap import rotation
from tracecap.rotation import Rotation

FILE_MODE = 0o640
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: gzip's own default is 9, which took about three times as long as 6 for 2 % less on JSON.
GZIP_LEVEL = 6
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Rotated:
    """One rotation done: the closed segment's name (``.gz`` when compressed) and number, the
    files removed to keep the count, and what went wrong on the way (compression or removal:
    the segment itself is closed either way)."""

    previous: str
    number: int
    removed: tuple[str, ...]
    problems: tuple[str, ...] = ()


def open_segment_fd(dir_fd: int, name: str) -> int:
    """A regular file of the directory for reading; a symlink, FIFO or device is refused."""
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_segment(dir_fd: int, name: str) -> BinaryIO:
    """A segment's content as a stream, decompressed when its name ends in ``.gz``."""
    raw = os.fdopen(open_segment_fd(dir_fd, name), "rb")
    if not name.endswith(rotation.GZIP_SUFFIX):
        return raw
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def first_line(fd: int, limit: int = 1 << 16) -> bytes:
    """The file's first line (without its newline), at most ``limit`` bytes: a rotation record
    is far shorter; b"" for an empty file or a first line still being written."""
    head = os.pread(fd, limit, 0)
    end = head.find(b"\n")
    return head[:end] if end >= 0 else b""


def live_number(fd: int, base: str) -> int:
    """The number the live file ``base`` open on ``fd`` gets once closed (rotation.live_number
    of its first line)."""
    line = first_line(fd)
    try:
        first = json.loads(line) if line else None
    except (ValueError, RecursionError):
        first = None
    return rotation.live_number(base, first)


def lowest_number(dir_fd: int, base: str, live: int) -> int:
    """The oldest file of ``base`` still there: its lowest closed segment, else the live one
    (numbered ``live``)."""
    return min(rotation.closed_segments(base, os.listdir(dir_fd)), default=live)


def segments(dir_fd: int, base: str) -> list[str]:
    """The segments of ``base`` in the directory, oldest first, the live file last."""
    return rotation.ordered_segments(base, os.listdir(dir_fd))


def iter_lines(dir_fd: int, base: str) -> Iterator[tuple[str, bytes]]:
    """Every line of every segment of ``base`` in order, with the segment's name. A segment
    compressed or removed between the listing and its opening is looked for under its other
    name (``.gz``) before it counts as gone (FileNotFoundError)."""
    for name in segments(dir_fd, base):
        try:
            stream = open_segment(dir_fd, name)
        except FileNotFoundError:
            gz = name + rotation.GZIP_SUFFIX
            if name == base or gz not in os.listdir(dir_fd):
                raise
            name, stream = gz, open_segment(dir_fd, gz)
        with stream:
            for line in stream:
                yield name, line


def compress(dir_fd: int, name: str, level: int = GZIP_LEVEL) -> str:
    """Replace the closed segment ``name`` with ``name.gz``: the ``.gz`` is written whole (a
    reader takes the plain file while both exist) and the plain one removed after it. A stale
    ``.gz`` of ours (a compression cut short by a crash) is replaced; anything else in the way
    fails (FileExistsError) and the plain segment stays."""
    gz = name + rotation.GZIP_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        if os.stat(gz, dir_fd=dir_fd, follow_symlinks=False).st_uid == os.geteuid():
            os.unlink(gz, dir_fd=dir_fd)
    src = open_segment_fd(dir_fd, name)
    try:
        dst = os.open(gz, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
        try:
            os.fchmod(dst, FILE_MODE)
            with (
                os.fdopen(src, "rb", closefd=False) as raw_in,
                os.fdopen(dst, "wb", closefd=False) as raw_out,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, compresslevel=level) as out,
            ):
                shutil.copyfileobj(raw_in, out, _COPY_BLOCK)
            os.fsync(dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(gz, dir_fd=dir_fd)
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)
    os.unlink(name, dir_fd=dir_fd)
    return gz


def remove_expired(dir_fd: int, base: str, count: int | None) -> tuple[list[str], list[str]]:
    """Remove the closed segments beyond the newest ``count``: only files of ours (a name
    someone else planted in a shared directory is left alone). (removed, problems)."""
    removed: list[str] = []
    problems: list[str] = []
    for name in rotation.expired(base, os.listdir(dir_fd), count):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
                problems.append(f"{name}: not a file of ours, not removed")
                continue
            os.unlink(name, dir_fd=dir_fd)
            removed.append(name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{name}: not removed: {exc}")
    return removed, problems


def close_segment(
    dir_fd: int,
    base: str,
    how: Rotation,
    publish: Callable[[str, int], None] | None = None,
) -> Rotated:
    """Rename the live file ``base`` to its next segment name, then compress it and remove the
    segments past the count, as ``how`` says. ``publish(segment, number)``, when given, runs
    right after the rename (the caller puts a new live file in place there, so that the name is
    missing for as short a time as possible). Only the rename raises; what fails after it is
    reported in ``problems``."""
    number = rotation.next_number(base, os.listdir(dir_fd))
    name = rotation.segment_name(base, number)
    os.rename(base, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if publish is not None:
        publish(name, number)
    problems: list[str] = []
    if how.compress:
        try:
            name = compress(dir_fd, name)
        except OSError as exc:
            problems.append(f"{name}: not compressed: {exc}")
    removed, more = remove_expired(dir_fd, base, how.count)
    return Rotated(name, number, tuple(removed), tuple(problems + more))


class SegmentedFile:
    """An append-only file of one process, rotated by size (the events file).

    Writes go to the live file through a directory fd held for the file's whole life; a line is
    never split across segments. ``on_rotate`` hears of every rotation (the front end logs it),
    ``on_problem`` of a rotation that failed (the write then goes to the file as it is).
    """

    def __init__(
        self,
        dir_fd: int,
        base: str,
        how: Rotation | None,
        open_live: Callable[[int, str], int],
        on_rotate: Callable[[Rotated], None] | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self._dir_fd = dir_fd
        self._on_problem = on_problem
        self._base = base
        self._how = how
        self._open_live = open_live
        self._on_rotate = on_rotate
        self._fd = open_live(dir_fd, base)
        self._size = os.fstat(self._fd).st_size
        self.rotations = 0
        self.failed_rotations = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines), rotating first when it would pass the size."""
        if self._how is not None and rotation.due(self._size, len(data), self._how.size):
            try:
                self._rotate()
            except OSError as exc:  # the data goes to the file as it is, never lost for this
                self.failed_rotations += 1
                failed = self.failed_rotations
                if self._on_problem is not None and not failed & (failed - 1):  # 1, 2, 4, ...
                    self._on_problem(f"{self._base}: not rotated ({failed} times): {exc}")
        view = memoryview(data)
        while view:
            done = os.write(self._fd, view)
            self._size += done
            view = view[done:]

    def _rotate(self) -> None:
        assert self._how is not None
        old = self._fd

        def publish(_name: str, _number: int) -> None:
            self._fd = self._open_live(self._dir_fd, self._base)
            self._size = os.fstat(self._fd).st_size

        try:
            done = close_segment(self._dir_fd, self._base, self._how, publish)
        finally:
            if self._fd != old:
                os.close(old)
        self.rotations += 1
        if self._on_rotate is not None:
            self._on_rotate(done)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
