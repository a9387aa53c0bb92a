"""A program supervisord started does not outlive it.

supervisord stops its programs when it is told to stop; when it dies instead (SIGKILL, the OOM
killer, a SIGPIPE on a closed terminal), nothing stops them: measured here, after
``kill -9`` of ``tracecap run`` and its supervisord, the collector (root, its probes attached)
and every writer ran on, orphaned, with no one to stop them or read what they published. So a
program started by supervisord (which sets ``SUPERVISOR_ENABLED=1`` in its programs'
environment) asks the kernel for SIGTERM when its parent goes (``PR_SET_PDEATHSIG``), and
stops the same way it stops under supervisord: the collector detaches, writers flush. A
program started by hand or by systemd is left alone: its parent is a shell or init.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from tracecap.prctl import PR_GET_PDEATHSIG, PR_SET_PDEATHSIG, prctl

Prctl = Callable[[int, int], int]


def parent_death_signal() -> int:
    """The signal this process gets when its parent exits (0: none). A change of user id
    clears it (prctl(2)): whoever drops privileges sets it again with
    ``set_parent_death_signal``."""
    import ctypes

    value = ctypes.c_int(0)
    return 0 if prctl(PR_GET_PDEATHSIG, ctypes.byref(value)) else value.value


def set_parent_death_signal(signum: int) -> None:
    err = prctl(PR_SET_PDEATHSIG, signum)
    if err:
        raise OSError(err, f"cannot ask for a signal when the parent exits: {os.strerror(err)}")


def follow_supervisor(
    environ: Mapping[str, str] = os.environ,
    set_signal: Prctl = prctl,
    getppid: Callable[[], int] = os.getppid,
    kill: Callable[[int, int], None] = os.kill,
) -> bool:
    """Under supervisord, SIGTERM this process when its parent exits; True when armed. A parent
    gone before that (this process already reparented, to init or a subreaper) is caught by
    looking again once armed, and gets the same SIGTERM at once."""
    if environ.get("SUPERVISOR_ENABLED") != "1":
        return False
    parent = getppid()
    err = set_signal(PR_SET_PDEATHSIG, signal.SIGTERM)
    if err:
        raise OSError(err, f"cannot ask for SIGTERM when supervisord exits: {os.strerror(err)}")
    if parent == 1 or getppid() != parent:
        kill(os.getpid(), signal.SIGTERM)
    return True
