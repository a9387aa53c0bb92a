"""Files the collector reads itself: executed binaries, finit_module files, and the files
mapped where an init_module image lies.

Only the privileged collector may read another process's binary or open file, so it opens
them as soon as the kernel reports them (a short-lived process is gone a moment later) and
streams them to the writers a bounded amount at a time, so that the ring buffers keep draining
even while a 100 MB binary is on its way.

Opening is careful because the collector is root and the paths come from the traced
processes: a path is resolved to an ``O_PATH`` descriptor (which opens nothing: no device's
open routine runs, no FIFO blocks), the inode it reaches must be the regular file the kernel
named, and only then is that inode opened for reading, through the descriptor.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from collector.envelopes import Outgoing

MESSAGE_BYTES = 1024 * 1024
#: openat2(2) (Linux 5.6; the same number on every architecture) and its RESOLVE_NO_SYMLINKS,
#: which refuses any symbolic link, /proc's magic links included, on the way to a file.
_SYS_OPENAT2 = 437
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
#: The /proc/PID directories whose entries are the kernel's links (fd/3, map_files/A-B).
_PROC_LINK_DIRS = frozenset({"fd", "map_files"})
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64))  # fmt: skip


def st_dev_of(kernel_dev: int) -> int:
    """The kernel's s_dev (MAJOR << 20 | MINOR) as stat's st_dev."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def is_same_file(st: os.stat_result, dev: int, inode: int, ctime: int) -> bool:
    """Whether ``st`` is the file the kernel named by its superblock's ``dev``, ``inode`` and
    ``ctime`` (ns).

    The inode number must match. The device number is what stat and the kernel disagree on
    where a file system's getattr reports another device than its superblock's s_dev: btrfs
    reports each subvolume's anonymous device (the top level's too), 9p reported dev 42 where
    the kernel's s_dev was 40 (Debian 6.1 guest, root over 9p). So a device that differs is
    accepted when the ctime agrees to the nanosecond as well: no user can set a ctime, so
    another file with that inode number and that ctime is one that was not changed since it
    was made as a copy of this one by the file system itself (an unmodified btrfs snapshot:
    same bytes), or one on a file system whose times are fixed at build (two squashfs or erofs
    images mounted at once, with the same inode numbers and build time): that pair the rule
    cannot tell apart. A ``ctime`` of 0 (the kernel could not read it) never stands in for
    the device."""
    if st.st_ino != inode:
        return False
    return st.st_dev == st_dev_of(dev) or (ctime != 0 and st.st_ctime_ns == ctime)


def _openat2(dirfd: int, path: str) -> int:
    """An O_PATH descriptor of ``path`` (relative to ``dirfd``) through no symbolic link."""
    how = _OpenHow(_PATH_FLAGS, 0, _RESOLVE_NO_SYMLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                       ctypes.sizeof(how))  # fmt: skip
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _path_fd(path: str) -> int:
    """An O_PATH descriptor of ``path``, following no symbolic link a user could have put
    there. ``/proc/PID/LINK`` (exe, cwd, fd/N, map_files/A-B) is the kernel's own link to the
    process's file and is followed; what comes after it (``/proc/PID/cwd/./run.sh``) is
    resolved from there with no symbolic link either."""
    if not path.startswith("/proc/"):
        return _openat2(_AT_FDCWD, path)
    parts = path.split("/")  # "", "proc", PID, LINK or DIR/LINK, REST...
    depth = 5 if len(parts) > 4 and parts[3] in _PROC_LINK_DIRS else 4
    base = os.open("/".join(parts[:depth]), _PATH_FLAGS)
    rest = "/".join(parts[depth:])
    if not rest:
        return base
    try:
        return _openat2(base, rest)
    finally:
        os.close(base)


