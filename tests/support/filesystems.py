"""File systems made by e2e tests, on which stat reports another device than the kernel's
superblock (btrfs subvolumes) or the same one (overlayfs, as containers run): the identity
checks of exec and module capture must hold on both (collector/object_files.is_same_file)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: mkfs.btrfs refuses devices under 109 MiB (its minimum with the default profiles).
BTRFS_IMAGE_BYTES = 128 * 1024 * 1024


@contextmanager
def mounted(args: list[str], target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True, capture_output=True)


@contextmanager
def btrfs_subvolume(workdir: Path) -> Iterator[Path]:
    """A subvolume of a btrfs file system in a loop-mounted image made in ``workdir``."""
    image = workdir / "btrfs.img"
    with open(image, "wb") as f:
        f.truncate(BTRFS_IMAGE_BYTES)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    with mounted(["-o", "loop", str(image)], workdir / "btrfs") as top:
        subprocess.run(["btrfs", "subvolume", "create", str(top / "sub")], check=True,
                       capture_output=True)  # fmt: skip
        yield top / "sub"


@contextmanager
def overlay(workdir: Path, lower_files: dict[str, str | Path]) -> Iterator[Path]:
    """The merged directory of an overlayfs mount whose lower layer holds copies of
    ``lower_files`` (name: source)."""
    lower, upper, work = (workdir / name for name in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    for name, src in lower_files.items():
        shutil.copy(src, lower / name)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    with mounted(["-t", "overlay", "overlay", "-o", options], workdir / "merged") as merged:
        yield merged
