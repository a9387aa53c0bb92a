"""Container identity: cgroup id -> cgroup path -> container id.

The kernel side knows a task's (or a socket's) cgroup only as a number: on cgroup2,
``bpf_get_current_cgroup_id()`` and ``bpf_skb_cgroup_id()`` return the inode number of the cgroup
directory. Container runtimes do not tell the kernel which container a cgroup is; they only name
the directory after the container. So attribution is two steps, both here:

1. :class:`CgroupResolver` walks the cgroup2 tree and remembers inode -> path (relative to the
   cgroup2 root, as ``/proc/<pid>/cgroup`` prints it);
2. :func:`container_id_from_path` reads the container id out of that path by the naming rules
   of collector/cgroup_rules.py (how Docker, containerd, CRI-O and Podman name their cgroups
   with either driver).

The kernel classifies every cgroup made after start by the same rules, when it is made
(bpf/containers.bpf.h), and keeps the result after the cgroup is gone: the resolver asks it
first (``kernel``), so a container's events are attributed even when read after its removal.

No runtime API is asked: the collector must work with no engine reachable (and none runs in CI),
and a cgroup name cannot be spoofed by an unprivileged process the way a runtime's label could.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from collector.cgroup_rules import (
    USER_RULES_PATH,
    CgroupState,
    Rule,
    classify_path,
    load_rules,
)

#: The built-in naming rules (collector/cgroup_rules.py DEFAULT_RULES).
DEFAULT = load_rules()

__all__ = [
    "CgroupResolver",
    "cgroup2_root",
    "container_id_from_path",
    "path_by_handle",
    "read_rules",
    "unified_path_from_proc",
]


def container_id_from_path(cgroup_path: str, rules: tuple[Rule, ...] = DEFAULT) -> str | None:
    """The full (64-hex) container id of the innermost container in ``cgroup_path``, or None,
    by the naming rules of collector/cgroup_rules.py (the kernel applies the same ones).

    The innermost (last) id wins so that a container nested in another (Docker in Docker, a
    Kubernetes node in a container) is attributed to the container that actually runs the process.
    Components below the container's own directory (``init.scope``, ``system.slice/...`` of a
    container that runs systemd, Podman's ``container`` subgroup) keep that container's id.
    Never raises: the path may come from an untrusted name.
    """
    if not isinstance(cgroup_path, str):
        return None
    return classify_path(cgroup_path, rules).container_id or None


def read_rules(path: str = USER_RULES_PATH) -> tuple[Rule, ...]:
    """The built-in naming rules and the administrator's (``path``, if it exists). A rule that
    cannot be used is a clear error (:class:`RuleError`) at start, not a silent miss."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return DEFAULT
    return load_rules(text)


