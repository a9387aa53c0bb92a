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


def python_as(code: str, timeout: float = WORKLOAD_TIMEOUT_S, **creds: object) -> str:
    """Run ``code`` in a fresh interpreter with subprocess credentials (``user``, ``group``,
    ``extra_groups``), from ``/``; its stdout. A non-zero exit fails the test with its stderr."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        **creds,  # type: ignore[arg-type]
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
