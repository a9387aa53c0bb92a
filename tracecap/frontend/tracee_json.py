"""Events as Tracee prints them with ``--output json``, so that existing consumers keep working."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from tracecap import bus, protocols
from tracecap.dns_streams import DnsReader
from tracecap.text import text_field

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
    # transfers between files: a write of the destination (file.write.) and a read of the
    # source (file.read., see _TRANSFERS), as Tracee's vfs_write and vfs_read would have it
    "copy_file_range": "vfs_write",
    "sendfile": "vfs_write",
    "splice": "vfs_write",
    "io_uring_write": "vfs_write",
    "io_uring_writev": "vfs_writev",
    "io_uring_write_fixed": "vfs_write",
    "io_uring_read": "vfs_read",
    "io_uring_readv": "vfs_readv",
    "io_uring_read_fixed": "vfs_read",
}
_TRANSFERS = frozenset({"copy_file_range", "sendfile", "splice"})
_HOSTNAME = socket.gethostname()


def _context(env: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "timestamp": env["ts"],
        # as the process's own pid namespace numbers it; the host's numbers follow
        "processId": env.get("ns_pid") or env["pid"],
        "threadId": env.get("ns_tid") or env["tid"],
        "parentProcessId": env.get("ns_ppid", env["ppid"]),
        "hostProcessId": env["pid"],
        "hostThreadId": env["tid"],
        "hostParentProcessId": env["ppid"],
        "userId": env["uid"],
        "processName": text_field(env["comm"]),
        "hostName": _HOSTNAME,
        "cgroupId": env["cgroup_id"],
        "containerId": env["container_id"],
        "eventName": name,
    }


def file_event(env: dict[str, Any], topic: bytes = bus.TOPIC_FILE_WRITE) -> dict[str, Any] | None:
    """The event for the first message of a transfer (even one whose bytes were lost); None for
    its later messages and for the collector's ``extent`` announcements, which are no
    transfer. A transfer is one syscall or a run of consecutive ones (``syscalls``); ``count``
    is its byte total."""
    if env.get("io_off") != 0 or "extent" in env:
        return None
    name = _EVENT_NAMES.get(env["syscall"], env["syscall"])
    if topic == bus.TOPIC_FILE_READ and env["syscall"] in _TRANSFERS:
        name = "vfs_read"
    args = [
        {"name": "pathname", "type": "const char*", "value": text_field(env["path"])},
        {"name": "dev", "type": "dev_t", "value": env["dev"]},
        {"name": "inode", "type": "unsigned long", "value": env["inode"]},
        {"name": "count", "type": "size_t", "value": env["io_len"]},
        {"name": "pos", "type": "off_t", "value": env["off"]},
        {"name": "syscalls", "type": "unsigned int", "value": env.get("io_count", 1)},
    ]
    return dict(
        _context(env, name),
        syscall=env["syscall"],
        returnValue=env["io_len"],
        argsNum=len(args),
        args=args,
    )


def _arg(name: str, typ: str, value: Any) -> dict[str, Any]:
    return {"name": name, "type": typ, "value": value}


def _event(env: dict[str, Any], name: str, args: list[dict[str, Any]], **extra: Any) -> dict:
    return dict(_context(env, name), **extra, argsNum=len(args), args=args)


def exec_event(env: dict[str, Any]) -> dict[str, Any]:
    """Tracee's sched_process_exec. ``pathname`` and its identity are the executed file (the
    interpreter of a #! script, as Tracee has it), ``cmdpath`` the name it was run by (the
    script), ``interp`` what the #! line named (else the name again, as the kernel's
    bprm->interp). ``interpreter_*`` name the #! interpreter when there is one and are empty
    otherwise: Tracee fills them with the ELF program interpreter (ld.so), which tracecap does
    not record."""
    path = env["path"]
    cmdpath = env.get("cmdpath", path)
    script = env.get("interp") is not None
    return _event(env, "sched_process_exec", [
        _arg("cmdpath", "const char*", text_field(cmdpath)),
        _arg("pathname", "const char*", text_field(path)),
        _arg("dev", "dev_t", env["dev"]),
        _arg("inode", "unsigned long", env["inode"]),
        _arg("ctime", "unsigned long", env["ctime"]),
        _arg("inode_mode", "umode_t", env["mode"]),
        _arg("interpreter_pathname", "const char*", text_field(path) if script else ""),
        _arg("interpreter_dev", "dev_t", env["dev"] if script else 0),
        _arg("interpreter_inode", "unsigned long", env["inode"] if script else 0),
        _arg("interpreter_ctime", "unsigned long", env["ctime"] if script else 0),
        _arg("argv", "const char**", [text_field(a) for a in env["argv"]]),
        _arg("interp", "const char*", text_field(env.get("interp") or cmdpath)),
    ])  # fmt: skip


#: Tracee's names of PROT_* bits, in the order its ParseMmapProt joins them.
_PROT_NAMES = ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"))


def tracee_prot(prot: int) -> str:
    """PROT_* bits as Tracee prints them: ``PROT_READ|PROT_EXEC``, ``PROT_NONE`` for none."""
    return "|".join(name for bit, name in _PROT_NAMES if prot & bit) or "PROT_NONE"


def mem_event(env: dict[str, Any]) -> dict[str, Any] | None:
    """Tracee's mem_prot_alert; None for a mem message that is no alert (a region dumped when
    it was unmapped or its process exited, a report of what the budget skipped)."""
    if not env["alert"]:
        return None
    return _event(env, "mem_prot_alert", [
        _arg("alert", "string", env["alert"]),
        _arg("addr", "void*", hex(env["addr"])),
        _arg("len", "size_t", env["len"]),
        _arg("prot", "string", tracee_prot(env["prot_after"])),
        _arg("prev_prot", "string", tracee_prot(env["prot_before"])),
    ], syscall=env["syscall"])  # fmt: skip


def module_event(env: dict[str, Any]) -> dict[str, Any]:
    args = [_arg("param_values", "const char*", text_field(env["params"]))]
    if env["syscall"] == "finit_module":
        args += [
            _arg("fd", "int", env.get("fd", -1)),
            _arg("pathname", "const char*", text_field(env["path"])),
            _arg("dev", "dev_t", env["dev"]),
            _arg("inode", "unsigned long", env["inode"]),
        ]
    else:
        args.append(_arg("len", "unsigned long", env["obj_len"]))
    return _event(env, env["syscall"], args, syscall=env["syscall"], returnValue=env["ret"])


def bpf_event(env: dict[str, Any]) -> dict[str, Any]:
    return _event(env, "security_bpf_prog", [
        _arg("prog_type", "int", env["prog_type"]),
        _arg("prog_name", "const char*", text_field(env["prog_name"])),
        _arg("insn_cnt", "u32", env["insn_cnt"]),
        _arg("load", "bool", True),
    ], syscall="bpf", returnValue=env["ret"])  # fmt: skip


def _addresses(ip: Any) -> tuple[str, str]:
    return str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst))


def packet_events(
    env: dict[str, Any], payload: bytes, wanted: tuple[str, ...], dns: DnsReader
) -> list[dict]:
    """Tracee's net_packet_* events for one packet: one per selected protocol it matches, and
    for DNS one per message the packet carries or completes (none for a TCP segment without
    one). ``dns`` follows TCP flows: a segment of a followed flow counts even when the collector
    did not classify it as DNS (the middle of a split message on a port other than 53)."""
    protocols_ = env["protocols"]
    names = [f"net_packet_{p}" for p in protocols_ if f"net_packet_{p}" in wanted]
    follow = "net_packet_dns" in wanted and "dns" not in protocols_ and "tcp" in protocols_
    if not names and not follow:
        return []
    ip, l4 = protocols.l4_of(payload)
    meta: dict[str, Any] = {
        "direction": env["direction"],
        "packetLen": env["orig_len"],
        "ifindex": env["ifindex"],
    }
    if ip is not None:
        meta["src"], meta["dst"] = _addresses(ip)
    if l4 is not None and hasattr(l4, "sport"):
        meta["srcPort"], meta["dstPort"] = l4.sport, l4.dport
    if follow:
        names.append("net_packet_dns")
    out = []
    for name in names:
        args = [_arg("metadata", "trace.PacketMetadata", meta)]
        if name == "net_packet_dns":
            if ip is None or not hasattr(l4, "sport"):
                continue
            side = (env["direction"], env["ifindex"], ip.src, ip.dst)
            missing = max(0, env["orig_len"] - len(payload))
            found = dns.messages(side, l4, missing, tagged=not follow, context=(env, args))
            for (its_env, its_args), proto in found:
                dns_arg = _arg("proto_dns", "trace.ProtoDNS", proto)
                out.append(_event(its_env, name, [*its_args, dns_arg]))
            continue
        if name == "net_packet_http" and l4 is not None:
            args.append(_arg("proto_http", "trace.ProtoHTTP", protocols.http_summary(l4)))
        out.append(_event(env, name, args))
    return out


_OBJECT_EVENTS: dict[bytes, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    bus.TOPIC_MEM: mem_event,
    bus.TOPIC_MODULE: module_event,
    bus.TOPIC_BPF: bpf_event,
}


def event_for(msg: bus.Message, wanted: tuple[str, ...]) -> dict[str, Any] | None:
    """The Tracee-shaped event for a file or process message, or None (not an event, or not
    selected). Object messages need EventPrinter, which remembers which objects it printed."""
    if msg.topic in (bus.TOPIC_FILE_WRITE, bus.TOPIC_FILE_READ):
        event = file_event(msg.env, msg.topic)
    elif msg.topic == bus.TOPIC_PROC and msg.env.get("event") == "exec":
        event = exec_event(msg.env)
    else:
        return None
    if event is None or (wanted and event["eventName"] not in wanted):
        return None
    return event


class EventPrinter:
    """One event per object (a region, module or program travels as several messages)."""

    def __init__(self, remember: int = 4096) -> None:
        self._printed: dict[tuple[int, int], None] = {}
        self._remember = remember
        self.dns = DnsReader()

    def events_for(self, msg: bus.Message, wanted: tuple[str, ...]) -> list[dict[str, Any]]:
        if msg.topic == bus.TOPIC_NET_PACKET:
            return packet_events(msg.env, msg.payload, wanted, self.dns)
        event = self.event_for(msg, wanted)
        return [event] if event is not None else []

    def event_for(self, msg: bus.Message, wanted: tuple[str, ...]) -> dict[str, Any] | None:
        make = _OBJECT_EVENTS.get(msg.topic)
        if make is None:
            return event_for(msg, wanted)
        key = (msg.env["epoch"], msg.env["obj_id"])
        if key in self._printed:
            return None
        self._printed[key] = None
        if len(self._printed) > self._remember:
            del self._printed[next(iter(self._printed))]
        event = make(msg.env)
        if event is None or (wanted and event["eventName"] not in wanted):
            return None
        return event
