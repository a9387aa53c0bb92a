"""Where the bytes of an init_module image that the kernel could not read can be found (pure).

kmod's insmod and modprobe map the .ko file and, once finit_module has failed, pass that
mapping to init_module without touching it: its pages are not resident, and
bpf_probe_read_user, which cannot fault pages in, fails on them. Those bytes are the file's
(kernel records name the mapping: ``records.ModuleMapping``), so the collector reads them from
the file, unless the mapping is private and was written to: then a page that could not be read
may be a copied-on-write page that was swapped out, and the file is not its content.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from bpf import records

#: vm_pgoff counts pages of this size.
PAGE_SIZE = mmap.PAGESIZE

#: Why the file cannot stand in for a written private mapping.
WRITTEN_PRIVATE = (
    "the image lies in a private file mapping that was written to: pages that could not be "
    "read may hold copied-on-write bytes that are not the file's"
)


def fill_plan(
    lost: list[list[int]], addr: int, mapping: records.ModuleMapping
) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """Split an image's ``lost`` ranges (offsets in the image at ``addr``) into those the
    mapping covers, as (image start, image end, file offset), and the rest, which no file
    can give."""
    plan: list[tuple[int, int, int]] = []
    rest: list[list[int]] = []
    for start, end in lost:
        lo, hi = max(addr + start, mapping.start), min(addr + end, mapping.end)
        if lo >= hi:
            rest.append([start, end])
            continue
        if lo > addr + start:
            rest.append([start, lo - addr])
        plan.append((lo - addr, hi - addr, lo - mapping.start + mapping.pgoff * PAGE_SIZE))
        if hi < addr + end:
            rest.append([hi - addr, end])
    return plan, rest


def why_not_from_file(mapping: records.ModuleMapping) -> str:
    """Why the mapped file cannot give the bytes the kernel could not read ("" if it can)."""
    return WRITTEN_PRIVATE if mapping.written else ""


def file_candidates(
    pid: int, mapping: records.ModuleMapping, path: bytes, finit_path: bytes = b""
) -> list[str]:
    """Where to open the mapped file: the mapping itself while the process has it (the very
    file, even renamed or deleted), then the path the kernel named, then ``finit_path``, the
    file the same process's last finit_module named (kmod tries finit_module before it maps
    the file). That last one matters on overlayfs: a mapping there is of the layer's own file,
    whose path the kernel names inside overlayfs's private mount of the layer (``/m.ko``),
    which no process can reach, while finit_module's file is the overlay's (measured on 6.18:
    both paths had the same inode number; the identity check decides either way)."""
    candidates = [f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"]
    for name in (os.fsdecode(path), os.fsdecode(finit_path)):
        if name.startswith("/") and not name.startswith("/proc/") and name not in candidates:
            candidates.append(name)
    return candidates


def mapping_env(ev: records.ModuleEvent) -> dict[str, Any]:
    """The ``mapping`` envelope key of an init_module image that lies in a file mapping."""
    assert ev.mapping is not None
    m = ev.mapping
    return {
        "start": m.start,
        "end": m.end,
        "pgoff": m.pgoff,
        "shared": m.shared,
        "written": m.written,
        "dev": ev.dev,
        "inode": ev.inode,
        "ctime": ev.ctime,
        "mtime": ev.mtime,
        "size": ev.size,
        "path": ev.path,
    }
