"""``index.jsonl``: the record of what was captured, shared by every writer process."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Any

from writers.outdir import OutputDir, check_component, open_regular

INDEX_NAME = "index.jsonl"


class Index:
    """``index.jsonl``: one JSON object per line, the record of what was captured.

    Each line goes out in a single ``write`` on an ``O_APPEND`` fd, so several writer processes can
    share the file without interleaving inside a line. ``ensure_ascii`` escapes every control and
    non-ASCII character, so no field, however hostile, can split or forge a line.
    """

    def __init__(self, out: OutputDir, name: str = INDEX_NAME) -> None:
        check_component(name)
        self._fd = open_regular(name, os.O_WRONLY | os.O_APPEND, out.root_fd)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=True, sort_keys=True, allow_nan=False) + "\n"
        data = line.encode("ascii")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short index write ({written} of {len(data)} bytes)")

    def append_or_count(
        self,
        record: dict[str, Any],
        counters: dict[str, int],
        log: Callable[[str, str], None],
        what: str,
    ) -> bool:
        """Append one line; a failure is counted (``index_errors``) and logged as ``what`` not
        written, never raised: the writer goes on, and a later line may describe the same."""
        try:
            self.append(record)
        except (OSError, ValueError) as exc:
            counters["index_errors"] = counters.get("index_errors", 0) + 1
            log("index_error", f"{what} not written: {exc}")
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
