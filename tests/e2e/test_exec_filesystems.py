"""Exec capture of binaries on file systems whose stat reports another device than the kernel's
superblock does (btrfs: each subvolume's anonymous device) or the same (overlayfs, as
containers run them): every one gives a complete, byte-exact artifact."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import filesystems

pytestmark = pytest.mark.ebpf


@pytest.fixture
def btrfs_subvolume(workdir: Path) -> Iterator[Path]:
    with filesystems.btrfs_subvolume(workdir) as sub:
        yield sub


@pytest.fixture
def overlay(workdir: Path) -> Iterator[Path]:
    """An overlayfs mount whose lower layer holds ``lower-echo``."""
    with filesystems.overlay(workdir, {"lower-echo": "/bin/echo"}) as merged:
        yield merged


def _copy(src: str, dst: Path) -> Path:
    shutil.copy(src, dst)
    dst.chmod(0o755)
    return dst


def _kernel_dev(st: os.stat_result) -> int:
    return os.major(st.st_dev) << 20 | os.minor(st.st_dev)


def _captured(tracecap, binaries: list[Path]) -> list[dict]:
    """Run each binary twice under exec capture; the index line of each, in order."""
    run = tracecap("--capture", "exec")
    for binary in binaries:
        for _ in range(2):
            out = subprocess.run([binary, "hi"], check=True, capture_output=True).stdout
            assert out == b"hi\n"
    run.stop()
    found = []
    for binary in binaries:
        st = binary.stat()
        ours = [r for r in run.records("exec") if r["inode"] == st.st_ino and
                r["ctime"] == st.st_ctime_ns]  # fmt: skip
        assert len(ours) == 1, (binary, ours)
        record = ours[0]
        assert record["complete"] is True, record
        data = binary.read_bytes()
        assert (run.out_dir / record["path"]).read_bytes() == data
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        found.append(record)
    return found


def test_binaries_in_a_btrfs_subvolume_are_captured_whole(tracecap, btrfs_subvolume: Path):
    """stat reports the subvolume's anonymous device, not the superblock's s_dev the kernel
    sees: the identity check must hold all the same (collector/object_files.is_same_file)."""
    binary = _copy("/bin/echo", btrfs_subvolume / "btrfs-echo")
    top = _copy("/bin/echo", btrfs_subvolume.parent / "btrfs-top-echo")
    subvolume_dev = binary.stat().st_dev
    assert subvolume_dev != top.stat().st_dev  # each subvolume has its own anonymous device
    records = _captured(tracecap, [binary, top])
    # what makes this file system the case: the kernel's s_dev is neither stat's device
    assert {r["dev"] for r in records} == {records[0]["dev"]}
    assert records[0]["dev"] not in {_kernel_dev(binary.stat()), _kernel_dev(top.stat())}
    assert records[0]["argv"] == [str(binary), "hi"]


def test_binaries_on_overlayfs_are_captured_whole(tracecap, overlay: Path):
    """From the lower layer and from the upper one (a file made in the merged directory)."""
    lower = overlay / "lower-echo"
    upper = _copy("/bin/echo", overlay / "upper-echo")
    records = _captured(tracecap, [lower, upper])
    assert [r["argv"][0] for r in records] == [str(lower), str(upper)]
