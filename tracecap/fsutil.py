"""Directories reached through file descriptors that never follow a symlink.

Root prepares, empties and reads directories that other users can write: the output tree belongs
to the ``tracecap`` user, and a ``dir:`` may sit under world-writable ``/tmp``. A path resolved
twice (checked, then used) can be swapped in between, and a symlink planted anywhere in it turns
root's ``chown`` or ``unlink`` into the planter's. So every path is walked here one component at a
time from ``/``, each opened relative to its parent's descriptor with ``openat2(RESOLVE_NO_SYMLINKS
| RESOLVE_BENEATH)`` (``O_NOFOLLOW | O_DIRECTORY`` where the kernel lacks openat2), checked with
``fstat`` on the descriptor that was opened, and changed with ``fchown``/``fchmod`` on that same
descriptor. The decisions (is this directory acceptable?) are pure functions of a stat result.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

#: openat2 has the same number on every architecture (the unified syscall table, Linux 5.6+).
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: Every lookup here: a symlink anywhere fails (ELOOP), and nothing resolves above the dir fd.
RESOLVE_SAFE = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH

#: Opening a directory: a symlink in its place fails (ELOOP), any other file fails (ENOTDIR)
#: before it is opened, so a device node in a directory's place is never opened as root.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Emptying a tree descends at most this deep; tracecap's own output trees are 4 levels deep.
MAX_CLEAR_DEPTH = 64
#: Group or other write, and setgid (which hands new entries the directory's group).
UNSAFE_DIR_BITS = stat.S_IWGRP | stat.S_IWOTH | stat.S_ISGID


class UnsafePath(OSError):
    """Something on a path is not what tracecap would have created there."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message names the path; "[Errno 40]" adds nothing


def check_component(name: str) -> None:
    """Refuse anything but one plain path component (no ``/``, ``.``, ``..`` or NUL)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a single path component: {name!r}")


def components(path: str) -> list[str]:
    """The components of an absolute path; ``.`` and ``..`` are refused rather than resolved
    (resolving ``..`` by text would go wrong past a symlink; walking it would leave the tree)."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        check_component(part)
    return parts


# --- pure decisions on stat results ---------------------------------------------------------


def ancestor_problem(st: os.stat_result) -> str | None:
    """Why a directory on the way to the output tree lets another user redirect it, if it does.

    It must be root's and writable by root alone, except that a root-owned sticky directory
    (``/tmp``) is fine: others can add entries but not rename or remove root's.
    """
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root"
    if st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH:
        return "is writable by every user"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return f"is writable by group {st.st_gid}"
    return None


