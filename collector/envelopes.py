"""What every assembler produces: a bus message to publish, and the part of its envelope that
says which process did it (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bpf import records


@dataclass(frozen=True)
class Outgoing:
    """One bus message to publish; the publisher adds v, epoch and seq. A bytearray payload is
    handed over: nothing may change it afterwards (large frames are sent without a copy)."""

    topic: bytes
    env: dict[str, Any]
    payload: bytes | bytearray | None


def context_env(h: records.Header, boot_to_epoch: int, container_id: str) -> dict[str, Any]:
    """The common envelope keys for an event's process (host ids, namespace ids, cgroup)."""
    return {
        "ts": h.ts + boot_to_epoch,
        "cpu": h.cpu,
        "pid": h.pid,
        "tid": h.tid,
        "ppid": h.ppid,
        "uid": h.uid,
        "ns_pid": h.ns_pid,
        "ns_tid": h.ns_tid,
        "ns_ppid": h.ns_ppid,
        "comm": h.comm,
        "cgroup_id": h.cgroup_id,
        "container_id": container_id,
        "mnt_ns": h.mnt_ns,
        "pid_ns": h.pid_ns,
        "thread_start": h.thread_start + boot_to_epoch if h.thread_start else 0,
    }


def proc_env(ev: records.ProcEvent, boot_to_epoch: int, container_id: str) -> dict[str, Any]:
    """The ``proc.`` envelope of a fork (the parent's context; ``child_*`` the new process,
    ``child_start`` ns since the epoch) or of a process exit (its last thread's context;
    ``exit_code`` and ``signal`` from the wait status, which ``wait_status`` keeps whole)."""
    env = context_env(ev.hdr, boot_to_epoch, container_id) | {"event": ev.event}
    if ev.event == "fork":
        start = ev.child_start + boot_to_epoch if ev.child_start else 0
        return env | {"child_pid": ev.child_pid, "child_ns_pid": ev.child_ns_pid,
                      "child_start": start}  # fmt: skip
    status = ev.exit_code
    return env | {"wait_status": status, "exit_code": (status >> 8) & 0xFF,
                  "signal": status & 0x7F}  # fmt: skip
