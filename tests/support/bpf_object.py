"""The built BPF object for unit tests that read it (its BTF, its symbols): built by
``make -C bpf`` when a source is newer, with the tools found or the test skipped (failed in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BPF_DIR = ROOT / "bpf"
OBJECT = BPF_DIR / "tracecap.bpf.o"


def need(tool: str) -> str:
    """The tool's path; a missing tool skips the test, or fails it when CI is set."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def built_object() -> Path:
    """``bpf/tracecap.bpf.o``, rebuilt first when a source is newer (make decides)."""
    sources = [*BPF_DIR.glob("*.bpf.c"), *BPF_DIR.glob("*.h")]
    if not OBJECT.exists() or any(s.stat().st_mtime > OBJECT.stat().st_mtime for s in sources):
        need("clang")
        subprocess.run([need("make"), "-C", str(BPF_DIR)], check=True, capture_output=True,
                       timeout=600)  # fmt: skip
    assert OBJECT.exists(), f"make -C bpf did not produce {OBJECT}"
    return OBJECT
