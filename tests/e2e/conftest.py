"""End-to-end harness: start the real pipeline (`tracecap run`, supervisord, collector, writers),
run a workload in a child process, stop the pipeline, then compare the artifacts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
            index = self.out_dir / "index.jsonl"
            lines = index.read_bytes().splitlines() if index.exists() else []
            self.index = [json.loads(line) for line in lines]
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


def _require_ebpf() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to load eBPF programs")
    if not shutil.which("tracecap"):
        pytest.skip("tracecap is not installed: run `make setup`")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("the kernel has no BTF (/sys/kernel/btf/vmlinux)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short, unique directory (path filters are limited to 50 characters)."""
    path = Path(tempfile.mkdtemp(prefix="tce-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tracecap(workdir: Path) -> Iterator:
    _require_ebpf()
    runs: list[Run] = []

    def start(*args: str, out_root: Path | None = None) -> Run:
        root = out_root or workdir / "cap"
        run_dir = Path(tempfile.mkdtemp(prefix="tcr-", dir="/run"))
        stdout_path, stderr_path = workdir / "run.stdout", workdir / "run.stderr"
        argv = ["tracecap", "run", "--run-dir", str(run_dir), "--capture", f"dir:{root}", *args]
        # A test may start several runs: only what this one writes to stderr counts.
        seen = stderr_path.stat().st_size if stderr_path.exists() else 0
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        run = Run(proc, workdir, root / "out", run_dir, stdout_path, stderr_path)
        runs.append(run)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"tracecap: ready" not in stderr_path.read_bytes()[seen:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                run.stop()
                pytest.fail(f"tracecap did not get ready (exit {proc.returncode}):\n{run.stderr}")
            time.sleep(0.05)
        return run

    yield start
    for run in runs:
        if run.returncode is None:
            run.stop()
        shutil.rmtree(run.run_dir, ignore_errors=True)