def open_verified(
    candidates: list[str], dev: int, inode: int, ctime: int
) -> tuple[int | None, str]:
    """Open for reading the first candidate that is the regular file the kernel named
    (``is_same_file``).

    Returns (fd, "") or (None, why not). The check matters for the fallback paths: by the time
    the process is gone, its path may name another file. A path that passes through a symbolic
    link is refused (``_path_fd``): paths the kernel built from dentries have none, so one there
    was put by someone since, and the name a program was run by is never a candidate.
    """
    reasons = []
    for path in candidates:
        try:
            pfd = _path_fd(path)
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror}")
            continue
        try:
            st = os.fstat(pfd)
            if not is_same_file(st, dev, inode, ctime):
                reasons.append(
                    f"{path}: another file now (dev {st.st_dev}, inode {st.st_ino},"
                    f" ctime {st.st_ctime_ns})"
                )
            elif not stat.S_ISREG(st.st_mode):
                reasons.append(f"{path}: not a regular file")
            else:
                return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC), ""
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror}")
        finally:
            os.close(pfd)
    return None, "; ".join(reasons) or "no path to open"


class FileIdentity(NamedTuple):
    """A file as the kernel saw it at a syscall: which one (the kernel's ``dev``, ``inode``)
    and its ``ctime``, ``mtime`` (ns) and ``size`` then. A file whose times and size are still
    those has not been written since, as far as its timestamps can tell (no user can set a
    ctime back; a write within one timestamp tick of the syscall goes unseen)."""

    dev: int
    inode: int
    ctime: int
    mtime: int
    size: int


def identity_changes(expected: FileIdentity, st: os.stat_result) -> str:
    """What changed in the file since the kernel saw it ("" if nothing did)."""
    now = {"ctime": st.st_ctime_ns, "mtime": st.st_mtime_ns, "size": st.st_size}
    return ", ".join(
        f"{name} {getattr(expected, name)} -> {value}"
        for name, value in now.items()
        if getattr(expected, name) != value
    )


def open_unchanged(candidates: list[str], identity: FileIdentity) -> tuple[int | None, str]:
    """``open_verified``, and the file must also be unchanged since the kernel saw it."""
    fd, why = open_verified(candidates, identity.dev, identity.inode, identity.ctime)
    if fd is None:
        return None, why
    changed = identity_changes(identity, os.fstat(fd))
    if changed:
        os.close(fd)
        return None, f"the file changed since the syscall: {changed}"
    return fd, ""


def exec_candidates(pid: int, kernel_path: bytes, usable: bool) -> list[str]:
    """Where an executed file can be opened: the process's own link to it while it lives, then
    the path the kernel built from dentries (``usable``: absolute, not cut, not a memfd)."""
    paths = [f"/proc/{pid}/exe"]
    if usable and kernel_path.startswith(b"/"):
        paths.append(os.fsdecode(kernel_path))
    return paths


class Job(Protocol):
    """A file being read for the writers: ``step`` reads at most ``budget`` bytes and returns
    the messages made of them, the bytes read and whether the job is over; ``failed`` says a
    read failed; ``close`` releases its fd."""

    failed: bool

    def step(self, budget: int) -> tuple[list[Outgoing], int, bool]: ...

    def close(self) -> None: ...


