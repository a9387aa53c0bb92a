"""End-to-end fixtures: start the real pipeline (`tracecap run`, supervisord, collector,
writers) for a test and stop it after; the helpers live in tests/support/pipeline.py."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.containers import cgroup2_root
from tests.support.pipeline import READY_TIMEOUT_S, Run
from tests.support.runtimes import (  # noqa: F401  (fixtures: real container runtimes)
    busybox_rootfs,
    containerd,
    docker,
    podman,
    runtime,
)


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


def _root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    with open("/proc/mounts") as f:
        root = cgroup2_root(f.read())
    if root is None:
        pytest.skip("cgroup2 is not mounted")
    return Path(root)


@pytest.fixture
def cgroup_root() -> Path:
    return _root()


@pytest.fixture
def make_cgroup(cgroup_root: Path) -> Iterator[Callable[[str], Path]]:
    """Create a cgroup (and the missing parents) at a path relative to the cgroup2 root; remove
    exactly what was created, deepest first, once the test is over (its processes gone)."""
    created: list[Path] = []

    def make(rel: str) -> Path:
        path = cgroup_root
        for part in rel.strip("/").split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                created.append(path)
        return path

    yield make
    leftovers = []
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        deadline = time.monotonic() + 10
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:  # EBUSY while the last task's exit is still being accounted
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    leftovers.append(f"{path}: {e}")
                    break
                time.sleep(0.05)
    assert not leftovers, leftovers
