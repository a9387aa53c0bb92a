"""Workloads run as child processes (tracecap ignores its own and, with a scope, others')."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: A workload that hangs fails its test instead of stalling the suite.
WORKLOAD_TIMEOUT_S = 120


def python(code: str, comm: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, optionally renamed to ``comm`` first."""
    prologue = ""
    if comm is not None:
        prologue = f"open('/proc/self/comm', 'wb').write({comm!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        check=check,
        capture_output=True,
        timeout=WORKLOAD_TIMEOUT_S,
    )


def sh(script: str, shell: str = "bash") -> subprocess.CompletedProcess:
    return subprocess.run(
        [shell, "-c", script], check=True, capture_output=True, timeout=WORKLOAD_TIMEOUT_S
    )
