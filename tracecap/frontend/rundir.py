"""The directories and files `tracecap run` prepares as root for the programs it starts.

The writers run as the unprivileged ``tracecap`` user, so what they write to and read from is
made theirs here: the output directory, the stats directory and the options file. Root does this
on paths that other users may be able to change (``dir:/tmp/...``), so every step goes through
``tracecap.fsutil``: directory fds that never follow a symlink, and ``fchown``/``fchmod`` on the
descriptor that was checked. What is acceptable is decided by the pure functions below.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Sequence

from tracecap.fsutil import (
    Dir,
    Step,
    UnsafePath,
    ancestor_problem,
    can_traverse,
    owned_dir_problem,
    walk,
)
from tracecap.options import Config

#: Directories tracecap creates on the way to ``dir:``: root's, traversable by the writers.
PATH_MODE = 0o755
#: ``dir:`` itself when tracecap creates it (as /var/lib/tracecap): root's, group ``tracecap``.
ROOT_MODE = 0o750
OUT_MODE = 0o750
STATS_MODE = 0o750
OPTIONS_MODE = 0o640


class OutDirError(RuntimeError):
    """The output directory is unsafe for root to prepare, or unreachable by the writers."""


def unsafe_component(steps: Sequence[Step]) -> str | None:
    """The first directory of ``dir:`` that another user could rename, replace or fill, and why.

    Directories tracecap created in this walk are safe: they were made and checked through fds.
    """
    for step in steps:
        if step.created:
            continue
        problem = ancestor_problem(step.st)
        if problem:
            return f"{step.path} {problem}"
    return None


def unreachable_parent(steps: Sequence[Step], uid: int, gids: set[int]) -> str | None:
    """The first directory above the output directory that ``uid`` cannot pass through."""
    for step in steps:
        if not can_traverse(step.st, uid, gids):
            return step.path
    return None


def refuse_reuse_message(out_dir: str, unsafe: str) -> str:
    return (
        f"refusing to use the existing {out_dir}: {unsafe}, so another user may have replaced "
        f"or filled it; choose a dir: whose every directory is root's and not writable by "
        f"others (the default /var/lib/tracecap is), or remove {out_dir} so that tracecap "
        "creates it fresh"
    )


def prepare_out_dir(config: Config, user: str = "tracecap") -> None:
    """Create or check ``<dir>/out`` for the unprivileged writers, emptied with clear-dir.

    An existing ``out/`` is reused only if nobody but root could have changed the directories
    above it, it is root's or the writers', and so is every directory directly in it (the
    writers check the deeper ones as they open them). An ``out/`` created now is safe whatever
    is above it: it is made, checked and handed to ``user`` through one descriptor.
    """
    pw = pwd.getpwnam(user)
    try:
        gid = grp.getgrnam(user).gr_gid
    except KeyError:
        gid = pw.pw_gid
    try:
        parent, steps = walk(config.dir, create_mode=PATH_MODE, last_mode=ROOT_MODE)
    except (UnsafePath, ValueError) as exc:
        raise OutDirError(f"dir:{config.dir}: {exc}") from None
    with parent:
        if steps[-1].created:
            parent.chown(0, gid)
            steps[-1] = Step(parent.path, parent.stat(), True)
        try:
            out, created = parent.make_dir("out", OUT_MODE)
        except UnsafePath as exc:
            raise OutDirError(str(exc)) from None
        with out:
            if not created:
                check_existing_out(out, steps, pw.pw_uid, config.clear_dir)
            gids = {pw.pw_gid, gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
            blocked = unreachable_parent(steps, pw.pw_uid, gids)
            if blocked:
                raise OutDirError(
                    f"the {user} user, which the writers run as, cannot enter {blocked} to "
                    f"reach {out.path}: choose another dir: or let others pass "
                    f"(chmod o+x {blocked})"
                )
            out.chown(pw.pw_uid, pw.pw_gid)
            out.chmod(OUT_MODE)


def check_existing_out(out: Dir, steps: Sequence[Step], uid: int, clear: bool) -> None:
    """Refuse an existing ``out/`` someone else could have prepared; empty it with clear-dir."""
    unsafe = unsafe_component(steps)
    if unsafe:
        raise OutDirError(refuse_reuse_message(out.path, unsafe))
    problem = owned_dir_problem(out.stat(), (0, uid))
    if problem:
        raise OutDirError(f"refusing to reuse {out.path}: it {problem}")
    if clear:
        try:
            out.clear()
        except UnsafePath as exc:
            raise OutDirError(f"clear-dir: {exc}") from None
        return
    for name in out.names():
        st = out.lstat(name)
        if not stat.S_ISDIR(st.st_mode):
            continue
        problem = owned_dir_problem(st, (uid,))
        if problem:
            raise OutDirError(
                f"refusing to reuse {out.join(name)}: it {problem}; remove it or use "
                "--capture clear-dir"
            )


def prepare_stats_dir(stats: str, user: str = "tracecap") -> None:
    """An empty ``stats`` directory the writers can write their stats files into.

    Its parent is the run directory (root's, prepared first); whatever the writers' user left
    inside is removed through descriptors, so a planted link or FIFO is unlinked, not followed.
    """
    pw = pwd.getpwnam(user)
    parent_path, name = os.path.split(stats.rstrip("/"))
    parent, _ = walk(parent_path)
    with parent:
        try:
            st = parent.lstat(name)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent.fd)
        directory, _ = parent.make_dir(name, STATS_MODE)
        with directory:
            directory.clear()
            directory.chown(pw.pw_uid, pw.pw_gid)
            directory.chmod(STATS_MODE)


def write_options(path: str, text: str, group: str = "tracecap") -> None:
    """The run's options file (0640, group ``group``: the writers read it, others may not).

    Created afresh (``O_EXCL``, after unlinking what was there) so that no link or FIFO in its
    place is ever written through.
    """
    parent_path, name = os.path.split(path)
    parent, _ = walk(parent_path)
    with parent:
        try:
            os.unlink(name, dir_fd=parent.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise UnsafePath(errno.EISDIR, f"{path} is a directory") from None
        fd = parent.open_file(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            os.fchown(fd, 0, grp.getgrnam(group).gr_gid)
            os.fchmod(fd, OPTIONS_MODE)
            f.write(text)
