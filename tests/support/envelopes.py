"""Bus envelopes for tests: a valid envelope of every topic, to which a test applies its own
overrides (one place, so that a key the contract adds is added once).

Each builder returns what ``bus.decode`` accepts for its topic (``ENVELOPES`` maps every topic
in ``bus.TOPICS`` to its builder); ``message`` passes an envelope through the contract's
encoder and decoder, as a writer receives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracecap import bus

Env = dict[str, Any]


def process_keys() -> Env:
    """What every envelope carries: version, epoch, seq and the process (comm and cgroup
    differ per kind below)."""
    return {
        "v": bus.VERSION,
        "epoch": 7,
        "seq": 0,
        "ts": 1_000,
        "pid": 100,
        "tid": 101,
        "ppid": 1,
        "uid": 1000,
    }


def _build(base: Env, overrides: dict[str, Any]) -> Env:
    env = {**process_keys(), **base}
    env.update(overrides)
    return env


def file_env(**overrides: Any) -> Env:
    """``file.write.`` (and, with ``syscall="read"``, ``file.read.``): one whole syscall of
    ``io_len`` bytes at offset 0 of a regular file."""
    return _build(
        {
            "comm": b"bash",
            "cgroup_id": 5,
            "container_id": "",
            "syscall": "write",
            "fd": 3,
            "path": b"/tmp/target",
            "dev": 2049,
            "inode": 77,
            "mode": 0o100644,
            "io_id": 1,
            "io_len": 0,
            "io_off": 0,
            "off": 0,
            "append": False,
        },
        overrides,
    )


def file_read_env(**overrides: Any) -> Env:
    return file_env(**{"syscall": "read", **overrides})


def _object(comm: bytes, kind: Env, overrides: dict[str, Any]) -> Env:
    """An object of 4096 bytes sent in one message (obj_id 1, last)."""
    return _build(
        {
            "comm": comm,
            "cgroup_id": 5,
            "container_id": "",
            "obj_id": 1,
            "obj_off": 0,
            "obj_len": 4096,
            "last": True,
            **kind,
        },
        overrides,
    )


_EXEC = {
    "path": b"/tmp/payload",
    "argv": [b"/tmp/payload", b"-x"],
    "dev": 2049,
    "inode": 77,
    "ctime": 1_700_000_000_000_000_000,
    "mode": 0o100755,
    "memfd": False,
}


def exec_env(**overrides: Any) -> Env:
    """``exec.``: a binary /tmp/payload executed as ``/tmp/payload -x``."""
    return _object(b"dropper", _EXEC, overrides)


def mem_env(**overrides: Any) -> Env:
    """``mem.``: a page made executable after being writable (rw- to r-x), its bytes sent."""
    kind = {"syscall": "mprotect", "addr": 0x7F0000000000, "len": 4096, "size": 4096,
            "prot_before": 3, "prot_after": 5, "alert": "Protection changed from W to E!",
            "dump": "sent", "same_as": 0, "skipped_events": 0, "skipped_dumps": 0,
            "skipped_bytes": 0}  # fmt: skip
    return _object(b"unpacker", kind, overrides)


def module_env(**overrides: Any) -> Env:
    """``module.``: an init_module from memory that failed with ENOSYS."""
    kind = {"syscall": "init_module", "ret": -38, "params": b"", "dev": 0, "inode": 0,
            "path": b""}  # fmt: skip
    return _object(b"insmod", kind, overrides)


def bpf_env(**overrides: Any) -> Env:
    """``bpf.``: a two-instruction socket filter named probe, loaded as fd 5."""
    kind = {"prog_name": b"probe", "prog_type": 1, "insn_cnt": 2, "ret": 5}
    return _object(b"loader", kind, overrides)


def packet_env(**overrides: Any) -> Env:
    """``net.packet.``: an egress IPv4 packet of ping's; ``orig_len`` should be the payload's
    length (0 here, for an empty payload)."""
    return _build(
        {
            "ts": 1_700_000_000_123_456_789,
            "tid": 100,
            "comm": b"ping",
            "cgroup_id": 42,
            "container_id": "",
            "direction": "egress",
            "ifindex": 1,
            "orig_len": 0,
            "cookie": 9,
            "start_time": 1_699_999_999_000_000_000,
            "protocols": ["net_packet_ipv4"],
        },
        overrides,
    )


def packet_batch_env(**overrides: Any) -> Env:
    """``net.packets.``: a batch with ``packet_env``'s owner as its one context and no packet
    (a test gives ``packets`` rows and the payload that holds their bytes)."""
    context = {key: packet_env()[key] for key in bus.CONTEXT_KEYS}
    nobody = {"pid": 0, "tid": 0, "ppid": 0, "uid": 0, "comm": b"", "cgroup_id": 0}
    return _build(
        {"ts": 1_700_000_000_123_456_789, **nobody, "container_id": "", "contexts": [context],
         "packets": []},
        overrides,
    )  # fmt: skip


def proc_env(**overrides: Any) -> Env:
    """``proc.``: the exec event every execution publishes (the exec keys and ``event``)."""
    return _build(
        {"comm": b"dropper", "cgroup_id": 5, "container_id": "", **_EXEC, "event": "exec"},
        overrides,
    )


def fork_env(**overrides: Any) -> Env:
    """``proc.`` fork: the parent's context, the child's pid and start."""
    own = {"child_pid": 4243, "child_ns_pid": 43, "child_start": 1_700_000_000_000_000_123}
    return _build({"comm": b"sh", "cgroup_id": 5, "container_id": "", "event": "fork", **own},
                  overrides)  # fmt: skip


def exit_env(**overrides: Any) -> Env:
    """``proc.`` exit of a process that called exit(3)."""
    own = {"event": "exit", "exit_code": 3, "signal": 0, "wait_status": 3 << 8}
    return _build({"comm": b"sh", "cgroup_id": 5, "container_id": "", **own}, overrides)


def stats_env(**overrides: Any) -> Env:
    """``stats.``: the collector's periodic counters, about the collector's own process."""
    return _build(
        {
            "comm": b"tracecap",
            "cgroup_id": 0,
            "container_id": "",
            "state": "ready",
            "uptime_s": 1.0,
            "kernel": {},
            "kernel_drops_per_cpu": {},
            "collector": {},
        },
        overrides,
    )


#: The builder of a valid envelope for every topic of the contract.
ENVELOPES: dict[bytes, Callable[..., Env]] = {
    bus.TOPIC_FILE_WRITE: file_env,
    bus.TOPIC_FILE_READ: file_read_env,
    bus.TOPIC_EXEC: exec_env,
    bus.TOPIC_MEM: mem_env,
    bus.TOPIC_MODULE: module_env,
    bus.TOPIC_BPF: bpf_env,
    bus.TOPIC_NET_PACKET: packet_env,
    bus.TOPIC_NET_PACKETS: packet_batch_env,
    bus.TOPIC_PROC: proc_env,
    bus.TOPIC_STATS: stats_env,
}


def message(topic: bytes, env: Env, payload: bytes | None = None) -> bus.Message:
    """A message as a writer receives it: encoded, then decoded (and checked) by the contract."""
    return bus.decode(bus.encode(topic, env, payload))