def owned_dir_problem(st: os.stat_result, owners: Iterable[int]) -> str | None:
    """Why an existing directory of the output tree cannot be reused, if it cannot: it must be
    a directory of one of ``owners`` that nobody else can write into and that is not setgid (a
    setgid directory would give the artifacts made in it another group, which could read them)."""
    owners = tuple(owners)
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in owners:
        return f"is owned by uid {st.st_uid}, not {' or '.join(map(str, owners))}"
    bits = stat.S_IMODE(st.st_mode) & UNSAFE_DIR_BITS
    if bits:
        what = [
            name
            for bit, name in (
                (stat.S_IWGRP, "group write"),
                (stat.S_IWOTH, "other write"),
                (stat.S_ISGID, "setgid"),
            )
            if bits & bit
        ]
        return f"has {', '.join(what)} permission (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def can_traverse(st: os.stat_result, uid: int, gids: Iterable[int]) -> bool:
    """Whether ``uid`` (with groups ``gids``) may pass through the directory ``st`` describes."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in set(gids):
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


# --- openat2 --------------------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class Opener:
    """Opens one component relative to a directory fd: ``openat2`` with ``resolve`` flags where
    the kernel has it, ``openat`` with ``O_NOFOLLOW`` otherwise (equivalent for a single checked
    component, except for ``RESOLVE_NO_XDEV``, which callers then check with ``st_dev``)."""

    def __init__(self, use_openat2: bool | None = None) -> None:
        self._syscall = None
        if use_openat2 is not False:
            self._syscall = ctypes.CDLL(None, use_errno=True).syscall
            self._syscall.restype = ctypes.c_long
        #: None until probed: the first open asks the kernel once.
        self.has_openat2 = use_openat2

    def _call(self, dir_fd: int, name: bytes, flags: int, mode: int, resolve: int) -> int:
        """openat2's raw result: an fd, or -1 with ctypes' errno set."""
        how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, resolve)
        return int(
            self._syscall(  # type: ignore[misc]
                ctypes.c_long(SYS_OPENAT2),
                ctypes.c_long(dir_fd),
                ctypes.c_char_p(name),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )

    def _probe(self) -> bool:
        """Whether openat2 works here: missing (ENOSYS) or filtered (EPERM, seccomp) means no."""
        if self._syscall is None:
            return False
        fd = self._call(-100, b"/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0)  # AT_FDCWD
        if fd < 0:
            return False
        os.close(fd)
        return True

    def open(
        self, dir_fd: int, name: str, flags: int, mode: int = 0o600, resolve: int = RESOLVE_SAFE
    ) -> int:
        check_component(name)
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if self.has_openat2 is None:
            self.has_openat2 = self._probe()
        if not self.has_openat2:
            return os.open(name, flags, mode, dir_fd=dir_fd)
        fd = self._call(dir_fd, os.fsencode(name), flags, mode, resolve)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), name)
        return fd


_OPENER: Opener | None = None


def default_opener() -> Opener:
    global _OPENER
    if _OPENER is None:
        _OPENER = Opener()
    return _OPENER


# --- directories held open ------------------------------------------------------------------


class Dir:
    """An open directory and the path it was reached by (for messages only: nothing here
    resolves that path again)."""

    def __init__(self, fd: int, path: str, opener: Opener | None = None) -> None:
        self.fd = fd
        self.path = path
        self._opener = opener or default_opener()

    @classmethod
    def root(cls, opener: Opener | None = None) -> Dir:
        return cls(os.open("/", DIR_FLAGS), "/", opener)

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def open_dir(self, name: str, same_device: bool = False) -> Dir:
        """A subdirectory; a symlink, a file, or (``same_device``) a mount point in its place
        raises ``UnsafePath``."""
        resolve = RESOLVE_SAFE | (RESOLVE_NO_XDEV if same_device else 0)
        try:
            fd = self._opener.open(self.fd, name, DIR_FLAGS, resolve=resolve)
        except OSError as exc:
            raise self._unsafe(name, exc) from None
        child = Dir(fd, self.join(name), self._opener)
        if same_device and os.fstat(fd).st_dev != self.stat().st_dev:
            child.close()
            raise UnsafePath(errno.EXDEV, f"{self.join(name)} is a mount point")
        return child

    def make_dir(self, name: str, mode: int) -> tuple[Dir, bool]:
        """The subdirectory ``name``, created with ``mode`` if missing; whether it was created.

        A directory counts as created only if our mkdir made it and what we then opened is ours
        and empty: someone who swapped their own in between is caught here, not trusted.
        """
        created = False
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
            created = True
        except FileExistsError:
            pass
        child = self.open_dir(name)
        if created:
            st = child.stat()
            if st.st_uid != os.geteuid() or child.names():
                child.close()
                raise UnsafePath(errno.EEXIST, f"{self.join(name)} was replaced as it was created")
            os.fchmod(child.fd, mode)  # the umask may have narrowed it
        return child, created

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """A file of this directory (``O_NOFOLLOW``, never through a symlink)."""
        try:
            return self._opener.open(self.fd, name, flags, mode)
        except OSError as exc:
            raise self._unsafe(name, exc) from None

    def chown(self, uid: int, gid: int) -> None:
        os.fchown(self.fd, uid, gid)

    def chmod(self, mode: int) -> None:
        os.fchmod(self.fd, mode)

    def remove(self, name: str, depth: int = MAX_CLEAR_DEPTH) -> None:
        """Remove the entry ``name``: a link or file is unlinked itself (never what it points
        to), a directory emptied through its own fd first. A mount point is refused."""
        try:
            st = self.lstat(name)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                child = self.open_dir(name, same_device=True)
            except UnsafePath as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # replaced by a link or a file since the lstat: remove that instead
            else:
                with child:
                    child.clear(depth - 1)
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(name, dir_fd=self.fd)
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def clear(self, depth: int = MAX_CLEAR_DEPTH) -> None:
        """Remove everything in this directory, never leaving it (see ``remove``)."""
        if depth <= 0:
            raise UnsafePath(errno.ELOOP, f"{self.path} is nested too deep to clear")
        for name in self.names():
            self.remove(name, depth)

    def _unsafe(self, name: str, exc: OSError) -> OSError:
        """The error to raise for a failed open of ``name``: one that says what is in the way
        (opening a symlink with ``O_DIRECTORY`` fails ENOTDIR, not ELOOP, so it is looked at)."""
        path = self.join(name)
        if exc.errno == errno.ENOTDIR:
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(self.lstat(name).st_mode):
                    exc = OSError(errno.ELOOP, exc.strerror)
        if exc.errno == errno.ELOOP:
            return UnsafePath(
                exc.errno, f"{path} is a symlink (tracecap does not follow symlinks here)"
            )
        if exc.errno == errno.ENOTDIR:
            return UnsafePath(exc.errno, f"{path} is not a directory")
        if exc.errno == errno.EXDEV:
            return UnsafePath(exc.errno, f"{path} is a mount point")
        return OSError(exc.errno, exc.strerror, path)


@dataclass(frozen=True)
class Step:
    """One directory on a walked path, as it was when opened."""

    path: str
    st: os.stat_result
    created: bool


def walk(
    path: str,
    create_mode: int | None = None,
    opener: Opener | None = None,
    last_mode: int | None = None,
) -> tuple[Dir, list[Step]]:
    """Open ``path`` from ``/`` one component at a time, never following a symlink.

    Missing components are created with ``create_mode`` (the last one with ``last_mode`` when
    given); without ``create_mode`` a missing one raises FileNotFoundError. Returns the open last
    directory and every directory passed, ``/`` first, for the caller to judge.
    """
    parts = components(path)
    current = Dir.root(opener)
    steps = [Step("/", current.stat(), False)]
    try:
        for i, name in enumerate(parts):
            mode = last_mode if last_mode is not None and i == len(parts) - 1 else create_mode
            if mode is None:
                child, created = current.open_dir(name), False
            else:
                child, created = current.make_dir(name, mode)
            current.close()
            current = child
            steps.append(Step(current.path, current.stat(), created))
    except BaseException:
        current.close()
        raise
    return current, steps


def read_bounded(dir_fd: int, name: str, limit: int, opener: Opener | None = None) -> bytes:
    """The content of a regular file that someone else may have planted or replaced: opened
    without following a symlink and without blocking (a FIFO would stall the reader), refused
    unless it is a regular file of at most ``limit`` bytes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    fd = (opener or default_opener()).open(dir_fd, name, flags)
    try:
        st = os.fstat(fd)
        problem = file_problem(st, limit)
        if problem:
            raise UnsafePath(errno.EINVAL, f"{name} {problem}")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnsafePath(errno.EFBIG, f"{name} grew beyond {limit} bytes")
    return data


def file_problem(st: os.stat_result, limit: int) -> str | None:
    """Why a file cannot be read as a small regular file, if it cannot."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size > limit:
        return f"is {st.st_size} bytes, more than {limit}"
    return None
