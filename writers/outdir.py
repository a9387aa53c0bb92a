"""The output directory, reached only through directory fds that never follow symlinks.

The output tree is writable by the writer's user and may be shared with whoever else can write
there; a symlink or FIFO planted under a predictable artifact name must not redirect or stall a
writer. The root is opened once and everything is created relative to it, one component at a
time through ``tracecap.fsutil`` (``openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)``, or
``O_NOFOLLOW`` where the kernel lacks it), and a directory is used only if it is ours and
nobody else can write into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from tracecap.fsutil import (
    DIR_FLAGS,
    UnsafePath,
    check_component,
    default_opener,
    owned_dir_problem,
    walk,
)

__all__ = [
    "DIR_FLAGS",
    "DIR_MODE",
    "FILE_MODE",
    "OutputDir",
    "UnsafePath",
    "check_component",
    "clear_out_dir",
    "open_regular",
]

DIR_MODE = 0o750
FILE_MODE = 0o640
#: The output root's parent is held only to open the root relative to it: O_PATH needs only
#: the right to pass through it, so root's dir: may be 0711 (what the front end's refusal
#: advises) and not readable by the writers' user.
PARENT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# O_NONBLOCK so that a FIFO planted under an artifact name fails (ENXIO) instead of blocking.
_FILE_FLAGS = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# O_EXCL: the file is made by this call or the call fails (EEXIST), whatever is at the name
# (a symlink is not followed), so what is opened is a new regular file of ours with one link.
_NEW_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def process_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    raise OSError(errno.ENOENT, "no Umask in /proc/self/status")


def open_tree_dir(parent_fd: int, name: str, path: str) -> int:
    """Open (creating if missing) the directory ``name`` of the tree, refusing one we would
    not have made: a symlink in its place (ELOOP), another user's, or one that others can write
    into or that is setgid (its files would be readable by its group). Such a directory is never
    reused: whoever prepared it could read or replace what we write there."""
    check_component(name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    try:
        fd = default_opener().open(parent_fd, name, DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"{path} is a symlink or not a directory") from None
        raise
    try:
        problem = owned_dir_problem(os.fstat(fd), (os.geteuid(),))
        if problem:
            raise UnsafePath(errno.EPERM, f"{path} {problem}: not reused")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(name: str, flags: int, dir_fd: int) -> int:
    """Open or create a regular file we own: refuses symlinks (ELOOP), FIFOs, devices, and
    hard links (a link to a file elsewhere would let us overwrite it), and forces 0640."""
    fd = os.open(name, flags | _FILE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, f"{name!r} is not a regular file")
        if st.st_nlink > 1:
            raise UnsafePath(errno.EMLINK, f"{name!r} has {st.st_nlink} hard links")
        os.fchmod(fd, FILE_MODE)  # umask may have widened or narrowed it; never executable
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_regular(name: str, flags: int, dir_fd: int, umask: int) -> int:
    """Create ``name`` as a new regular file of mode FILE_MODE, or FileExistsError when
    anything is at the name. One syscall where ``open_regular`` needs five: a new file needs
    none of its checks, and its mode is fixed only when ``umask`` took bits of FILE_MODE."""
    fd = os.open(name, flags | _NEW_FLAGS, FILE_MODE, dir_fd=dir_fd)
    if umask & FILE_MODE:
        try:
            os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


class OutputDir:
    """The root of the output tree, held as one fd for the writer's whole life.

    Holding the fd means a later rename or symlink swap of the path cannot move our writes.
    """

    def __init__(self, out_dir: str) -> None:
        self.path = out_dir
        parent, name = os.path.split(os.path.abspath(out_dir))
        os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        self._fd = -1
        parent_fd = os.open(parent, PARENT_FLAGS)
        try:
            self._fd = open_tree_dir(parent_fd, name, out_dir)
        finally:
            os.close(parent_fd)
        os.fchmod(self._fd, DIR_MODE)
        self._subdirs: dict[str, int] = {}
        #: The umask files are created under, read at the first ``create_artifact`` (after any
        #: privilege drop changed it).
        self._umask: int | None = None

    @property
    def root_fd(self) -> int:
        return self._fd

    def dir_fd(self, name: str) -> int:
        """The fd of a direct subdirectory, created if missing; a planted symlink or a
        directory another user prepared raises ``UnsafePath`` (see ``open_tree_dir``)."""
        fd = self._subdirs.get(name)
        if fd is not None:
            return fd
        fd = open_tree_dir(self._fd, name, os.path.join(self.path, name))
        self._subdirs[name] = fd
        return fd

    def open_file(self, dirs: Sequence[str], name: str, append: bool) -> int:
        """Open (creating, never truncating) ``dirs[0]/.../name`` for writing (``O_APPEND`` when
        ``append``), each directory created if missing.

        Read-write rather than write-only so the writer can hash what actually reached the disk
        through the same fd. Existing content is kept: a reopened file continues where the
        evicted fd left off. The first directory is held open (``dir_fd``); deeper ones are made
        and opened relative to their parent's fd, and the file is opened as a regular file of
        ours, so a symlink, FIFO or hard link planted anywhere on the way fails instead of
        redirecting the write.
        """
        if not dirs:
            raise ValueError(f"{name!r} needs a directory under the output root")
        for part in (*dirs, name):
            check_component(part)
        fd = self.dir_fd(dirs[0])
        owned: list[int] = []
        try:
            for depth, part in enumerate(dirs[1:], start=2):
                fd = open_tree_dir(fd, part, os.path.join(self.path, *dirs[:depth]))
                owned.append(fd)
            flags = os.O_RDWR | (os.O_APPEND if append else 0)
            return open_regular(name, flags, fd)
        finally:
            for dir_fd in owned:
                os.close(dir_fd)

    def open_dirs(self, dirs: Sequence[str]) -> int:
        """A new fd of the directory ``dirs[0]/...`` (created if missing, checked as
        ``open_file`` does), for renames within it; the caller closes it."""
        if not dirs:
            return os.dup(self._fd)
        for part in dirs:
            check_component(part)
        fd = os.dup(self.dir_fd(dirs[0]))
        try:
            for depth, part in enumerate(dirs[1:], start=2):
                child = open_tree_dir(fd, part, os.path.join(self.path, *dirs[:depth]))
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_artifact(self, subdir: str, name: str, append: bool) -> int:
        """Open an artifact of a container directory (``open_file`` one level down)."""
        return self.open_file((subdir,), name, append)

    def create_artifact(self, subdir: str, name: str, append: bool) -> int:
        """Create a new artifact of a container directory, opened as ``open_artifact`` opens
        one; FileExistsError when its name is taken (by an earlier artifact or anything else).
        A burst of small files makes one artifact each: this is their path."""
        check_component(name)
        if self._umask is None:
            self._umask = process_umask()
        flags = os.O_RDWR | (os.O_APPEND if append else 0)
        return create_regular(name, flags, self.dir_fd(subdir), self._umask)

    def close(self) -> None:
        for fd in self._subdirs.values():
            os.close(fd)
        self._subdirs.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def clear_out_dir(out_dir: str) -> None:
    """Empty ``out_dir`` for ``--capture clear-dir`` without ever following a symlink.

    Every entry is removed through its directory's fd (``tracecap.fsutil.Dir.clear``): a
    symlink inside the tree is unlinked itself and its target, wherever it points, is untouched;
    a mount point inside is refused. A missing ``out_dir`` is already empty; a symlink anywhere
    on its path is refused.
    """
    try:
        root, _ = walk(os.path.abspath(out_dir))
    except FileNotFoundError:
        return
    with root:
        root.clear()
