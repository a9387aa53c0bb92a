"""Files the collector reads itself: executed binaries and finit_module images.

Only the privileged collector may read another process's binary or open file, so it opens
them as soon as the kernel reports them (a short-lived process is gone a moment later) and
streams them to the writers a bounded amount at a time, so that the ring buffers keep draining
even while a 100 MB binary is on its way.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from collector.envelopes import Outgoing

MESSAGE_BYTES = 1024 * 1024


def st_dev_of(kernel_dev: int) -> int:
    """The kernel's s_dev (MAJOR << 20 | MINOR) as stat's st_dev."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def open_verified(candidates: list[str], dev: int, inode: int) -> tuple[int | None, str]:
    """Open the first candidate that is the file the kernel named (same dev and inode).

    Returns (fd, "") or (None, why not). The check matters for the fallback paths: by the time
    the process is gone, its path may name another file.
    """
    reasons = []
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror}")
            continue
        st = os.fstat(fd)
        if st.st_ino == inode and st.st_dev == st_dev_of(dev):
            return fd, ""
        os.close(fd)
        reasons.append(f"{path}: another file now (dev {st.st_dev}, inode {st.st_ino})")
    return None, "; ".join(reasons) or "no path to open"


def exec_candidates(pid: int, filename: bytes) -> list[str]:
    paths = [f"/proc/{pid}/exe"]
    name = os.fsdecode(filename)
    if name.startswith("/") and not name.startswith(("/dev/fd/", "/proc/")):
        paths.append(name)
    return paths


def exe_link(pid: int) -> bytes:
    try:
        return os.readlink(f"/proc/{pid}/exe".encode())
    except OSError:
        return b""


def is_memfd(link: bytes) -> bool:
    return link.startswith(b"/memfd:")


@dataclass
class FileJob:
    """A file opened and verified for one exec or finit_module event, waiting to be streamed:
    the streamer owns ``fd`` from ``add`` on and closes it when the file ends or fails."""

    fd: int
    topic: bytes
    env: dict[str, Any]
    size: int
    off: int = 0


class FileStreamer:
    """The queue of files being streamed, oldest first. Each ``pump`` reads at most its budget
    (in messages of at most MESSAGE_BYTES), so a large binary never holds up the ring buffers;
    every file ends in one ``last`` message, with an ``error`` and its unread range if reading
    failed."""

    def __init__(self) -> None:
        self._jobs: deque[FileJob] = deque()
        self.read_errors = 0

    def add(self, job: FileJob) -> None:
        self._jobs.append(job)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def pump(self, budget: int) -> list[Outgoing]:
        """Read and package up to ``budget`` bytes of the queued files, oldest first."""
        out: list[Outgoing] = []
        while self._jobs and budget > 0:
            job = self._jobs[0]
            try:
                data = os.pread(job.fd, min(MESSAGE_BYTES, budget), job.off)
            except OSError as exc:
                self.read_errors += 1
                lost = [[job.off, max(job.size, job.off)]] if job.size > job.off else []
                env = dict(job.env, obj_off=job.off, last=True, error=exc.strerror)
                if lost:
                    env["lost"] = lost
                out.append(Outgoing(job.topic, env, None))
                self._finish()
                continue
            budget -= len(data)
            job.size = max(job.size, job.off + len(data))
            # EOF, not the size seen at open, ends the object: the file may have grown since
            env = dict(job.env, obj_off=job.off, obj_len=job.size, last=not data)
            out.append(Outgoing(job.topic, env, data or None))
            job.off += len(data)
            if not data:
                self._finish()
        return out

    def _finish(self) -> None:
        job = self._jobs.popleft()
        os.close(job.fd)

    def close(self) -> None:
        while self._jobs:
            self._finish()
