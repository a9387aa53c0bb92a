"""Where the bytes of an init_module image that the kernel could not read can be found (pure).

kmod's insmod and modprobe map the .ko file and, once finit_module has failed, pass that
mapping to init_module without touching it: its pages are not resident, and
bpf_probe_read_user, which cannot fault pages in, fails on them. Those bytes are the file's
(kernel records name the mapping: ``records.ModuleMapping``), so the collector reads them from
the file, unless the mapping is private and was written to: then a page that could not be read
may be a copied-on-write page that was swapped out, and the file is not its content.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from bpf import records
from collector.envelopes import Outgoing
from tracecap import bus

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


#: Images held at once waiting for their load's return value; one more lets the oldest go.
HELD_MAX = 8
#: Images let go unreturned whose return is still awaited, remembered (oldest forgotten first).
LET_GO_MAX = 64
#: ``ret`` of an image whose load had not returned (-EINPROGRESS), with ``error`` saying why.
UNRETURNED_RET = -errno.EINPROGRESS
STOPPED = "the load had not returned when the capture stopped"
CROWDED = f"more than {HELD_MAX} loads were in progress at once: this one's return was not awaited"


class HeldImages:
    """Images the kernel sent from its own buffer (bpf/module_kread.bpf.h), held until the load
    returns.

    The kernel's hook runs inside init_module/finit_module, so the image's event and bytes come
    before the syscall's return value, and the writer names and indexes an object by its first
    message. So every message of a held image is kept here (``take``) until the syscall's own
    event (``release``) gives the envelope its ``ret`` and the rest of the attempt; messages
    that come after the release (bytes still arriving) pass with that envelope. Pure: the
    collector passes every outgoing list through ``take``."""

    def __init__(self) -> None:
        self._held: dict[int, list[Outgoing]] = {}
        self._released: dict[int, dict[str, Any]] = {}
        # images let go unreturned (CROWDED) whose load may still return: its return then
        # finds its image published already, rather than nothing held (a second record)
        self._let_go: dict[int, None] = {}

    def hold(self, obj_id: int) -> list[Outgoing]:
        """Hold the messages of ``obj_id`` from now on; what an oldest image over HELD_MAX
        gives up."""
        self._held[obj_id] = []
        if len(self._held) <= HELD_MAX:
            return []
        return self._unreturned(next(iter(self._held)), CROWDED)

    def take(self, out: list[Outgoing]) -> list[Outgoing]:
        """``out`` less the held images' messages (kept), released ones' given their
        envelope."""
        if not self._held and not self._released:
            return out
        passed = []
        for msg in out:
            obj_id = msg.env.get("obj_id") if msg.topic == bus.TOPIC_MODULE else None
            if obj_id in self._held:
                self._held[obj_id].append(msg)
                continue
            fields = self._released.get(obj_id) if obj_id is not None else None
            if fields is not None:
                msg = Outgoing(msg.topic, msg.env | fields, msg.payload)
                if msg.env.get("last"):
                    del self._released[obj_id]
            passed.append(msg)
        return passed

    def release(self, obj_id: int, fields: dict[str, Any]) -> list[Outgoing] | None:
        """The held image's messages so far with ``fields`` (the attempt's envelope) over
        theirs; [] when the image went out before its load returned (``late``); None when
        ``obj_id`` is neither (its image's event never arrived)."""
        msgs = self._held.pop(obj_id, None)
        if msgs is None:
            if obj_id in self._let_go:
                del self._let_go[obj_id]
                return []
            return None
        if not any(m.env.get("last") for m in msgs):
            self._released[obj_id] = fields
        return [Outgoing(m.topic, m.env | fields, m.payload) for m in msgs]

    def late(self, obj_id: int) -> bool:
        """Whether ``obj_id``'s image went out unreturned because too many loads were held."""
        return obj_id in self._let_go

    def release_all(self) -> list[Outgoing]:
        """At a stop: every image still held, its load's return value unknown."""
        out = []
        while self._held:
            out += self._unreturned(next(iter(self._held)), STOPPED)
        return out

    def _unreturned(self, obj_id: int, why: str) -> list[Outgoing]:
        out = self.release(obj_id, {"ret": UNRETURNED_RET, "error": why}) or []
        if why == CROWDED:
            self._let_go[obj_id] = None
            while len(self._let_go) > LET_GO_MAX:
                del self._let_go[next(iter(self._let_go))]
        return out
