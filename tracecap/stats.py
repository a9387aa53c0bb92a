"""A writer's counters on disk, which is how ``tracecap status`` sees writers it does not own."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from tracecap.text import safe_component


class StatsFile:
    """``<stats_dir>/writer-<name>.json``, replaced atomically so a reader never sees half of it."""

    def __init__(self, stats_dir: str, name: str) -> None:
        os.makedirs(stats_dir, mode=0o750, exist_ok=True)
        self._dir_fd = os.open(stats_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        component = safe_component(name.encode())
        self.name = f"writer-{component}.json"
        self._tmp = f".{self.name}.{os.getpid()}.tmp"

    def read(self) -> dict[str, Any] | None:
        """What a previous process of this writer left (a restart continues its counters)."""
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(1 << 20))
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


def read_writer_stats(stats_dir: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(stats_dir)):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(stats_dir, name)) as f:
                out[name.removesuffix(".json")] = json.load(f)
    return out