@dataclass
class FileJob:
    """A whole file opened and verified for one exec or finit_module event, streamed from
    offset 0 to EOF; it ends in one ``last`` message, with an ``error`` and its unread range if
    reading failed."""

    fd: int
    topic: bytes
    env: dict[str, Any]
    size: int
    off: int = 0
    failed: bool = False

    def step(self, budget: int) -> tuple[list[Outgoing], int, bool]:
        try:
            data = os.pread(self.fd, min(MESSAGE_BYTES, budget), self.off)
        except OSError as exc:
            self.failed = True
            lost = [[self.off, max(self.size, self.off)]] if self.size > self.off else []
            env = dict(self.env, obj_off=self.off, last=True, error=exc.strerror)
            if lost:
                env["lost"] = lost
            return [Outgoing(self.topic, env, None)], 0, True
        self.size = max(self.size, self.off + len(data))
        # EOF, not the size seen at open, ends the object: the file may have grown since
        env = dict(self.env, obj_off=self.off, obj_len=self.size, last=not data)
        self.off += len(data)
        return [Outgoing(self.topic, env, data or None)], len(data), not data

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class FillJob:
    """The bytes of an object that the kernel could not read, read from the file they are a
    mapping of: each of ``ranges`` is (object start, object end, file offset). The file was
    verified unchanged (``identity``) when it was opened and is checked again after every
    read: bytes read once it changed are not the ones the kernel would have seen, so they and
    the rest are left missing, and the object says why.

    ``env`` is the object's last message as it would have been without the file; the job ends
    in it, its ``lost`` cut down to what is still missing, ``from_file`` listing what the file
    gave and ``fill_error`` why anything is still missing, if the file is the reason."""

    fd: int
    topic: bytes
    env: dict[str, Any]
    ranges: list[tuple[int, int, int]]
    lost: list[list[int]]
    identity: FileIdentity
    filled: list[list[int]] = field(default_factory=list)
    error: str = ""
    done: int = 0  # bytes of ranges[0] handled
    failed: bool = False

    def step(self, budget: int) -> tuple[list[Outgoing], int, bool]:
        if self.error or not self.ranges:
            return [self._last()], 0, True
        start, end, file_off = self.ranges[0]
        at = start + self.done
        want = min(MESSAGE_BYTES, budget, end - at)
        try:
            data = os.pread(self.fd, want, file_off + self.done)
            changed = identity_changes(self.identity, os.fstat(self.fd))
        except OSError as exc:
            data, changed = b"", ""
            self.error = f"reading the file: {exc.strerror}"
            self.failed = True
        if changed:
            data = b""
            self.error = f"the file changed while it was read: {changed}"
        elif not self.error and len(data) < want:
            self.error = "the file ends before the mapping"
        out = []
        if data:
            out.append(Outgoing(self.topic, dict(self.env, obj_off=at, last=False), data))
            self._note(self.filled, at, at + len(data))
            self.done += len(data)
        if self.error:
            self._give_up()
        elif at + len(data) >= end:
            self.ranges.pop(0)
            self.done = 0
        return out, len(data), False

    def _give_up(self) -> None:
        """After an error: everything not yet read, of this range and the next, stays lost."""
        for i, (start, end, _) in enumerate(self.ranges):
            self._note(self.lost, start + (self.done if i == 0 else 0), end)
        self.ranges.clear()
        self.done = 0

    @staticmethod
    def _note(ranges: list[list[int]], start: int, end: int) -> None:
        if end <= start:
            return
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])

    def _last(self) -> Outgoing:
        env = {k: v for k, v in self.env.items() if k != "lost"}
        lost = sorted(self.lost)
        if lost:
            env["lost"] = lost
        if self.filled:
            env["from_file"] = self.filled
        if self.error:
            env["fill_error"] = self.error
        return Outgoing(self.topic, env, None)

    def close(self) -> None:
        os.close(self.fd)


class FileStreamer:
    """The queue of files being read, oldest first. Each ``pump`` reads at most its budget (in
    messages of at most MESSAGE_BYTES), so a large binary never holds up the ring buffers."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self.read_errors = 0
        #: bytes of the files read and sent so far
        self.read_bytes = 0

    def add(self, job: Job) -> None:
        self._jobs.append(job)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def pump(self, budget: int) -> list[Outgoing]:
        """Read and package up to ``budget`` bytes of the queued files, oldest first."""
        out: list[Outgoing] = []
        while self._jobs and budget > 0:
            messages, used, over = self._jobs[0].step(budget)
            out += messages
            budget -= used
            self.read_bytes += used
            if over:
                job = self._jobs.popleft()
                self.read_errors += job.failed
                job.close()
        return out

    def close(self) -> None:
        while self._jobs:
            self._jobs.popleft().close()
