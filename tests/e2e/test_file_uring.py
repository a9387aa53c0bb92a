"""Files written and read through io_uring requests, which no read/write syscall carries,
captured end to end: a small program using the raw io_uring interface (as databases and
runtimes do, without liburing) writes a file with IORING_OP_WRITE, WRITEV and WRITE_FIXED and
reads it back with IORING_OP_READ; both artifacts must equal the file, byte for byte. The same
program sends a file through a socket pair with IORING_OP_SEND and SENDMSG and receives it with
RECV and RECVMSG: the sending socket's and the receiving socket's artifacts are the file. And it
copies a file through two pipes with SPLICE and TEE: the files' artifacts are read back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import WORKLOAD_TIMEOUT_S

pytestmark = pytest.mark.ebpf

PROGRAM = Path(__file__).resolve().parents[1] / "support" / "uring_copy.c"


def _build(workdir: Path) -> Path:
    exe = workdir / "uring_copy"
    clang = shutil.which("clang") or "clang"  # installed by make setup, for the BPF objects
    subprocess.run([clang, "-O2", "-o", str(exe), str(PROGRAM)], check=True, timeout=120)
    return exe


def test_io_uring_write_writev_write_fixed_and_read(tracecap, workdir: Path) -> None:
    exe = _build(workdir)
    src, dst = workdir / "in", workdir / "out" / "copied"
    dst.parent.mkdir()
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    run = tracecap("--capture", f"write={dst.parent}/*", "--capture", f"read={dst.parent}/*")
    proc = subprocess.Popen([str(exe), str(src), str(dst)])
    assert proc.wait(WORKLOAD_TIMEOUT_S) == 0
    run.stop()
    assert run.returncode == 0, run.stderr
    data = dst.read_bytes()
    assert data == src.read_bytes()
    for kind, syscalls in (
        ("write", ["io_uring_write", "io_uring_write_fixed", "io_uring_writev"]),
        ("read", ["io_uring_read"]),
    ):
        name = artifact_name(kind, dst)
        [rec] = [r for r in run.records(kind) if r["path"].endswith("/" + name)]
        assert run.artifact(name) == data, kind
        assert rec["complete"] is True and rec["missing"] == [], rec
        assert rec["syscalls"] == syscalls and rec["pids"] == [proc.pid], rec
        # the thread that completed the first request: the program's or an io-wq worker's
        assert rec["comm"] == "uring_copy" or rec["comm"].startswith("iou-wrk-"), rec


def test_io_uring_send_sendmsg_recv_and_recvmsg(tracecap, workdir: Path) -> None:
    exe = _build(workdir)
    src = workdir / "in"
    data = os.urandom(1024 * 1024 + 5)
    src.write_bytes(data)
    run = tracecap("--capture", "write:type=socket", "--capture", "read:type=socket")
    proc = subprocess.Popen([str(exe), "-s", str(src)])
    assert proc.wait(WORKLOAD_TIMEOUT_S) == 0
    run.stop()
    assert run.returncode == 0, run.stderr
    for kind, syscalls in (
        ("write", ["io_uring_send", "io_uring_sendmsg"]),
        ("read", ["io_uring_recv", "io_uring_recvmsg"]),
    ):
        [rec] = [r for r in run.records(kind) if r["pids"] == [proc.pid]]
        assert (run.out_dir / rec["path"]).read_bytes() == data, kind
        assert rec["complete"] is True and rec["missing"] == [], rec
        assert rec["syscalls"] == syscalls and rec["append"] is True, rec


def test_io_uring_splice_and_tee(tracecap, workdir: Path) -> None:
    """IORING_OP_SPLICE from a file into a pipe (read back from the file), IORING_OP_TEE into a
    second pipe, and IORING_OP_SPLICE from each pipe into a file (read back from that file)."""
    exe = _build(workdir)
    src, out = workdir / "src" / "in", workdir / "out"
    src.parent.mkdir()
    out.mkdir()
    data = os.urandom(300_001)
    src.write_bytes(data)
    run = tracecap("--capture", f"write={out}/*", "--capture", f"read={src.parent}/*")
    proc = subprocess.Popen([str(exe), "-p", str(src), str(out / "1"), str(out / "2")])
    assert proc.wait(WORKLOAD_TIMEOUT_S) == 0
    run.stop()
    assert run.returncode == 0, run.stderr
    for kind, path in (("write", out / "1"), ("write", out / "2"), ("read", src)):
        assert path.read_bytes() == data
        name = artifact_name(kind, path)
        [rec] = [r for r in run.records(kind) if r["path"].endswith("/" + name)]
        assert run.artifact(name) == data, (kind, path)
        assert rec["complete"] is True and rec["missing"] == [], rec
        assert rec["syscalls"] == ["io_uring_splice"] and rec["pids"] == [proc.pid], rec
        assert rec["readback"] == [[0, len(data)]], rec
