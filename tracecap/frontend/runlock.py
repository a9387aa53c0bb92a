"""One capture per run directory.

Unclaimed, a second `tracecap run` on the run directory of a live capture rewrites the live
capture's options file, supervisord.conf and logs before its own supervisord fails (its socket
is taken): a writer of the live capture that supervisord restarts afterwards reads the new
options and writes its artifacts into the other run's output directory (measured), and with
clear-dir and the same dir: the live capture's output is emptied. So the run directory is
claimed before anything is written: a lock held by `tracecap run` for its whole life (another
`tracecap run`), and no answer on its sockets (the static deployment's supervisord, or a
capture whose `tracecap run` was killed).
"""

from __future__ import annotations

import fcntl
import os

from tracecap.privileges import RunDirError, prepare_run_dir
from tracecap.tools.reach import connect_unix

LOCK_NAME = "run.lock"
#: What a live capture listens on in its run directory: supervisord's control socket and the bus.
LIVE_SOCKETS = ("supervisor.sock", "bus.sock")


def answers(path: str) -> bool:
    """Whether a process listens on the unix socket at ``path`` (a socket file left by a
    process that is gone refuses connections; a full backlog still means a listener)."""
    try:
        connect_unix(path)
    except OSError:
        return False
    return True


def claim_run_dir(run_dir: str) -> int:
    """Create (prepare_run_dir) and claim ``run_dir`` for this process: the lock's fd, to keep
    open while the capture runs (it is released when the process exits, however it exits).
    RunDirError when another capture holds it."""
    prepare_run_dir(run_dir)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(run_dir, LOCK_NAME), flags, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"another `tracecap run` is using the run directory {run_dir}: stop it first, "
                "or give this capture a run directory of its own (--run-dir)"
            ) from None
        live = [name for name in LIVE_SOCKETS if answers(os.path.join(run_dir, name))]
        if live:
            raise RunDirError(
                f"a capture is running in {run_dir} (a process answers on "
                f"{' and '.join(live)}): stop it first (for the static deployment, "
                "`supervisorctl -c supervisord.conf shutdown`), or give this capture a run "
                "directory of its own (--run-dir)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd
