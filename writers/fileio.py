"""The I/O every writer shares: writing a whole payload, a bounded set of open fds, hashing.

An index line is only worth what it says about the disk, so the write loop reports exactly
which bytes landed before an error stopped it (the caller records the rest as missing), and
digests are read back through the artifact's fd: a short write or a hole shows in the sha256
the analyst will compare against, where hashing what was received would hide it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

#: Bytes read per ``pread`` when hashing.
BLOCK = 1 << 20

#: ``write(fd, data, off, append)``: one write of ``data`` at ``off`` (at the end of an
#: ``O_APPEND`` fd when ``append``), returning how many bytes it took; tests script one.
WriteAt = Callable[[int, memoryview, int, bool], int]

K = TypeVar("K", bound=Hashable)


def write_all(
    fd: int,
    data: bytes | memoryview,
    off: int,
    append: bool = False,
    write: WriteAt | None = None,
) -> tuple[int, OSError | None]:
    """Write all of ``data`` at ``off``, continuing after short writes; return how many bytes
    reached the file and the error that stopped the rest (None when every byte did).

    ``[off, off + done)`` is then in the file and ``[off + done, off + len(data))`` is not,
    which is what the caller records as written and as missing. Without ``write`` each step is
    a ``pwrite`` at its offset, or for an ``O_APPEND`` fd a ``write`` (the kernel puts the
    bytes at the end), called directly: this is every payload's path. A write that takes
    nothing is ENOSPC, so a full disk cannot make the loop spin.
    """
    view = memoryview(data)
    size = len(view)
    done = 0
    try:
        while done < size:
            if write is not None:
                n = write(fd, view[done:], off + done, append)
            elif append:
                n = os.write(fd, view[done:])
            else:
                n = os.pwrite(fd, view[done:], off + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, "no progress writing")
            done += n
    except OSError as exc:
        return done, exc
    return done, None


class FdCache(Generic[K]):
    """Open fds by key, at most ``max_open``; making room closes the least recently used.

    Writers open their files without truncating and write at explicit offsets or with
    ``O_APPEND``, so closing one and reopening it later loses nothing; the bound keeps a writer
    of many files within its fd limit.
    """

    def __init__(self, max_open: int, close: Callable[[int], None] = os.close) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self._max_open = max_open
        self._close = close
        self._fds: OrderedDict[K, int] = OrderedDict()  # least recently used first

    def get(self, key: K) -> int | None:
        """The fd held for ``key`` (now the most recently used), or None."""
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def add(self, key: K, fd: int) -> None:
        """Hold ``fd`` for ``key``, closing the least recently used fds beyond the bound."""
        self._fds[key] = fd
        while len(self._fds) > self._max_open:
            self._close(self._fds.popitem(last=False)[1])

    def discard(self, key: K) -> None:
        """Close and forget the fd held for ``key``, if any (its file was renamed away)."""
        fd = self._fds.pop(key, None)
        if fd is not None:
            self._close(fd)

    def close_all(self) -> None:
        while self._fds:
            self._close(self._fds.popitem()[1])

    def __len__(self) -> int:
        return len(self._fds)


def sha256_of_fd(fd: int, size: int | None = None) -> tuple[int, str]:
    """(bytes read, hex sha256) of the file behind ``fd`` from offset 0: its first ``size``
    bytes when given (no read to find the end: one syscall of three for a small file), else up
    to the end; fewer when the file is shorter."""
    digest = hashlib.sha256()
    pos = 0
    left = -1 if size is None else size
    while left and (chunk := os.pread(fd, BLOCK if left < 0 else min(BLOCK, left), pos)):
        digest.update(chunk)
        pos += len(chunk)
        left = left - len(chunk) if left > 0 else left
    return pos, digest.hexdigest()


def digest_fd(fd: int, max_bytes: int) -> tuple[int, str | None]:
    """(size, hex sha256) of the file behind ``fd`` as ``fstat`` saw it; the sha256 is None,
    and nothing is read, when the file is larger than ``max_bytes`` (a huge sparse file would
    stall the writer)."""
    size = os.fstat(fd).st_size
    if size > max_bytes:
        return size, None
    return sha256_of_fd(fd, size)
