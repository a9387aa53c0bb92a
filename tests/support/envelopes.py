"""Bus envelopes the writers' unit tests build on: a valid message of each kind, to which a
test applies its own overrides (one place, so that a new required key is added once)."""

from __future__ import annotations

from typing import Any

from tracecap import bus


def process_keys() -> dict[str, Any]:
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


def file_env(**overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        **process_keys(),
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
    }
    env.update(overrides)
    return env


def mem_env(**overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        **process_keys(),
        "comm": b"unpacker",
        "cgroup_id": 5,
        "container_id": "",
        "obj_id": 1,
        "obj_off": 0,
        "obj_len": 4096,
        "last": True,
        "syscall": "mprotect",
        "addr": 0x7F0000000000,
        "len": 4096,
        "prot_before": 3,
        "prot_after": 5,
    }
    env.update(overrides)
    return env
