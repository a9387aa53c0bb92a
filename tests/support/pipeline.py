"""The real pipeline as tests see it: a started `tracecap run`, its artifacts and index, and the
names the kernel gives files (for end-to-end tests and the benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.writer_harness import read_index

READY_TIMEOUT_S = 90


def kernel_dev(st_dev: int) -> int:
    """The kernel's s_dev (MAJOR << 20 | MINOR), as artifact names print it."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def tracecap_program_ids() -> set[int]:
    """Ids of the BPF programs tracecap has loaded (their names start with tc_)."""
    shown = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True)
    return {p["id"] for p in json.loads(shown.stdout) if p.get("name", "").startswith("tc_")}


def artifact_name(kind: str, path: str | Path) -> str:
    st = os.stat(path)
    return f"{kind}.dev-{kernel_dev(st.st_dev)}.inode-{st.st_ino}"


@dataclass
class Run:
    proc: subprocess.Popen
    workdir: Path
    out_dir: Path
    run_dir: Path
    stdout_path: Path
    stderr_path: Path
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    index: list[dict] = field(default_factory=list)

    def stop(self, timeout: float = 90) -> Run:
        if self.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # every tracecap process of this run prints its threads' stacks to its log
                subprocess.run(
                    ["pkill", "-USR1", "-f", "--", f"--run-dir {self.run_dir}"], check=False
                )
                time.sleep(1)
                logs = self.logs()
                self.proc.kill()
                self.returncode = self.proc.wait(30)
                pytest.fail(f"tracecap run did not stop within {timeout:.0f} s\n{logs}")
            self.stdout = self.stdout_path.read_text(errors="replace")
            self.stderr = self.stderr_path.read_text(errors="replace")
            self.index = read_index(self.out_dir) if self.out_dir.is_dir() else []
        return self

    def logs(self, tail: int = 4000) -> str:
        """The end of every log of the run and of tracecap's stderr, for a failure message."""
        parts = []
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            sig = [ln for ln in status.splitlines() if ln.startswith(("Sig", "ShdPnd", "State"))]
            parts.append("--- tracecap run: " + ", ".join(sig))
        for path in [self.stderr_path, *sorted(self.run_dir.glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def artifact(self, name: str, container: str = "host") -> bytes:
        return (self.out_dir / container / name).read_bytes()

    def records(self, kind: str) -> list[dict]:
        """The current index line of each artifact of ``kind`` (an artifact that changes after
        its line was written gets a later line: the last one is current)."""
        current: dict[object, dict] = {}
        for r in self.index:
            if r.get("kind") == kind:
                current[r.get("path") or id(r)] = r
        return list(current.values())


def written_files(
    run: Run, wdir: Path, count: int, size: int, seed: int
) -> Iterator[tuple[bytes, dict | None, bytes]]:
    """What write capture made of ``wdir``/f0 ... f<count - 1>, written in turn with
    ``size`` bytes of random.Random(``seed``).randbytes each (the small-file workloads): per
    file its bytes, its current index record (None without one) and its artifact's bytes (b""
    when there is none)."""
    rng = random.Random(seed)
    by_path = {r["path"]: r for r in run.records("write")}
    for i in range(count):
        data = rng.randbytes(size)
        name = artifact_name("write", wdir / f"f{i}")
        record = by_path.get(f"host/{name}")
        stored = run.out_dir / "host" / name
        artifact = stored.read_bytes() if record is not None and stored.exists() else b""
        yield data, record, artifact


#: The summary's counts of whole messages lost: a kernel ring record or a bus message may
#: have been a file's only one, so such a file has no line at all.
_WHOLE_MESSAGE_LOSSES = (r"kernel ring buffer (\d+) records", r"bus gaps (\d+) messages")


def whole_messages_lost(stderr: str) -> int:
    """Kernel ring records and bus messages lost, as `tracecap run`'s summary counts them."""
    return sum(int(m.group(1)) for p in _WHOLE_MESSAGE_LOSSES if (m := re.search(p, stderr)))


def hex64() -> str:
    return secrets.token_hex(32)


SUPERVISORCTL = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
#: How long supervisord may take to bring a killed writer back (it restarts at once).
RESTART_TIMEOUT_S = 15

T = TypeVar("T")


def ctl(run: Run, *args: str) -> subprocess.CompletedProcess:
    """`supervisorctl` against the run's own supervisord."""
    return subprocess.run(
        [SUPERVISORCTL, "-c", str(run.run_dir / "supervisord.conf"), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def pid_of(run: Run, program: str) -> int:
    """The program's pid as supervisord reports it (0 when it is not running)."""
    out = ctl(run, "pid", program).stdout.strip()
    return int(out) if out.isdigit() else 0


def wait_until(what: str, check: Callable[[], T], timeout: float) -> T:
    """``check()``'s first true value, polled; the test fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
