"""Turn the kernel's object events and data chunks into bus messages (pure; clock passed in).

An object (a memory region, a module image, a BPF program) is one event followed by its bytes
in chunks. Messages carry ``obj_id``/``obj_off``/``obj_len``; the one with ``last`` ends the
object, and every byte that did not arrive is an explicit ``lost`` range, as for files. Memory
pages the kernel reports as never touched arrive as zeros, listed in the last message's
``zero`` ranges. A mem event without a dump (an alert, a repeat, a skipped dump) is an object
of no bytes: one message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpf import records
from collector.envelopes import Outgoing, context_env
from collector.module_images import mapping_env
from tracecap import bus

#: What ends an object instead of its plain last message: given that message's envelope and
#: the object's lost ranges, it returns the messages to send now (it may send more later).
Finisher = Callable[[dict[str, Any], list[list[int]]], list[Outgoing]]

#: Bytes gathered before an object's bytes are published as one message.
MAX_MESSAGE_PAYLOAD = 1024 * 1024
#: An object whose bytes have not all arrived after this long is closed, the rest lost.
OBJECT_TIMEOUT_NS = 2_000_000_000


def object_env(
    ev: records.MemEvent | records.ModuleEvent | records.BpfEvent,
    boot_to_epoch: int,
    container_id: str,
) -> tuple[bytes, dict[str, Any], int]:
    """(topic, envelope, object length) for an object event."""
    env = context_env(ev.hdr, boot_to_epoch, container_id)
    if isinstance(ev, records.MemEvent):
        env |= mem_fields(ev)
        return bus.TOPIC_MEM, env, ev.size if ev.dump == "sent" else 0
    if isinstance(ev, records.ModuleEvent):
        finit = ev.syscall == "finit_module"
        env |= {
            "syscall": ev.syscall,
            "ret": ev.ret,
            "params": ev.params,
            "dev": ev.dev if finit else 0,
            "inode": ev.inode if finit else 0,
            "path": ev.path if finit else b"",
        }
        env |= {"fd": ev.fd, "load_flags": ev.load_flags} if finit else {"addr": ev.addr}
        env["source"] = bus.MODULE_SOURCES[ev.syscall, bool(ev.kread)]
        if ev.mapping is not None:
            env["mapping"] = mapping_env(ev)
        return bus.TOPIC_MODULE, env, ev.length
    env |= {
        "prog_name": ev.prog_name,
        "prog_type": ev.prog_type,
        "insn_cnt": ev.insn_cnt,
        "ret": ev.ret,
        "prog_id": ev.prog_id,
    }
    return bus.TOPIC_BPF, env, ev.insn_cnt * 8


def mem_fields(ev: records.MemEvent) -> dict[str, Any]:
    """The mem-specific keys of a mem event's messages (bus.MEM_KEYS)."""
    return {
        "syscall": ev.syscall,
        "addr": ev.addr,
        "len": ev.length,
        "size": ev.size,
        "prot_before": ev.prot_before,
        "prot_after": ev.prot_after,
        "alert": ev.alert,
        "dump": ev.dump,
        "same_as": ev.same_as,
        "skipped_events": ev.skipped_events,
        "skipped_dumps": ev.skipped_dumps,
        "skipped_bytes": ev.skipped_bytes,
    }


def mem_skipped_env(
    skipped: records.MemSkipped, comm: bytes, now_epoch_ns: int, container_id: str
) -> dict[str, Any]:
    """The envelope that reports, at a stop, what a running process's mem allowances skipped
    that none of its events reported (``syscall`` "stop"; an object of no bytes)."""
    return {
        "ts": now_epoch_ns,
        "pid": skipped.tgid,
        "tid": skipped.tgid,
        "ppid": 0,
        "uid": skipped.uid,
        "comm": comm,
        "cgroup_id": skipped.cgroup_id,
        "container_id": container_id,
        "syscall": "stop",
        "addr": 0,
        "len": 0,
        "size": 0,
        "prot_before": 0,
        "prot_after": 0,
        "alert": "",
        "dump": "none",
        "same_as": 0,
        "skipped_events": skipped.skipped_events,
        "skipped_dumps": skipped.skipped_dumps,
        "skipped_bytes": skipped.skipped_bytes,
    }


@dataclass
class _PendingObject:
    """An object whose bytes are still arriving: ``captured`` is how many of its ``obj_len``
    bytes the kernel sends, ``buf`` (at most MAX_MESSAGE_PAYLOAD) the bytes since the last
    message, and ``lost`` every missing range, all sent with the object's last message."""

    topic: bytes
    env: dict[str, Any]
    obj_len: int
    captured: int
    started_ns: int
    finish: Finisher | None = None
    next_off: int = 0
    buf: bytearray = field(default_factory=bytearray)
    buf_off: int = 0
    lost: list[list[int]] = field(default_factory=list)
    zero: list[list[int]] = field(default_factory=list)


