"""The free-space floor (`--capture floor:`), end to end: on a small file system of its own, the
real file writer stops taking artifact data once the free space would fall below the floor, and
says so in the index with the floor it applied."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import artifact_name
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

MIB = 1 << 20
#: The collector's data chunk: the writer decides per chunk.
CHUNK = 32 << 10
FS_SIZE = 48 * MIB
FLOOR = 32 * MIB
BIG = 24 * MIB
#: Paced writes of 256 KiB: one 24 MiB write would overflow the 8 MiB kernel ring instead.
BIG_CODE = """
import random, time
data = random.Random(7).randbytes({size})
with open({path!r}, "wb", buffering=0) as f:
    for i in range(0, len(data), 256 << 10):
        f.write(data[i : i + (256 << 10)])
        time.sleep(0.005)
"""


@pytest.fixture
def small_fs(workdir: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, root's and 0755 (as tracecap requires of dir:)."""
    path = workdir / "fs"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tcfloor", str(path)],
        check=True,
    )
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_floor_keeps_free_space_on_the_output_file_system(
    tracecap, workdir: Path, small_fs: Path
) -> None:
    run = tracecap("--capture", "floor:32mb", "--capture", f"write={workdir}/w*", out_root=small_fs)
    big = workdir / "wbig"
    python(BIG_CODE.format(size=BIG, path=str(big)))
    big_path = f"host/{artifact_name('write', big)}"
    index_path = run.out_dir / "index.jsonl"
    deadline = time.monotonic() + 30
    while not index_path.exists() or big_path.encode() not in index_path.read_bytes():
        assert time.monotonic() < deadline, f"no record of the big file:\n{run.logs()}"
        time.sleep(0.1)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert "kernel ring buffer 0 records" in run.stderr, run.stderr

    refusing = [r for r in run.index if r["kind"] == "budget" and r["state"] == "refusing"]
    assert len(refusing) == 1, (run.index, run.stderr[-3000:])
    assert refusing[0]["writer"] == "file"
    assert refusing[0]["floor_bytes"] == FLOOR
    assert refusing[0]["limit_bytes"] is None
    assert refusing[0]["reason"].startswith(f"free space below {FLOOR} bytes (free ")
    kept = (run.out_dir / big_path).read_bytes()
    # what the floor leaves (48 - 32 MiB), less the index and directories, within a chunk
    assert 8 * MIB < len(kept) <= FS_SIZE - FLOOR + CHUNK, len(kept)
    assert kept == random.Random(7).randbytes(BIG)[: len(kept)]
    record = [r for r in run.index if r.get("path") == big_path][-1]
    assert record["complete"] is False
    # every byte written is present (compared above) or listed missing, once
    missing = sorted(record["missing"])
    assert missing[0][0] == len(kept) and missing[-1][1] == BIG, missing
    assert sum(e - s for s, e in missing) == BIG - len(kept), missing
    free = subprocess.run(
        ["df", "-B1", "--output=avail", str(small_fs)], capture_output=True, check=True
    )
    assert int(free.stdout.split()[-1]) >= FLOOR - CHUNK
