"""Can this user reach the bus socket? Asked before `tap` and `status` wait on it.

libzmq's ipc connect never reports why it cannot connect: a socket this user may not open and
a collector that is not running both look like silence (it retries in the background), so a
user outside group ``tracecap`` was told "no collector". One ``connect(2)`` of a plain unix
socket, with the caller's own credentials, gives the kernel's answer; ``diagnose`` turns it
into a message and an exit status. The system calls are injectable so that every branch is
tested without a collector or a second user.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

#: Exit status when no collector listens (the socket is missing or refuses connections).
EXIT_NO_COLLECTOR = 1
#: Exit status when the kernel refused this user the run directory or the socket: sysexits'
#: EX_NOPERM, distinct from 1 so that scripts can tell "not allowed" from "not running".
EXIT_PERMISSION = 77
#: How long the probe's connect may take; a unix connect only waits when the listener's
#: backlog is full, and then the socket exists and is ours to use, so that counts as reachable.
PROBE_TIMEOUT_S = 1.0
_DENIED = (errno.EACCES, errno.EPERM)
_ABSENT = (errno.ENOENT, errno.ECONNREFUSED)
IPC_PREFIX = "ipc://"


@dataclass(frozen=True)
class Unreachable:
    """Why the bus cannot be reached: the message to print and the exit status."""

    status: int
    message: str


def connect_unix(path: str) -> None:
    """Connect a unix stream socket to ``path`` and hang up (what libzmq's ipc transport does
    first); raises the kernel's OSError. A full backlog (timeout, EAGAIN) returns normally."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_S)
        try:
            sock.connect(path)
        except (TimeoutError, BlockingIOError):
            return


def denied_path(path: str, stat: Callable[[str], os.stat_result] = os.stat) -> str:
    """Which path the kernel refused on the way to ``path``: the first directory this user
    cannot search (stat of its child fails with EACCES), else ``path`` itself (the socket,
    which a connect must be allowed to write)."""
    parts = [part for part in path.split("/") if part]
    parent = "/"
    for part in parts:
        child = os.path.join(parent, part)
        try:
            stat(child)
        except OSError as exc:
            return parent if exc.errno in _DENIED else path
        parent = child
    return path


def diagnose(
    endpoint: str,
    connect: Callable[[str], None] = connect_unix,
    stat: Callable[[str], os.stat_result] = os.stat,
) -> Unreachable | None:
    """None when ``endpoint`` can be connected to (or is not ipc://, whose errors libzmq
    reports itself), else why not: permission, no collector, or another OS error."""
    if not endpoint.startswith(IPC_PREFIX):
        return None
    path = endpoint[len(IPC_PREFIX) :]
    try:
        connect(path)
    except OSError as exc:
        if exc.errno in _DENIED:
            return Unreachable(
                EXIT_PERMISSION,
                f"permission denied: {denied_path(path, stat)} "
                "(run as root or a member of group tracecap)",
            )
        reason = exc.strerror or str(exc)
        if exc.errno in _ABSENT:
            return Unreachable(
                EXIT_NO_COLLECTOR, f"no collector publishing on {endpoint} ({reason})"
            )
        return Unreachable(EXIT_NO_COLLECTOR, f"cannot reach {endpoint}: {reason}")
    return None
