"""Events as Tracee prints them with ``--output json``, so that existing consumers keep working."""

from __future__ import annotations

import socket
from typing import Any

from collector import bus

_EVENT_NAMES = {
    "write": "vfs_write",
    "pwrite64": "vfs_write",
    "writev": "vfs_writev",
    "pwritev": "vfs_writev",
    "pwritev2": "vfs_writev",
    "read": "vfs_read",
    "pread64": "vfs_read",
    "readv": "vfs_readv",
    "preadv": "vfs_readv",
    "preadv2": "vfs_readv",
}
_HOSTNAME = socket.gethostname()


def text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _context(env: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "timestamp": env["ts"],
        "processId": env["pid"],
        "threadId": env["tid"],
        "parentProcessId": env["ppid"],
        "hostProcessId": env["pid"],
        "hostThreadId": env["tid"],
        "hostParentProcessId": env["ppid"],
        "userId": env["uid"],
        "processName": text(env["comm"]),
        "hostName": _HOSTNAME,
        "cgroupId": env["cgroup_id"],
        "containerId": env["container_id"],
        "eventName": name,
    }


def file_event(env: dict[str, Any]) -> dict[str, Any] | None:
    """The event for the first message of a syscall's transfer (even one whose bytes were lost);
    None for its later messages."""
    if env.get("io_off") != 0:
        return None
    name = _EVENT_NAMES.get(env["syscall"], env["syscall"])
    args = [
        {"name": "pathname", "type": "const char*", "value": text(env["path"])},
        {"name": "dev", "type": "dev_t", "value": env["dev"]},
        {"name": "inode", "type": "unsigned long", "value": env["inode"]},
        {"name": "count", "type": "size_t", "value": env["io_len"]},
        {"name": "pos", "type": "off_t", "value": env["off"]},
    ]
    return dict(
        _context(env, name),
        syscall=env["syscall"],
        returnValue=env["io_len"],
        argsNum=len(args),
        args=args,
    )


def event_for(msg: bus.Message, wanted: tuple[str, ...]) -> dict[str, Any] | None:
    """The Tracee-shaped event for a bus message, or None (not an event, or not selected)."""
    if msg.topic in (bus.TOPIC_FILE_WRITE, bus.TOPIC_FILE_READ):
        event = file_event(msg.env)
    else:
        return None
    if event is None or (wanted and event["eventName"] not in wanted):
        return None
    return event
