"""The diagnostic line of the long-running tools (bridges, the NATS writer): prefixed with the
tool's name and flushed at once, because supervisord captures stderr into the program's log
and a line held in a buffer is missing from it when the process is killed."""

from __future__ import annotations

import sys
from collections.abc import Callable

#: What the tools take as their log: one line without its newline. Tests pass ``list.append``.
Log = Callable[[str], None]


def stderr_log(prefix: str) -> Log:
    """A ``Log`` printing ``"<prefix>: <line>"`` to stderr, flushed."""

    def log(line: str) -> None:
        print(f"{prefix}: {line}", file=sys.stderr, flush=True)

    return log
