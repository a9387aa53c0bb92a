"""Bytes that moved between files without a user buffer (copy_file_range, sendfile, splice),
read back by the collector from a file that still holds them.

The kernel records what moved (tc_file_xfer: both ends, offsets, length, and each end's size,
mtime and ctime at the syscall's exit), not the bytes. The source still holds them until it
changes, and a regular-file destination does too. So the collector opens one of them at once,
as an exact file: the process's own fd through /proc/PID/fd/N while it is alive, else the
recorded path, each opened O_PATH (which opens nothing: no device or FIFO side effect) and
checked (regular file, dev, inode, size, mtime and ctime as the kernel saw them) before it is
reopened for reading through /proc/self/fd. It then streams the bytes a bounded amount at a
time, as ordinary ``file.write.``/``file.read.`` messages at the artifact's offsets marked
``source: "readback"``. Whatever cannot be read, or was read from a file that changed since the
syscall, is published as a ``lost`` range: never as bytes the workload did not write.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpf import records
from collector.envelopes import Outgoing
from collector.file_assembly import MAX_MESSAGE_PAYLOAD as MESSAGE_BYTES
from collector.object_files import FileIdentity, identity_changes, open_unchanged
from tracecap import bus

Opener = Callable[[list[str], records.XferEnd], tuple[int | None, str]]


def open_end(candidates: list[str], end: records.XferEnd) -> tuple[int | None, str]:
    """A read-only fd of the first candidate that is the file at ``end`` of a transfer,
    unchanged since the syscall's exit (``object_files.open_unchanged``: O_PATH first, so no
    device or FIFO is opened; a path through a symbolic link is refused); or (None, why not).
    Without times from the kernel, a change could not be seen: nothing is read then."""
    if end.mtime == 0 and end.ctime == 0:
        return None, "the kernel gave no times to tell whether it changed"
    return open_unchanged(candidates, identity_of(end))


def identity_of(end: records.XferEnd) -> FileIdentity:
    """The file at ``end`` as the kernel saw it at the syscall's exit."""
    return FileIdentity(end.dev, end.inode, end.ctime, end.mtime, end.size)


def candidates(xfer: records.FileXfer) -> list[tuple[list[str], records.XferEnd]]:
    """Where the transfer's bytes can be read back, best first: the source if it is a regular
    file, then the destination if it is one; each through the process's fd, then by its path
    (absolute and whole paths only)."""
    ev = xfer.event
    is_write = ev.direction == records.DIR_WRITE
    paths = {
        "src": xfer.other_path if is_write else ev.path,
        "dst": ev.path if is_write else xfer.other_path,
    }
    out = []
    for name, end in (("src", xfer.src), ("dst", xfer.dst)):
        if not stat.S_ISREG(end.mode):
            continue
        tries = [f"/proc/{ev.hdr.pid}/fd/{end.fd}"]
        path = paths[name]
        if path.startswith(b"/") and not path.startswith(b"/proc/"):
            tries.append(os.fsdecode(path))
        out.append((tries, end))
    return out


@dataclass
class ReadbackJob:
    """One transfer being read back from ``fd`` (owned by the streamer from ``add`` on), at
    ``start`` in that file; its messages go out as transfer ``io_id`` of the artifact."""

    fd: int
    start: int
    topic: bytes
    env: dict[str, Any]  # the artifact's keys, with ts, io_id, io_len, io_count
    base: int  # the artifact offset of the transfer's first byte (0 for streams)
    length: int
    identity: FileIdentity  # the file as opened; any change since loses the rest
    done: int = 0


class Readback:
    """Read-back transfers, oldest first: ``add`` opens the file at once (the process may be
    gone a moment later), ``pump`` reads at most its budget, as FileStreamer does for binaries,
    so the ring buffers keep draining while a large copy is read."""

    def __init__(self, opener: Opener = open_end) -> None:
        self._open = opener
        self._jobs: deque[ReadbackJob] = deque()
        self.bytes = 0
        self.lost_bytes = 0
        self.unreadable = 0

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def add(
        self, xfer: records.FileXfer, topic: bytes, env: dict[str, Any], ts: int
    ) -> list[Outgoing]:
        """Open where ``xfer``'s bytes can be read and queue it; if nowhere, its loss notice."""
        ev = xfer.event
        env = dict(
            env, ts=ts, ts_last=ts, io_id=ev.io_id, io_len=ev.io_len, io_count=1,
            source=bus.SOURCE_READBACK,
        )  # fmt: skip
        base = 0 if ev.append else ev.pos
        reasons = []
        for tries, end in candidates(xfer):
            fd, why = self._open(tries, end)
            if fd is not None:
                # as opened, which the opener checked is the kernel's view of it
                st = os.fstat(fd)
                identity = identity_of(end)._replace(
                    ctime=st.st_ctime_ns, mtime=st.st_mtime_ns, size=st.st_size
                )
                self._jobs.append(ReadbackJob(fd, end.pos, topic, env, base, ev.io_len, identity))
                return []
            reasons.append(why)
        self.unreadable += 1
        why = "; ".join(reasons) or "neither end is a regular file"
        job = ReadbackJob(-1, 0, topic, env, base, ev.io_len, FileIdentity(0, 0, 0, 0, 0))
        return [self._lost(job, why)]

    def pump(self, budget: int) -> list[Outgoing]:
        """Read and package up to ``budget`` bytes of the queued transfers, oldest first."""
        out: list[Outgoing] = []
        while self._jobs and budget > 0:
            job = self._jobs[0]
            want = min(MESSAGE_BYTES, budget, job.length - job.done)
            try:
                data = os.pread(job.fd, want, job.start + job.done)
                changed = identity_changes(job.identity, os.fstat(job.fd))
                why = f"changed since the transfer: {changed}" if changed else ""
            except OSError as exc:
                data, why = b"", exc.strerror or "read error"
            if not why and len(data) < want:
                why = "the file ends before the bytes moved"
            if why:  # nothing read now can be told from what a change wrote
                out.append(self._lost(job, why))
                self._finish()
                continue
            budget -= len(data)
            env = dict(job.env, io_off=job.done, off=job.base + job.done)
            out.append(Outgoing(job.topic, env, data))
            job.done += len(data)
            self.bytes += len(data)
            if job.done >= job.length:
                self._finish()
        return out

    def _lost(self, job: ReadbackJob, why: str) -> Outgoing:
        """The rest of ``job`` as a loss notice, saying why."""
        self.lost_bytes += job.length - job.done
        start, end = job.base + job.done, job.base + job.length
        env = dict(job.env, io_off=job.done, off=start, lost=[[start, end]], readback_error=why)
        return Outgoing(job.topic, env, None)

    def _finish(self) -> None:
        job = self._jobs.popleft()
        os.close(job.fd)

    def abandon(self, why: str) -> list[Outgoing]:
        """Give up on every queued transfer (capture stops): the rest of each is lost."""
        out = []
        while self._jobs:
            out.append(self._lost(self._jobs[0], why))
            self._finish()
        return out

    def close(self) -> None:
        while self._jobs:
            self._finish()

    def stats(self) -> dict[str, int]:
        return {
            "readback_bytes": self.bytes,
            "readback_lost_bytes": self.lost_bytes,
            "readback_unreadable": self.unreadable,
            "readback_pending": self.pending,
        }
