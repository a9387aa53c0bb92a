"""What the collector service asks of the machine besides the kernel side and the bus: /proc,
the files that processes execute or load, the user database, and the clocks.

The service calls these through one object each, given to it at construction, the way
supervisor's process code makes every fork, kill and open through its options object: the
unit tests then drive the service with fakes (tests/unit/collector/test_service.py).
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bpf import records
from collector.object_files import FileIdentity, open_unchanged, open_verified
from collector.preexisting_sockets import socket_cookies
from collector.process_tree import read_proc_file
from collector.readback import open_end


class Host:
    """/proc, the binaries and module files the service opens, and the user database."""

    def read_proc(self, pid: int, name: str) -> bytes:
        """The bytes of /proc/PID/NAME (OSError when the process is gone)."""
        return read_proc_file(pid, name)

    def open_verified(
        self, candidates: list[str], dev: int, inode: int, ctime: int
    ) -> tuple[int | None, str]:
        """An fd of the first candidate that is the file (dev, inode, ctime), or (None, why
        not)."""
        return open_verified(candidates, dev, inode, ctime)

    def open_unchanged(
        self, candidates: list[str], identity: FileIdentity
    ) -> tuple[int | None, str]:
        """An fd of the first candidate that is the file ``identity`` names, unchanged since
        the kernel saw it (module files); no path is followed through a symbolic link."""
        return open_unchanged(candidates, identity)

    def socket_cookies(self) -> Iterator[tuple[int, int]]:
        """(pid, cookie) of every socket open now (collector/preexisting_sockets.py)."""
        return socket_cookies()

    def file_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def open_transfer_end(
        self, candidates: list[str], end: records.XferEnd
    ) -> tuple[int | None, str]:
        """A read-only fd of the first candidate that is the transfer's end ``end`` as the
        kernel saw it, unchanged since (collector/readback.py), or (None, why not)."""
        return open_end(candidates, end)

    def user_id(self, name: str) -> int | None:
        """The uid of user ``name``, or None when there is no such user."""
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Clock:
    """The clocks the service reads: monotonic for timeouts, the epoch for stamps, and
    CLOCK_BOOTTIME, which BPF stamps records with, to convert those."""

    monotonic_ns: Callable[[], int] = time.monotonic_ns
    time_ns: Callable[[], int] = time.time_ns
    boottime_ns: Callable[[], int] = _boottime_ns
    sleep: Callable[[float], None] = time.sleep

    def boot_to_epoch_ns(self) -> int:
        """Offset from CLOCK_BOOTTIME to the Unix epoch."""
        return self.time_ns() - self.boottime_ns()
