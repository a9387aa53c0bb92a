"""Sockets that existed before the capture started: their owners, told to the kernel.

The kernel learns a socket's owner when a thread creates it or sends or receives on it
(bpf/net.bpf.h). A socket opened before the capture that only listens never does either, so
the server side of every TCP handshake (SYN in, SYN-ACK out, ACK in: all carry the listening
socket's cookie) had no owner. At start the collector walks /proc/PID/fd, takes each socket
(pidfd_getfd: the process keeps its own), reads its cookie (SO_COOKIE; the kernel assigns one
if no packet has yet) and has the kernel record the owner from the task itself
(``tc_sock_adopt``): start time, cgroup and scope exactly as for a socket seen in use.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
from collections.abc import Iterator

#: pidfd_getfd(2) (Linux 5.6; the same number on every architecture).
_SYS_PIDFD_GETFD = 438
#: SO_COOKIE (Linux 4.12): the socket's 64-bit cookie, the key the kernel side joins on.
SO_COOKIE = 57
_SOCKET_LINK = re.compile(rb"socket:\[(\d+)\]")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def socket_inode(link: bytes) -> int | None:
    """The inode of a /proc/PID/fd link that names a socket (``socket:[N]``), else None."""
    m = _SOCKET_LINK.fullmatch(link)
    return int(m.group(1)) if m else None


def socket_fds(proc: str = "/proc") -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Each process with sockets open: (pid, [(fd, socket inode), ...]), lowest pid first.
    Processes that exit meanwhile are skipped."""
    pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    for pid in pids:
        base = f"{proc}/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        found = []
        for name in names:
            try:
                inode = socket_inode(os.readlink(f"{base}/{name}".encode()))
            except OSError:
                continue
            if inode is not None:
                found.append((int(name), inode))
        if found:
            yield pid, sorted(found)


def socket_cookie(pidfd: int, fd: int) -> int:
    """The cookie of the socket that is ``fd`` in the process of ``pidfd`` (OSError if it is
    gone). A duplicate of the socket is taken and closed; the process's own is untouched."""
    dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if dup < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        cookie = ctypes.c_uint64(0)
        size = ctypes.c_uint32(8)
        if _libc.getsockopt(dup, socket.SOL_SOCKET, SO_COOKIE, ctypes.byref(cookie),
                            ctypes.byref(size)):  # fmt: skip
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(dup)
    return cookie.value


def socket_cookies(proc: str = "/proc") -> Iterator[tuple[int, int]]:
    """(pid, cookie) of every socket open in a process, each socket once: a socket shared by
    several processes (a listener inherited by forked workers) goes with the lowest pid; the
    kernel replaces that owner when another thread sends or receives on it. Sockets and
    processes that go away meanwhile are skipped."""
    seen: set[int] = set()
    for pid, fds in socket_fds(proc):
        if all(inode in seen for _, inode in fds):
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            for fd, inode in fds:
                if inode in seen:
                    continue
                try:
                    cookie = socket_cookie(pidfd, fd)
                except OSError:
                    continue
                seen.add(inode)
                yield pid, cookie
        finally:
            os.close(pidfd)
