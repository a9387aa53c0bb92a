"""The directories and files `tracecap run` prepares as root for the programs it starts.

The writers run as the unprivileged ``tracecap`` user, so what they write to and read from is
made theirs here: the output directory, the stats directory and the options file.
"""

from __future__ import annotations

import grp
import os
import pwd

from tracecap.options import Config
from writers.outdir import clear_out_dir


class OutDirError(RuntimeError):
    """The writers' user could not reach the output directory."""


def unreachable_parent(path: str, uid: int, gids: set[int]) -> str | None:
    """The first directory above ``path`` that ``uid`` cannot pass through, if any."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        st = os.stat(parent)
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def prepare_out_dir(config: Config, user: str = "tracecap") -> None:
    """Create ``<dir>/out`` for the unprivileged writers, emptied first with clear-dir."""
    pw = pwd.getpwnam(user)
    os.makedirs(config.dir, mode=0o755, exist_ok=True)
    if os.path.islink(config.out_dir):
        raise RuntimeError(f"{config.out_dir} is a symlink: refusing to write through it")
    os.makedirs(config.out_dir, mode=0o750, exist_ok=True)
    if config.clear_dir:
        clear_out_dir(config.out_dir)
    os.chown(config.out_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(config.out_dir, 0o750)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    blocked = unreachable_parent(config.out_dir, pw.pw_uid, gids)
    if blocked:
        raise OutDirError(
            f"the {user} user, which the writers run as, cannot enter {blocked} to reach "
            f"{config.out_dir}: choose another dir: or let others pass (chmod o+x {blocked})"
        )


def prepare_stats_dir(stats: str, user: str = "tracecap") -> None:
    """An empty ``stats`` directory the writers can write their stats files into."""
    pw = pwd.getpwnam(user)
    os.makedirs(stats, exist_ok=True)
    for name in os.listdir(stats):
        os.unlink(os.path.join(stats, name))
    os.chown(stats, pw.pw_uid, pw.pw_gid)
    os.chmod(stats, 0o750)


def write_options(path: str, text: str, group: str = "tracecap") -> None:
    """The run's options file (0640, group ``group``: the writers read it, others may not)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o640)
