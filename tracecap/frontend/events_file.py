"""``--output json:/path``: the events file, written by the front end (root) and rotated by size.

The events are made by the front end, which runs as root (it starts supervisord and the
collector), so root writes this file, at a path the user chose. Root must never be redirected by
someone else's directory or link there: the path is walked from ``/`` one directory at a time
(``tracecap.fsutil.walk``, no symlink followed), every directory that existed must be root's and
not writable by others (a sticky one such as ``/tmp`` is accepted: others cannot rename or remove
root's entries there), missing ones are created 0750, and the file is opened relative to the last
directory's fd without following a link or blocking on a FIFO, refused unless it is a regular
file of root's with one link. An existing file is appended to, never truncated (it may be
evidence). Rotation renames within that directory fd (tracecap.segments).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from tracecap.frontend.rundir import unsafe_component
from tracecap.fsutil import UnsafePath, walk
from tracecap.rotation import Rotation
from tracecap.segments import Rotated, SegmentedFile

#: Directories created on the way to the events file: root's, closed to others.
EVENTS_DIR_MODE = 0o750
#: The events file: process names, paths and arguments are not for every user.
EVENTS_FILE_MODE = 0o640
_LIVE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class EventsFileError(OSError):
    """The events file cannot be written safely."""


def open_live(dir_fd: int, name: str) -> int:
    """The live events file in ``dir_fd``: created 0640, or an existing regular file of ours
    with one link (a hard link to another file would let this write into it) appended to."""
    fd = os.open(name, _LIVE_FLAGS, EVENTS_FILE_MODE, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, f"{name} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafePath(errno.EPERM, f"{name} is owned by uid {st.st_uid}, not ours")
        if st.st_nlink != 1:
            raise UnsafePath(errno.EMLINK, f"{name} has {st.st_nlink} hard links")
        os.fchmod(fd, EVENTS_FILE_MODE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_events_file(
    path: str,
    how: Rotation | None,
    on_rotate: Callable[[Rotated], None] | None = None,
    on_problem: Callable[[str], None] | None = None,
) -> SegmentedFile:
    """The events file at ``path`` (absolute, checked by the option parser), ready to append;
    EventsFileError says why it cannot be."""
    parent, name = os.path.split(path)
    try:
        directory, steps = walk(parent or "/", create_mode=EVENTS_DIR_MODE)
    except (OSError, ValueError) as exc:
        raise EventsFileError(errno.EINVAL, f"--output json:{path}: {exc}") from None
    try:
        problem = unsafe_component(steps)
        if problem:
            raise EventsFileError(
                errno.EPERM,
                f"--output json:{path}: {problem}, so another user could redirect root's "
                "writes; choose a directory whose every parent is root's and not writable by "
                "others (or sticky, as /tmp)",
            )
        try:
            live = SegmentedFile(directory.fd, name, how, open_live, on_rotate, on_problem)
        except OSError as exc:
            raise EventsFileError(exc.errno or errno.EIO, f"--output json:{path}: {exc}") from None
    except BaseException:
        directory.close()
        raise
    directory.fd = -1  # held by the SegmentedFile from now on
    return live
