"""Files copied through pipes with vmsplice(2) and tee(2), captured end to end. No Debian program
here calls either (coreutils tee(1) copies with read and write), so a small C program in
tests/support (pipe_copy.c) makes the calls. vmsplice passes a user buffer: its bytes are the
pipe's write (or read) artifact. tee copies between two pipes, which hold nothing to read back:
its bytes are listed missing; the splice that empties the second pipe into a file is read back
from that file and named by it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import WORKLOAD_TIMEOUT_S

pytestmark = pytest.mark.ebpf

PROGRAM = Path(__file__).resolve().parents[1] / "support" / "pipe_copy.c"
#: One 512 KiB piece of pipe_copy, so that each destination is spliced into once (a file
#: written again after a splice from a pipe cannot be read back: see the README).
SIZE = 300_001


def _run(workdir: Path, *args: str) -> tuple[int, dict[str, int]]:
    """Build and run pipe_copy; its pid and the pipes' inodes it printed."""
    exe = workdir / "pipe_copy"
    clang = shutil.which("clang") or "clang"  # installed by make setup, for the BPF objects
    subprocess.run([clang, "-O2", "-o", str(exe), str(PROGRAM)], check=True, timeout=120)
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=WORKLOAD_TIMEOUT_S)
    assert proc.returncode == 0, out
    pipes = {name: int(ino) for name, ino in (line.split() for line in out.splitlines())}
    return proc.pid, pipes


def _one(run, kind: str, **match: object) -> dict:
    found = [r for r in run.records(kind) if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (kind, match, run.records(kind))
    return found[0]


def _check_file(run, path: Path, data: bytes) -> None:
    """``path``'s write artifact: spliced from a pipe, read back from the file, whole."""
    rec = _one(run, "write", inode=path.stat().st_ino)
    assert path.read_bytes() == data
    assert run.artifact(artifact_name("write", path)) == data
    assert rec["complete"] is True and rec["missing"] == [], rec
    assert rec["syscalls"] == ["splice"] and rec["readback"] == [[0, len(data)]], rec


def test_vmsplice_into_a_pipe_then_splice_into_a_file(tracecap, workdir: Path) -> None:
    src, dst = workdir / "in", workdir / "out"
    data = os.urandom(SIZE)
    src.write_bytes(data)
    run = tracecap("--scope", "comm=pipe_copy", "--capture", "write", "--capture", "read")
    pid, pipes = _run(workdir, "-v", str(src), str(dst))
    run.stop()
    assert run.returncode == 0, run.stderr
    _check_file(run, dst, data)
    # the pipe's writes: vmsplice from the program's memory, then write(2)
    rec = _one(run, "write", inode=pipes["pipe1"])
    assert (run.out_dir / rec["path"]).read_bytes() == data + data
    assert rec["complete"] is True and rec["append"] is True, rec
    assert sorted(rec["syscalls"]) == ["vmsplice", "write"] and rec["pids"] == [pid], rec
    assert "readback" not in rec, rec  # vmsplice's bytes came from its buffer
    # its reads: splice into the file (read back from the file), then vmsplice into memory
    rec = _one(run, "read", inode=pipes["pipe1"])
    assert (run.out_dir / rec["path"]).read_bytes() == data + data
    assert rec["complete"] is True, rec
    assert sorted(rec["syscalls"]) == ["splice", "vmsplice"], rec
    # in a stream, read-back bytes may follow bytes the process moved just after (README)
    assert sum(end - start for start, end in rec["readback"]) == SIZE, rec


def test_tee_between_pipes_then_splice_into_files(tracecap, workdir: Path) -> None:
    src, out1, out2 = workdir / "in", workdir / "out1", workdir / "out2"
    data = os.urandom(SIZE)
    src.write_bytes(data)
    run = tracecap("--scope", "comm=pipe_copy", "--capture", "write")
    _, pipes = _run(workdir, "-t", str(src), str(out1), str(out2))
    run.stop()
    assert run.returncode == 0, run.stderr
    _check_file(run, out1, data)
    _check_file(run, out2, data)  # from pipe 2, which only tee filled
    assert (run.out_dir / _one(run, "write", inode=pipes["pipe1"])["path"]).read_bytes() == data
    # tee's bytes: in no buffer and no regular file; written, and all listed missing
    rec = _one(run, "write", inode=pipes["pipe2"])
    assert rec["syscalls"] == ["tee"] and rec["complete"] is False, rec
    assert rec["missing"] == [[0, SIZE]] and "readback" not in rec, rec