class ObjectAssembler:
    """Joins the memory, module and BPF objects' events and chunks (matched by ``obj_id``, the
    chunks' ``io_id``) into bus messages, one instance per collector. Each object ends in
    exactly one ``last`` message; one still incomplete after OBJECT_TIMEOUT_NS is ended there,
    the rest of its bytes lost."""

    def __init__(self) -> None:
        self._pending: dict[int, _PendingObject] = {}
        self.orphan_chunks = 0
        self.lost_bytes = 0

    def on_event(
        self,
        obj_id: int,
        topic: bytes,
        env: dict[str, Any],
        obj_len: int,
        captured: int,
        now_ns: int,
        finish: Finisher | None = None,
    ) -> list[Outgoing]:
        """Start an object; ``captured`` of its ``obj_len`` bytes will follow as chunks.
        ``finish``, if given, ends the object in place of its plain last message."""
        obj = _PendingObject(topic, dict(env, obj_id=obj_id, obj_len=obj_len), obj_len,
                             captured, now_ns, finish)  # fmt: skip
        if captured < obj_len:
            obj.lost.append([captured, obj_len])
            self.lost_bytes += obj_len - captured
        if captured == 0:
            return self._finish(obj)
        self._pending[obj_id] = obj
        return []

    def on_data(self, chunk: records.FileData, now_ns: int) -> list[Outgoing]:
        obj = self._pending.get(chunk.io_id)
        if obj is None:
            self.orphan_chunks += 1
            return []
        out: list[Outgoing] = []
        if chunk.io_off > obj.next_off:
            self._lose(obj, obj.next_off, chunk.io_off)
            out += self._flush(obj)
            obj.next_off = chunk.io_off
        if chunk.io_off == obj.next_off:
            if chunk.zero:
                self._zero(obj, chunk.io_off, chunk.want)
                if not obj.buf:
                    obj.buf_off = chunk.io_off
                obj.buf += bytes(chunk.want)
                obj.next_off += chunk.want
            elif chunk.unreadable or len(chunk.data) < chunk.want:
                out += self._flush(obj)
                self._lose(obj, chunk.io_off + len(chunk.data), chunk.io_off + chunk.want)
                obj.next_off = chunk.io_off + chunk.want
            else:
                if not obj.buf:
                    obj.buf_off = chunk.io_off
                obj.buf += chunk.data
                obj.next_off += len(chunk.data)
        if obj.next_off >= obj.captured:
            del self._pending[chunk.io_id]
            return out + self._finish(obj)
        if len(obj.buf) >= MAX_MESSAGE_PAYLOAD:
            out += self._flush(obj)
        return out

    def expire(self, now_ns: int, force: bool = False) -> list[Outgoing]:
        out: list[Outgoing] = []
        for obj_id, obj in list(self._pending.items()):
            if force or now_ns - obj.started_ns >= OBJECT_TIMEOUT_NS:
                self._lose(obj, obj.next_off, obj.captured)
                del self._pending[obj_id]
                out += self._finish(obj)
        return out

    @staticmethod
    def _zero(obj: _PendingObject, start: int, length: int) -> None:
        if obj.zero and obj.zero[-1][1] == start:
            obj.zero[-1][1] = start + length
        else:
            obj.zero.append([start, start + length])

    def _lose(self, obj: _PendingObject, start: int, end: int) -> None:
        if end > start:
            obj.lost.append([start, end])
            self.lost_bytes += end - start

    def _message(self, obj: _PendingObject, last: bool) -> Outgoing:
        env = dict(obj.env, obj_off=obj.buf_off if obj.buf else obj.next_off, last=last)
        if last and obj.lost:
            env["lost"] = sorted(obj.lost)
        if last and obj.zero:
            env["zero"] = obj.zero
        payload = bytes(obj.buf) if obj.buf else None
        obj.buf.clear()
        return Outgoing(obj.topic, env, payload)

    def _flush(self, obj: _PendingObject) -> list[Outgoing]:
        return [self._message(obj, last=False)] if obj.buf else []

    def _finish(self, obj: _PendingObject) -> list[Outgoing]:
        if obj.finish is None:
            return [self._message(obj, last=True)]
        out = self._flush(obj)
        return out + obj.finish(dict(obj.env, obj_off=obj.next_off, last=True), sorted(obj.lost))
