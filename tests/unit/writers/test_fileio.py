"""The writers' shared I/O: the write loop's accounting (over a scripted write function), the
fd LRU (over a recorded close) and hashing with a size limit (over real files)."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from writers import fileio
from writers.fileio import FdCache, digest_fd, sha256_of_fd, write_all


class ScriptedWrite:
    """A write function that takes at most the next step's bytes per call (an int), or raises
    the step's error; it records every call as (offset, bytes offered)."""

    def __init__(self, *steps: int | OSError) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[int, int]] = []
        self.written = bytearray()

    def __call__(self, fd: int, data: memoryview, off: int, append: bool) -> int:
        self.calls.append((off, len(data)))
        step = self.steps.pop(0)
        if isinstance(step, OSError):
            raise step
        taken = bytes(data[:step])
        self.written += taken
        return len(taken)


def test_short_writes_are_continued_where_they_stopped() -> None:
    write = ScriptedWrite(3, 3, 100)
    assert write_all(5, b"abcdefghij", 1000, write=write) == (10, None)
    assert write.calls == [(1000, 10), (1003, 7), (1006, 4)]
    assert bytes(write.written) == b"abcdefghij"


def test_enospc_midway_says_how_far_the_bytes_got() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    done, error = write_all(5, b"abcdefghij", 1000, write=ScriptedWrite(4, full))
    assert (done, error) == (4, full)  # [1000, 1004) written, [1004, 1010) missing


def test_a_write_that_takes_nothing_is_enospc_not_a_spin() -> None:
    write = ScriptedWrite(2, 0, 100)
    done, error = write_all(5, b"abcdef", 0, write=write)
    assert done == 2 and isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert len(write.calls) == 2


def test_an_error_before_any_byte() -> None:
    denied = PermissionError(errno.EACCES, "denied")
    assert write_all(5, b"abc", 0, write=ScriptedWrite(denied)) == (0, denied)


def test_nothing_to_write_calls_nothing() -> None:
    assert write_all(5, b"", 0, write=ScriptedWrite()) == (0, None)


def test_the_os_write_places_or_appends(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert write_all(fd, b"world", 5) == (5, None)
        assert write_all(fd, b"hello", 0) == (5, None)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert write_all(fd, b"!", 0, append=True) == (1, None)  # at the end, not at 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b"helloworld!"


class Closed(list[int]):
    def __call__(self, fd: int) -> None:
        self.append(fd)


def test_the_least_recently_used_fd_is_closed_to_make_room() -> None:
    closed = Closed()
    fds: FdCache[str] = FdCache(2, close=closed)
    fds.add("a", 10)
    fds.add("b", 11)
    assert fds.get("a") == 10  # now b is the least recently used
    fds.add("c", 12)
    assert closed == [11] and len(fds) == 2
    assert fds.get("b") is None and fds.get("c") == 12
    fds.add("d", 13)
    assert closed == [11, 10]
    fds.close_all()
    assert sorted(closed) == [10, 11, 12, 13] and len(fds) == 0


def test_an_fd_cache_holds_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_open must be at least 1"):
        FdCache(0)


@pytest.fixture
def fd_of(tmp_path: Path) -> Iterator:
    opened: list[int] = []

    def open_with(data: bytes) -> int:
        path = tmp_path / f"f{len(opened)}"
        path.write_bytes(data)
        opened.append(os.open(path, os.O_RDONLY))
        return opened[-1]

    yield open_with
    for fd in opened:
        os.close(fd)


def test_hashing_reads_the_whole_file_in_blocks(fd_of, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "BLOCK", 7)
    data = bytes(range(256)) * 3
    assert sha256_of_fd(fd_of(data)) == (len(data), hashlib.sha256(data).hexdigest())
    assert sha256_of_fd(fd_of(b"")) == (0, hashlib.sha256(b"").hexdigest())


def test_hashing_a_known_size_reads_no_further(fd_of, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "BLOCK", 7)
    data = bytes(range(256)) * 3
    reads: list[int] = []
    pread = os.pread

    def counted(fd: int, n: int, off: int) -> bytes:
        reads.append(n)
        return pread(fd, n, off)

    monkeypatch.setattr(fileio.os, "pread", counted)
    assert digest_fd(fd_of(data), 1 << 20) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(reads) == len(data) and len(reads) == -(-len(data) // 7)  # no read at the end
    # a file shorter than the size asked for: what is there
    assert sha256_of_fd(fd_of(data), len(data) + 5) == (len(data), hashlib.sha256(data).hexdigest())
    assert sha256_of_fd(fd_of(data), 10) == (10, hashlib.sha256(data[:10]).hexdigest())


def test_a_file_over_the_limit_is_not_hashed(fd_of, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * 100
    assert digest_fd(fd_of(data), 100) == (100, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(fileio.os, "pread", pytest.fail)  # not a byte read
    assert digest_fd(fd_of(data), 99) == (100, None)
