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
