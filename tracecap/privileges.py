"""Who may do what: dropping root before touching untrusted data (writers parse what any process
can shape), and the run directory whose group decides who reaches the bus."""

from __future__ import annotations

import grp
import os
import pwd

from tracecap.fsutil import ancestor_problem, walk
from tracecap.lifetime import parent_death_signal, set_parent_death_signal
from tracecap.prctl import PR_SET_NO_NEW_PRIVS, prctl


class PrivilegeError(RuntimeError):
    """The writer cannot become the unprivileged user it must run as."""


class RunDirError(RuntimeError):
    """The run directory is not one root alone controls (a symlink, a file, or another user's
    directory on the way)."""


def drop_privileges(user: str = "tracecap") -> None:
    """Become ``user`` for good when started as root; a non-root start is already unprivileged.

    Supplementary groups are cleared first (root's groups would otherwise survive setuid), the
    gid before the uid (after setuid we could no longer change it), and the drop is verified:
    regaining root must fail. HOME/USER follow, since supervisord does not set them (its #435).
    No-new-privileges is set in every case (supervisord may have made us the user already): a
    setuid binary can then never hand capabilities back to a process that parses hostile data.
    """
    set_no_new_privs()
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"{user} user missing: run `make setup`") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"refusing to run writers as {user!r}: it is uid 0")
    death = parent_death_signal()  # supervisord's (tracecap/lifetime.py); setuid clears it
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if death:
        set_parent_death_signal(death)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("privileges were not dropped: setuid(0) still succeeds")
    os.umask(0o027)
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)


def set_no_new_privs() -> None:
    err = prctl(PR_SET_NO_NEW_PRIVS, 1)
    if err:
        raise PrivilegeError(f"cannot set no_new_privs: {os.strerror(err)}")


def prepare_run_dir(run_dir: str, group: str = "tracecap") -> None:
    """Create the run directory: root's, setgid, group ``tracecap``, no access for others.

    The ipc socket inherits the group, so unprivileged writers in that group can connect and
    nobody else can. Every directory on the way is opened without following a symlink and must
    be root's and writable by root alone (``/run`` is); the run directory itself is changed with
    ``fchown``/``fchmod`` on the descriptor that was checked.
    """
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = -1
    try:
        directory, steps = walk(run_dir, create_mode=0o755, last_mode=0o2750)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"run directory {run_dir}: {exc}") from None
    with directory:
        for step in steps:
            problem = None if step.created else ancestor_problem(step.st)
            if step is steps[-1] and problem and step.st.st_uid == 0:
                problem = None  # its own group and mode are set just below
            if problem:
                raise RunDirError(f"run directory {run_dir}: {step.path} {problem}")
        if gid >= 0 and steps[-1].st.st_gid != gid:
            directory.chown(-1, gid)
        directory.chmod(0o2750)