def unified_path_from_proc(text: str) -> str | None:
    """The cgroup2 path in a ``/proc/<pid>/cgroup`` text (its ``0::<path>`` line), or None.

    On a hybrid host the file also lists the v1 hierarchies; only the unified line is relative to
    the tree whose inode numbers the kernel reports as cgroup ids.
    """
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def cgroup2_root(mounts: str) -> str | None:
    """Where cgroup2 is mounted, from a ``/proc/mounts`` text (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on a hybrid host). Octal escapes (``\\040``) are decoded."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
    return None


#: The file handle type kernfs (cgroupfs) gives its nodes: the 8-byte handle is the node id,
#: which is the cgroup id (include/linux/exportfs.h FILEID_KERNFS).
_FILEID_KERNFS = 0xFE
_AT_FDCWD = -100


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def path_by_handle(root: str, cgroup_id: int) -> str | None:
    """The absolute path of cgroup ``cgroup_id`` under the cgroup2 mount ``root``, asked of the
    kernel directly (open_by_handle_at with a kernfs handle, as systemd does), or None.

    O(1) where a rescan walks the whole tree, so a cgroup created after the last scan is found
    at its first event even while the rate limit holds rescans back. Needs CAP_DAC_READ_SEARCH
    (the collector has it); anywhere it fails (no privilege, not a kernfs, a removed cgroup,
    an old kernel) the caller falls back to scanning.
    """
    if _LIBC is None or not 0 < cgroup_id < 1 << 64:
        return None
    handle = ctypes.create_string_buffer(struct.pack("=IiQ", 8, _FILEID_KERNFS, cgroup_id))
    try:
        mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = _LIBC.open_by_handle_at(
            mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
        )
    finally:
        os.close(mount_fd)
    if fd < 0:
        return None
    try:
        # a directory fd's link is its path; the handle may name a cgroup of another cgroup2
        # mount (a container's own view), which the prefix check below refuses
        if os.fstat(fd).st_ino != cgroup_id:
            return None
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)


def _relative(root: str, absolute: str) -> str | None:
    root = root.rstrip("/") or "/"
    if absolute == root:
        return "/"
    prefix = root if root == "/" else root + "/"
    if not absolute.startswith(prefix):
        return None
    return "/" + absolute[len(prefix) :].lstrip("/")


def _default_root() -> str | None:
    try:
        with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
            return cgroup2_root(f.read())
    except OSError:
        return None


class CgroupResolver:
    """Maps cgroup ids (cgroup2 directory inode numbers) to container ids by walking the tree.

    Why a walk and a cache: the kernel gives only the number, and cgroups come and go with
    containers, so the tree is scanned once at start; an id not known then is first asked of the
    kernel by file handle (:func:`path_by_handle`, O(1), needs CAP_DAC_READ_SEARCH), and only
    where that fails is the tree scanned again. The rescans are rate-limited
    (``min_rescan_interval``) so that a flood of unknown ids (a process creating cgroups in a
    loop, or ids of cgroups already gone) cannot keep the collector walking the tree instead of
    draining its ring buffers. The cache is LRU-bounded so that a long run
    with many short-lived containers keeps constant memory; entries of removed cgroups stay until
    evicted because their last events may still be in flight after the directory is gone.

    ``root`` is the cgroup2 mount point (found in ``/proc/mounts`` when None); tests point it at
    any directory tree, whose inode numbers then play the cgroup ids. All OS access goes through
    :meth:`_walk` and :func:`path_by_handle` (``by_handle=False`` turns the latter off).
    Thread-safe: the collector may resolve from several drain threads.
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        cache_size: int = 65536,
        max_depth: int = 32,
        max_entries: int = 200_000,
        min_rescan_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        by_handle: bool = True,
        rules: tuple[Rule, ...] = DEFAULT,
    ) -> None:
        self.root = root if root is not None else _default_root()
        self.rules = rules
        #: the kernel's record of a cgroup (bpf/containers.bpf.h): its container id, "" for the
        #: host, None when the kernel has none; set by the collector once the maps exist
        self.kernel: Callable[[int], str | None] | None = None
        self.cache_size = cache_size
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.min_rescan_interval = min_rescan_interval
        self._clock = clock
        self.by_handle = by_handle
        self._lock = threading.Lock()
        #: cgroup id -> (path relative to the root, container id or "")
        self._cache: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._last_scan: float | None = None
        #: counters for the collector's stats: scans made, scans refused by the rate limit,
        #: lookups that stayed unknown, scans cut short by the bounds, ids the kernel resolved
        self.scans = 0
        self.scans_limited = 0
        self.unknown = 0
        self.truncated = 0
        self.by_handle_hits = 0
        self.kernel_hits = 0
        self.rescan()

    # -- queries ------------------------------------------------------------------------------

    def container_of(self, cgroup_id: int) -> str:
        """The container id of a cgroup, or "" for the host (and for a cgroup never found)."""
        hit = self._lookup(cgroup_id)
        return hit[1] if hit is not None else ""

    def path_of(self, cgroup_id: int) -> str | None:
        """The cgroup's path relative to the cgroup2 root (``/`` for the root), or None."""
        hit = self._lookup(cgroup_id)
        return hit[0] if hit is not None and hit[0] else None

    def states(self) -> list[tuple[int, CgroupState]]:
        """Every cgroup of the tree now (a fresh walk) with its state by the rules: what the
        kernel is given at start, for the cgroups it did not see made."""
        with self._lock:
            walked = self._walk()
        return [(ino, classify_path(path, self.rules)) for ino, path in walked]

    def rescan(self) -> None:
        """Walk the tree now (not rate-limited: explicit calls are the caller's decision)."""
        with self._lock:
            self._scan_locked()

    # -- internals ----------------------------------------------------------------------------

    def _lookup(self, cgroup_id: int) -> tuple[str, str] | None:
        # A hit takes no lock: each OrderedDict call is atomic under the GIL, and the entry
        # evicted between the get and the move is only not made recent. With the lock, drain
        # threads waited on each other here (10.7% of the collector's samples, 20,000 files).
        hit = self._cache.get(cgroup_id)
        if hit is not None:
            with contextlib.suppress(KeyError):
                self._cache.move_to_end(cgroup_id)
            return hit
        with self._lock:
            hit = self._cache.get(cgroup_id)
            if hit is not None:
                return hit
            if self.kernel is not None:
                cid = self.kernel(cgroup_id)
                if cid is not None:
                    path = path_by_handle(self.root, cgroup_id) if self.root else None
                    rel = _relative(self.root, path) if self.root and path else None
                    hit = (rel or "", cid)
                    self._cache[cgroup_id] = hit
                    self._evict_locked()
                    self.kernel_hits += 1
                    return hit
            if self.by_handle and self.root:
                absolute = path_by_handle(self.root, cgroup_id)
                rel = _relative(self.root, absolute) if absolute is not None else None
                if rel is not None:
                    hit = (rel, classify_path(rel, self.rules).container_id)
                    self._cache[cgroup_id] = hit
                    self._evict_locked()
                    self.by_handle_hits += 1
                    return hit
            now = self._clock()
            if self._last_scan is not None and now - self._last_scan < self.min_rescan_interval:
                self.scans_limited += 1
                self.unknown += 1
                return None
            hit = self._scan_locked(want=cgroup_id)
            if hit is None:
                self.unknown += 1
            return hit

    def _scan_locked(self, want: int | None = None) -> tuple[str, str] | None:
        """Rescan; the entry for ``want`` is returned from the scan itself and made the most
        recently used, so that a tree larger than the cache cannot evict it in the same scan."""
        self._last_scan = self._clock()
        self.scans += 1
        found: tuple[str, str] | None = None
        for ino, path in self._walk():
            entry = (path, classify_path(path, self.rules).container_id)
            self._cache[ino] = entry
            self._cache.move_to_end(ino)
            if ino == want:
                found = entry
        if found is not None and want is not None:
            self._cache[want] = found
            self._cache.move_to_end(want)
        self._evict_locked()
        return found

    def _evict_locked(self) -> None:
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _walk(self) -> list[tuple[int, str]]:
        """(inode, relative path) of the root and every directory under it, breadth first.

        Symlinks are never followed (cgroupfs has none, a test tree or a hostile mount might),
        depth and entry count are bounded, and a directory that vanishes mid-walk (a container
        stopping) is skipped rather than failing the scan.
        """
        if not self.root:
            return []
        try:
            root_ino = os.stat(self.root, follow_symlinks=False).st_ino
        except OSError:
            return []
        out = [(root_ino, "/")]
        level: list[tuple[str, str]] = [(self.root, "")]
        depth = 0
        while level:
            depth += 1
            if depth > self.max_depth:
                self.truncated += 1
                break
            nxt: list[tuple[str, str]] = []
            for abs_dir, rel_dir in level:
                try:
                    with os.scandir(abs_dir) as it:
                        for entry in it:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                            try:
                                # st_ino, not DirEntry.inode(): readdir's d_ino may differ from
                                # st_ino on some file systems (overlayfs), st_ino is the cgroup id
                                ino = entry.stat(follow_symlinks=False).st_ino
                            except OSError:
                                continue
                            rel = f"{rel_dir}/{entry.name}"
                            out.append((ino, rel))
                            nxt.append((entry.path, rel))
                            if len(out) >= self.max_entries:
                                self.truncated += 1
                                return out
                except OSError:
                    continue
            level = nxt
        return out
