"""Turn file-I/O ring-buffer records into bus messages (pure: no I/O, clock passed in).

The kernel sends one event per syscall, then its bytes in chunks. This joins them, merges
consecutive chunks into larger bus payloads, and turns every byte that did not arrive (ring
buffer full, unreadable user memory, the per-syscall loop cap) into an explicit ``lost`` range,
so that writers can say exactly which bytes of an artifact are missing.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import Any

from bpf import records
from collector import bus
from collector.envelopes import Outgoing, context_env

#: Bytes gathered from one syscall before they are published as one message.
MAX_MESSAGE_PAYLOAD = 256 * 1024
#: An io whose bytes have not all arrived after this long is closed with the rest marked lost.
IO_TIMEOUT_NS = 1_000_000_000


@dataclass
class _PendingIo:
    event: records.FileEvent
    base_env: dict[str, Any]
    started_ns: int
    next_off: int = 0  # io-relative offset of the next expected byte
    buf: bytearray = field(default_factory=bytearray)
    buf_off: int = 0  # io-relative offset of buf[0]


def display_path(ev: records.FileEvent) -> bytes:
    """Pipes and sockets have no name in the dentry tree; name them as /proc/PID/fd does."""
    if ev.path:
        return ev.path
    if stat.S_ISFIFO(ev.mode):
        return b"pipe:[%d]" % ev.inode
    if stat.S_ISSOCK(ev.mode):
        return b"socket:[%d]" % ev.inode
    return b""


#: io_ids of loss notices, above the kernel's.
NOTICE_IO_ID_BASE = 1 << 56


class FileAssembler:
    def __init__(self, boot_to_epoch_ns: int, container_of: Any = None) -> None:
        self._boot_to_epoch = boot_to_epoch_ns
        self._container_of = container_of or (lambda cgroup_id: "")
        self._pending: dict[int, _PendingIo] = {}
        self.orphan_chunks = 0
        self.lost_bytes = 0
        self._next_notice = NOTICE_IO_ID_BASE

    def on_dropped(self, drop: records.DroppedIo, now_ns: int) -> Outgoing:
        """A loss notice for syscalls the kernel could not even announce (ring buffer full).

        Who did them is unknown; the file and the span of offsets they touched are known, so
        the artifact is marked incomplete over that span rather than silently holding zeros.
        """
        self._next_notice += 1
        self.lost_bytes += drop.bytes
        lo, hi = (0, drop.bytes) if drop.append else (drop.lo, max(drop.hi, drop.lo + 1))
        env = {
            "ts": now_ns,
            "pid": 0,
            "tid": 0,
            "ppid": 0,
            "uid": 0,
            "comm": b"",
            "cgroup_id": drop.cgroup_id,
            "container_id": self._container_of(drop.cgroup_id),
            "syscall": "unknown",
            "fd": -1,
            "path": b"",
            "dev": drop.dev,
            "inode": drop.inode,
            "mode": 0,
            "io_id": self._next_notice,
            "io_len": hi - lo,
            "io_off": 0,
            "off": lo,
            "append": drop.append,
            "lost": [[lo, hi]],
            "lost_bytes": drop.bytes,
            "lost_ios": drop.ios,
        }
        topic = bus.TOPIC_FILE_WRITE if drop.direction == records.DIR_WRITE else bus.TOPIC_FILE_READ
        return Outgoing(topic, env, None)

    def on_event(self, ev: records.FileEvent, now_ns: int) -> list[Outgoing]:
        h = ev.hdr
        env = context_env(h, self._boot_to_epoch, self._container_of(h.cgroup_id)) | {
            "syscall": ev.syscall,
            "fd": ev.fd,
            "path": display_path(ev),
            "path_truncated": bool(ev.flags & records.EV_PATH_TRUNCATED),
            "dev": ev.dev,
            "inode": ev.inode,
            "generation": ev.generation,
            "mode": ev.mode,
            "io_id": ev.io_id,
            "io_len": ev.io_len,
            "append": ev.append,
        }
        self._pending[ev.io_id] = _PendingIo(ev, env, now_ns)
        return []

    def on_data(self, chunk: records.FileData, now_ns: int) -> list[Outgoing]:
        io = self._pending.get(chunk.io_id)
        if io is None:
            self.orphan_chunks += 1
            return []
        out: list[Outgoing] = []
        if chunk.io_off > io.next_off:  # the chunks in between were dropped by the kernel
            out += self._flush(io)
            out.append(self._lost(io, io.next_off, chunk.io_off))
            io.next_off = chunk.io_off
        if chunk.unreadable or len(chunk.data) < chunk.want:
            out += self._flush(io)
            end = chunk.io_off + chunk.want
            out.append(self._lost(io, chunk.io_off + len(chunk.data), end))
            io.next_off = end
        elif chunk.io_off == io.next_off:
            if not io.buf:
                io.buf_off = chunk.io_off
            io.buf += chunk.data
            io.next_off += len(chunk.data)
        if len(io.buf) >= MAX_MESSAGE_PAYLOAD:
            out += self._flush(io)
        if io.next_off >= io.event.io_len:
            out += self._flush(io)
            del self._pending[chunk.io_id]
        return out

    def expire(self, now_ns: int, force: bool = False) -> list[Outgoing]:
        """Close ios whose remaining bytes will not come (timeout, or shutdown with force)."""
        out: list[Outgoing] = []
        for io_id, io in list(self._pending.items()):
            if force or now_ns - io.started_ns >= IO_TIMEOUT_NS:
                out += self._flush(io)
                if io.next_off < io.event.io_len:
                    out.append(self._lost(io, io.next_off, io.event.io_len))
                del self._pending[io_id]
        return out

    def _topic(self, io: _PendingIo) -> bytes:
        if io.event.direction == records.DIR_WRITE:
            return bus.TOPIC_FILE_WRITE
        return bus.TOPIC_FILE_READ

    def _file_off(self, io: _PendingIo, io_off: int) -> int:
        return io_off if io.event.append else io.event.pos + io_off

    def _flush(self, io: _PendingIo) -> list[Outgoing]:
        if not io.buf:
            return []
        env = dict(io.base_env, io_off=io.buf_off, off=self._file_off(io, io.buf_off))
        payload = bytes(io.buf)
        io.buf.clear()
        return [Outgoing(self._topic(io), env, payload)]

    def _lost(self, io: _PendingIo, start: int, end: int) -> Outgoing:
        self.lost_bytes += end - start
        base = self._file_off(io, 0)
        env = dict(io.base_env, io_off=start, off=base + start, lost=[[base + start, base + end]])
        return Outgoing(self._topic(io), env, None)
