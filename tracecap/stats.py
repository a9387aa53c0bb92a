"""A writer's counters on disk, which is how ``tracecap status`` sees writers it does not own."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from tracecap.fsutil import UnsafePath, read_bounded, walk
from tracecap.text import safe_component

#: A stats file is a few hundred bytes; anything larger is not one.
MAX_STATS_BYTES = 1 << 20


class StatsFile:
    """``<stats_dir>/writer-<name>.json``, replaced atomically so a reader never sees half of it."""

    def __init__(self, stats_dir: str, name: str) -> None:
        os.makedirs(stats_dir, mode=0o750, exist_ok=True)
        self._dir_fd = os.open(stats_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        component = safe_component(name.encode())
        self.name = f"writer-{component}.json"
        self._tmp = f".{self.name}.{os.getpid()}.tmp"

    def read(self) -> dict[str, Any] | None:
        """What a previous process of this writer left (a restart continues its counters);
        None if there is nothing usable (missing, planted link or FIFO, too large, not JSON)."""
        try:
            data = json.loads(read_bounded(self._dir_fd, self.name, MAX_STATS_BYTES))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, data: dict[str, Any]) -> None:
        payload = (json.dumps(data, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._tmp, flags, 0o640, dir_fd=self._dir_fd)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(self._tmp, self.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)

    def close(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def stats_file_name(name: str) -> bool:
    """Whether ``name`` in the stats directory is a writer's stats file (not a temporary)."""
    return name.endswith(".json") and not name.startswith(".")


def read_writer_stats(stats_dir: str) -> dict[str, dict[str, Any]]:
    """Every writer's counters, keyed ``writer-<name>``; one that cannot be read gets
    ``{"unreadable": why}`` instead, so that a planted file shows rather than vanishes.

    Root runs this on a directory the writers' user owns: the directory is reached without
    following a symlink, and each file is opened ``O_NOFOLLOW | O_NONBLOCK`` and read only if
    it is a regular file of at most ``MAX_STATS_BYTES`` (a FIFO would hang ``tracecap status``
    and ``tracecap run``'s summary; a symlink would make root read what it points to).
    """
    out: dict[str, dict[str, Any]] = {}
    try:
        parent, _ = walk(stats_dir)
    except (OSError, ValueError):
        return out
    with parent:
        try:
            names = parent.names()
        except OSError:
            return out
        for name in filter(stats_file_name, names):
            key = name.removesuffix(".json")
            try:
                data = json.loads(read_bounded(parent.fd, name, MAX_STATS_BYTES))
            except FileNotFoundError:
                continue  # replaced between the listing and the open
            except (OSError, ValueError) as exc:
                out[key] = {"unreadable": unreadable_reason(exc)}
                continue
            out[key] = data if isinstance(data, dict) else {"unreadable": "not a JSON object"}
    return out


def unreadable_reason(exc: Exception) -> str:
    """The text ``tracecap status`` shows for a stats file it did not read."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symlink (not followed)"
    if isinstance(exc, UnsafePath):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"not JSON: {exc}"
