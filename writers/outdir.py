"""The output directory, reached only through directory fds that never follow symlinks.

The output tree is writable by the writer's user and may be shared with whoever else can write
there; a symlink or FIFO planted under a predictable artifact name must not redirect or stall a
writer. Opening the root once and creating everything relative to it, one component at a time
with ``O_NOFOLLOW``, is the portable stand-in for ``openat2(RESOLVE_BENEATH)`` that Python lacks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

DIR_MODE = 0o750
FILE_MODE = 0o640

#: Opening a directory of the tree: a symlink in its place fails (ELOOP) instead of being followed.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK so that a FIFO planted under an artifact name fails (ENXIO) instead of blocking.
_FILE_FLAGS = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafePath(OSError):
    """Something in the output tree is not what tracecap would have created there."""


def check_component(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a single path component: {name!r}")


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


class OutputDir:
    """The root of the output tree, held as one fd for the writer's whole life.

    Holding the fd means a later rename or symlink swap of the path cannot move our writes.
    """

    def __init__(self, out_dir: str) -> None:
        self.path = out_dir
        created = not os.path.lexists(out_dir)
        os.makedirs(out_dir, mode=DIR_MODE, exist_ok=True)
        try:
            self._fd = os.open(out_dir, DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(exc.errno, f"output directory {out_dir!r} is a symlink") from None
            raise
        if created:
            os.fchmod(self._fd, DIR_MODE)
        self._subdirs: dict[str, int] = {}

    @property
    def root_fd(self) -> int:
        return self._fd

    def dir_fd(self, name: str) -> int:
        """The fd of a direct subdirectory, created if missing; a planted symlink raises ELOOP."""
        fd = self._subdirs.get(name)
        if fd is not None:
            return fd
        check_component(name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, DIR_MODE, dir_fd=self._fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=self._fd)
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
            for part in dirs[1:]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                fd = os.open(part, DIR_FLAGS, dir_fd=fd)
                owned.append(fd)
            flags = os.O_RDWR | (os.O_APPEND if append else 0)
            return open_regular(name, flags, fd)
        finally:
            for dir_fd in owned:
                os.close(dir_fd)

    def open_artifact(self, subdir: str, name: str, append: bool) -> int:
        """Open an artifact of a container directory (``open_file`` one level down)."""
        return self.open_file((subdir,), name, append)

    def close(self) -> None:
        for fd in self._subdirs.values():
            os.close(fd)
        self._subdirs.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def clear_out_dir(out_dir: str) -> None:
    """Empty ``out_dir`` for ``--capture clear-dir`` without ever following a symlink.

    A symlink inside the tree is unlinked itself; its target, wherever it points, is untouched.
    A missing ``out_dir`` is already empty; a symlinked ``out_dir`` is refused.
    """
    try:
        root = os.open(out_dir, DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"output directory {out_dir!r} is a symlink") from None
        raise

    def _raise(exc: OSError) -> None:
        raise exc

    try:
        # Bottom-up, so each directory is empty by the time its parent removes it. fwalk never
        # descends through a symlink when follow_symlinks is False, but it lists symlinks to
        # directories among dirnames: rmdir refuses those (ENOTDIR) and unlink removes the link.
        for _, dirnames, filenames, dirfd in os.fwalk(
            ".", topdown=False, onerror=_raise, follow_symlinks=False, dir_fd=root
        ):
            for name in filenames:
                os.unlink(name, dir_fd=dirfd)
            for name in dirnames:
                try:
                    os.rmdir(name, dir_fd=dirfd)
                except NotADirectoryError:
                    os.unlink(name, dir_fd=dirfd)
    finally:
        os.close(root)
