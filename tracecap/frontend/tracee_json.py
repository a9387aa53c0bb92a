"""Events as Tracee v0.17 prints them with ``--output json`` (and ``option:parse-arguments``),
so that existing parsers, jq filters and SIEM mappings keep working.

Every event follows its declaration in ``tracecap.schemas``: the builders below give values in
the declared order, ``_event`` checks the names against it, and the envelope has every
``trace.Event`` field. File I/O is one event per syscall, as Tracee prints it, even where the
collector merged a run of syscalls into one bus message (their ``ios``); with ``--output
option:merged-io`` a run is one event whose ``count`` and ``returnValue`` are its byte total.
"""

from __future__ import annotations

import ipaddress
import socket
import stat
from collections.abc import Callable
from typing import Any

import dpkt

from tracecap import bus, protocols
from tracecap.bpf_helpers import helpers_used
from tracecap.dns_streams import DnsReader
from tracecap.kinds import PROCESS_EVENTS
from tracecap.schemas import SCHEMAS
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
    # source (file.read., see _READ_NAMES), as Tracee's vfs_write and vfs_read would have it
    "copy_file_range": "vfs_write",
    "sendfile": "vfs_write",
    "splice": "vfs_write",
    "io_uring_write": "vfs_write",
    "io_uring_writev": "vfs_writev",
    "io_uring_write_fixed": "vfs_write",
    "io_uring_read": "vfs_read",
    "io_uring_readv": "vfs_readv",
    "io_uring_read_fixed": "vfs_read",
    # socket calls never reach Tracee's vfs_* hooks; these are the events that carry the
    # same thing (bytes of one buffer, or of an iovec array) for a tracecap capture
    "sendto": "vfs_write",
    "sendmsg": "vfs_writev",
    "recvfrom": "vfs_read",
    "recvmsg": "vfs_readv",
    "io_uring_send": "vfs_write",
    "io_uring_sendmsg": "vfs_writev",
    "io_uring_recv": "vfs_read",
    "io_uring_recvmsg": "vfs_readv",
    "sendmmsg": "vfs_writev",
    "recvmmsg": "vfs_readv",
    # vmsplice: user memory into a pipe (or, on the read end, out of it)
    "vmsplice": "vfs_writev",
    "tee": "vfs_write",
    "io_uring_splice": "vfs_write",
    "io_uring_tee": "vfs_write",
    # a shared file mapping's dirty pages, at what sent them (bpf/mappings.bpf.h): Tracee's
    # vfs_* hooks never see these stores; the event that carries the same thing is a write
    "msync": "vfs_write",
    "munmap": "vfs_write",
    "exit": "vfs_write",
}
_TRANSFERS = frozenset(
    {"copy_file_range", "sendfile", "splice", "tee", "io_uring_splice", "io_uring_tee"}
)
#: The event of a syscall's read direction where it is not the one of _EVENT_NAMES.
_READ_NAMES = {**dict.fromkeys(_TRANSFERS, "vfs_read"), "vmsplice": "vfs_readv"}
#: Tracee's ``syscall`` is the system call the task was in: io_uring requests run inside
#: io_uring_enter (or an io-wq worker, which is in none; tracecap cannot tell them apart).
_SYSCALL_OF = {name: "io_uring_enter" for name in _EVENT_NAMES if name.startswith("io_uring_")}
_HOSTNAME = socket.gethostname()


def _container(env: dict[str, Any]) -> dict[str, str]:
    """trace.Container: its members are omitempty, so an empty one is ``{}`` as Tracee prints."""
    members = (
        ("id", env.get("container_id", "")),
        ("name", env.get("container_name", "")),
        ("image", env.get("container_image", "")),
        ("imageDigest", env.get("container_image_digest", "")),
    )
    return {key: value for key, value in members if value}


def _kubernetes(env: dict[str, Any]) -> dict[str, str]:
    members = (
        ("podName", env.get("pod_name", "")),
        ("podNamespace", env.get("pod_namespace", "")),
        ("podUID", env.get("pod_uid", "")),
    )
    return {key: value for key, value in members if value}


def _envelope(
    env: dict[str, Any], name: str, args: list[dict[str, Any]], ret: int, syscall: str
) -> dict[str, Any]:
    """trace.Event with every field in Tracee's order. Values tracecap does not collect are
    Tracee's zero values (README, Tracee compatibility)."""
    schema = SCHEMAS[name]
    got = tuple(arg["name"] for arg in args)
    if got != schema.arg_names:
        raise ValueError(f"{name}: arguments {got} differ from the schema's {schema.arg_names}")
    container = env.get("container_id", "")
    return {
        "timestamp": env["ts"],
        # a packet's envelope names its owner's start as start_time
        "threadStartTime": env.get("thread_start") or env.get("start_time", 0),
        "processorId": env.get("cpu", 0),
        # as the process's own pid namespace numbers it; the host's numbers follow
        "processId": env.get("ns_pid") or env["pid"],
        "cgroupId": env["cgroup_id"],
        "threadId": env.get("ns_tid") or env["tid"],
        "parentProcessId": env.get("ns_ppid", env["ppid"]),
        "hostProcessId": env["pid"],
        "hostThreadId": env["tid"],
        "hostParentProcessId": env["ppid"],
        "userId": env["uid"],
        "mountNamespace": env.get("mnt_ns", 0),
        "pidNamespace": env.get("pid_ns", 0),
        "processName": text_field(env["comm"]),
        "hostName": _HOSTNAME,
        "containerId": container,
        "container": _container(env),
        "kubernetes": _kubernetes(env),
        "eventId": str(schema.id),
        "eventName": name,
        # Tracee names the policies an event matched; --scope on the command line is its
        # unnamed policy, printed [""]
        "matchedPolicies": [""],
        "argsNum": len(args),
        "returnValue": ret,
        "syscall": syscall,
        "stackAddresses": None,
        "contextFlags": {"containerStarted": bool(container), "isCompat": False},
        "args": args,
    }


def _args(name: str, *values: Any) -> list[dict[str, Any]]:
    """The arguments of ``name`` with these values, in the schema's order and printed types."""
    schema = SCHEMAS[name]
    if len(values) != len(schema.args):
        raise ValueError(f"{name}: {len(values)} values for {len(schema.args)} arguments")
    return [
        {"name": arg.name, "type": arg.shown, "value": value}
        for arg, value in zip(schema.args, values, strict=True)
    ]


def _pointer(value: int) -> str:
    """A pointer as parse-arguments prints it."""
    return f"0x{value:x}"


def file_pathname(env: dict[str, Any]) -> str:
    """Tracee's pathname: pipes and sockets have none (the bus names them ``pipe:[N]``)."""
    if stat.S_ISFIFO(env.get("mode", 0)) or stat.S_ISSOCK(env.get("mode", 0)):
        return ""
    return text_field(env["path"])


def file_events(
    env: dict[str, Any], topic: bytes = bus.TOPIC_FILE_WRITE, merged: bool = False
) -> list[dict[str, Any]]:
    """One event per syscall of a transfer's first message (a merged run lists its syscalls in
    ``ios``: [ts, bytes] each), or with ``merged`` one for the whole run. None for a
    transfer's later messages and the collector's ``extent`` announcements, which are no
    transfer. ``count`` (``vlen`` for the vectored calls) is what the syscall asked for, the
    ``returnValue`` what it moved."""
    if env.get("io_off") != 0 or "extent" in env:
        return []
    syscall = env["syscall"]
    name = _EVENT_NAMES.get(syscall, syscall)
    if topic == bus.TOPIC_FILE_READ:
        name = _READ_NAMES.get(syscall, name)
    pathname = file_pathname(env)
    ios = env.get("ios") if not merged else None
    if not ios:
        ios = [[env["ts"], env["io_len"], env.get("io_req", env["io_len"])]]
    syscall_name = _SYSCALL_OF.get(syscall, syscall)
    out = []
    pos = env["off"]
    for ts, size, *requested in ios:
        # the size asked for when the bus carries it, else what moved (README)
        count = requested[0] if requested else size
        args = _args(name, pathname, env["dev"], env["inode"], count, pos)
        out.append(_envelope(dict(env, ts=ts), name, args, size, syscall_name))
        pos += size
    return out


def exec_event(env: dict[str, Any]) -> dict[str, Any]:
    """sched_process_exec: ``cmdpath`` is the path execve was given (a #! script's name),
    ``pathname`` and its identity the file that runs, as the kernel resolved it at the exec (the
    interpreter of a #! script, as Tracee has it), ``interp`` what the #! line named (else the
    given path, as the kernel's bprm->interp). ``interpreter_*`` name the #! interpreter when
    there is one and are zero values otherwise: Tracee fills them with the ELF program
    interpreter (ld.so), which tracecap does not record (README)."""
    cmdpath = text_field(env.get("cmdpath", env["path"]))
    pathname = text_field(env.get("exe_path") or env["path"])
    script = env.get("interp") is not None
    args = _args(
        "sched_process_exec",
        cmdpath,
        pathname,
        env["dev"],
        env["inode"],
        env["ctime"],
        env["mode"],
        pathname if script else "",  # interpreter_pathname
        env["dev"] if script else 0,
        env["inode"] if script else 0,
        env["ctime"] if script else 0,
        [text_field(a) for a in env["argv"]],
        text_field(env["interp"]) if script else cmdpath,  # interp: bprm->interp
        inode_type(env.get("stdin_mode", 0)),
        text_field(env.get("stdin_path", b"")),
        int(env.get("from_kernel", False)),
        [],  # env: Tracee prints it only with option:exec-env
    )
    return _envelope(env, "sched_process_exec", args, 0, env.get("exec_syscall", "execve"))


def fork_event(env: dict[str, Any]) -> dict[str, Any]:
    """sched_process_fork: the event's process is the parent (the thread that forked), the
    arguments name both; tracecap sends forks of processes only, so the child's tid is its pid.
    ``syscall`` is "": which of fork, vfork, clone or clone3 made the child is not recorded."""
    parent = (
        env["tid"],
        env.get("ns_tid") or env["tid"],
        env["pid"],
        env.get("ns_pid") or env["pid"],
    )
    child_ns = env["child_ns_pid"] or env["child_pid"]
    child = (env["child_pid"], child_ns, env["child_pid"], child_ns)
    args = _args("sched_process_fork", *parent, *child, env["child_start"])
    return _envelope(env, "sched_process_fork", args, 0, "")


def exit_event(env: dict[str, Any]) -> dict[str, Any]:
    """sched_process_exit of a process's last thread: ``exit_code`` is the wait status, as
    Tracee reads task->exit_code; ``process_group_exit`` is true (threads' exits are not sent)."""
    args = _args("sched_process_exit", env["wait_status"], True)
    return _envelope(env, "sched_process_exit", args, 0, "")


#: The Tracee event of each ``proc.`` event, and how it is built.
_PROC_EVENTS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "exec": ("sched_process_exec", exec_event),
    "fork": ("sched_process_fork", fork_event),
    "exit": ("sched_process_exit", exit_event),
}


#: libbpfgo's ParseInodeMode names of file types (S_IFMT), which Tracee parses stdin_type with.
_INODE_TYPES = {
    stat.S_IFSOCK: "S_IFSOCK", stat.S_IFLNK: "S_IFLNK", stat.S_IFREG: "S_IFREG",
    stat.S_IFBLK: "S_IFBLK", stat.S_IFDIR: "S_IFDIR", stat.S_IFCHR: "S_IFCHR",
    stat.S_IFIFO: "S_IFIFO",
}  # fmt: skip


def inode_type(mode: int) -> str:
    """A file type as Tracee prints stdin_type; "" for none (no fd 0)."""
    return _INODE_TYPES.get(stat.S_IFMT(mode), "")


#: Tracee's names of PROT_* bits, in the order its ParseMmapProt joins them.
_PROT_NAMES = ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"))


def tracee_prot(prot: int) -> str:
    """PROT_* bits as Tracee prints them: ``PROT_READ|PROT_EXEC``, ``PROT_NONE`` for none."""
    return "|".join(name for bit, name in _PROT_NAMES if prot & bit) or "PROT_NONE"


def mem_event(env: dict[str, Any], _payload: bytes = b"") -> dict[str, Any] | None:
    """Tracee's mem_prot_alert; None for a mem message that is no alert (a region dumped when
    it was unmapped or its process exited, a report of what the budget skipped)."""
    if not env["alert"]:
        return None
    args = _args(
        "mem_prot_alert",
        env["alert"],
        _pointer(env["addr"]),
        env["len"],
        tracee_prot(env["prot_after"]),
        tracee_prot(env["prot_before"]),
        text_field(env.get("vma_path", b"")),
        env.get("vma_dev", 0),
        env.get("vma_inode", 0),
        env.get("vma_ctime", 0),
    )
    return _envelope(env, "mem_prot_alert", args, 0, env["syscall"])


def module_event(env: dict[str, Any], _payload: bytes = b"") -> dict[str, Any]:
    params = text_field(env["params"])
    if env["syscall"] == "finit_module":
        args = _args("finit_module", env.get("fd", -1), params, env.get("load_flags", 0))
    else:
        args = _args("init_module", _pointer(env.get("addr", 0)), env["obj_len"], params)
    return _envelope(env, env["syscall"], args, env["ret"], env["syscall"])


#: enum bpf_prog_type, as libbpfgo's ParseBPFProgType names them (Tracee parses ``type``).
BPF_PROG_TYPES = (
    "BPF_PROG_TYPE_UNSPEC", "BPF_PROG_TYPE_SOCKET_FILTER", "BPF_PROG_TYPE_KPROBE",
    "BPF_PROG_TYPE_SCHED_CLS", "BPF_PROG_TYPE_SCHED_ACT", "BPF_PROG_TYPE_TRACEPOINT",
    "BPF_PROG_TYPE_XDP", "BPF_PROG_TYPE_PERF_EVENT", "BPF_PROG_TYPE_CGROUP_SKB",
    "BPF_PROG_TYPE_CGROUP_SOCK", "BPF_PROG_TYPE_LWT_IN", "BPF_PROG_TYPE_LWT_OUT",
    "BPF_PROG_TYPE_LWT_XMIT", "BPF_PROG_TYPE_SOCK_OPS", "BPF_PROG_TYPE_SK_SKB",
    "BPF_PROG_TYPE_CGROUP_DEVICE", "BPF_PROG_TYPE_SK_MSG", "BPF_PROG_TYPE_RAW_TRACEPOINT",
    "BPF_PROG_TYPE_CGROUP_SOCK_ADDR", "BPF_PROG_TYPE_LWT_SEG6LOCAL", "BPF_PROG_TYPE_LIRC_MODE2",
    "BPF_PROG_TYPE_SK_REUSEPORT", "BPF_PROG_TYPE_FLOW_DISSECTOR", "BPF_PROG_TYPE_CGROUP_SYSCTL",
    "BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE", "BPF_PROG_TYPE_CGROUP_SOCKOPT",
    "BPF_PROG_TYPE_TRACING", "BPF_PROG_TYPE_STRUCT_OPS", "BPF_PROG_TYPE_EXT",
    "BPF_PROG_TYPE_LSM", "BPF_PROG_TYPE_SK_LOOKUP", "BPF_PROG_TYPE_SYSCALL",
)  # fmt: skip


def bpf_prog_type(value: int) -> str:
    """The program type's name; a type newer than libbpfgo's list is printed "" as Tracee's
    parseOrEmptyString does."""
    return BPF_PROG_TYPES[value] if 0 <= value < len(BPF_PROG_TYPES) else ""


def bpf_event(env: dict[str, Any], insns: bytes = b"") -> dict[str, Any]:
    """security_bpf_prog; ``helpers`` from the instructions of the program's first message
    (all of a program up to 1 MiB of bytecode, unless bytes of it were lost)."""
    args = _args(
        "security_bpf_prog",
        bpf_prog_type(env["prog_type"]),
        text_field(env["prog_name"]),
        helpers_used(insns),
        env.get("prog_id", 0),
        True,
    )
    return _envelope(env, "security_bpf_prog", args, 0, "bpf")


#: gopacket's IPProtocol names (Tracee's ``protocol``/``nextHeader``).
_IP_PROTOCOLS = {0: "IPv6HopByHop", 1: "ICMPv4", 2: "IGMP", 4: "IPv4", 6: "TCP", 17: "UDP",
                 41: "IPv6", 43: "IPv6Routing", 44: "IPv6Fragment", 47: "GRE", 50: "ESP",
                 51: "AH", 58: "ICMPv6", 59: "NoNextHeader", 60: "IPv6Destination", 132: "SCTP",
                 136: "UDPLite"}  # fmt: skip
#: gopacket's ICMPv4 type names and, for types with codes, their code names.
_ICMP4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect",
                8: "EchoRequest", 9: "RouterAdvertisement", 10: "RouterSolicitation",
                11: "TimeExceeded", 12: "ParameterProblem", 13: "TimestampRequest",
                14: "TimestampReply", 15: "InfoRequest", 16: "InfoReply",
                17: "AddressMaskRequest", 18: "AddressMaskReply"}  # fmt: skip
_ICMP4_CODES = {
    3: ("Net", "Host", "Protocol", "Port", "FragmentationNeeded", "SourceRoutingFailed",
        "NetUnknown", "HostUnknown", "SourceIsolated", "NetAdminProhibited",
        "HostAdminProhibited", "NetTOS", "HostTOS", "CommAdminProhibited", "HostPrecedence",
        "PrecedenceCutoff"),
    5: ("Net", "Host", "TOS+Net", "TOS+Host"),
    11: ("TTLExceeded", "FragmentReassemblyTimeExceeded"),
    12: ("PointerIndicatesError", "MissingOption", "BadLength"),
}  # fmt: skip
_ICMP6_TYPES = {1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded",
                4: "ParameterProblem", 128: "EchoRequest", 129: "EchoReply",
                133: "RouterSolicitation", 134: "RouterAdvertisement",
                135: "NeighborSolicitation", 136: "NeighborAdvertisement",
                137: "Redirect"}  # fmt: skip


def icmp_type_code(icmp_type: int, code: int, names: dict[int, str], codes: dict) -> str:
    """gopacket's ICMP TypeCode.String(): the type's name, ``Name(Code)`` for typed codes."""
    name = names.get(icmp_type)
    if name is None:
        return f"{icmp_type}({code})"
    known = codes.get(icmp_type)
    if known is None:
        return name
    return f"{name}({known[code] if code < len(known) else code})"


def proto_ipv4(ip: dpkt.ip.IP) -> dict[str, Any]:
    return {
        "version": ip.v, "IHL": ip.hl, "TOS": ip.tos, "length": ip.len, "id": ip.id,
        "flags": ip._flags_offset >> 13, "fragOffset": ip._flags_offset & 0x1FFF, "TTL": ip.ttl,
        "protocol": _IP_PROTOCOLS.get(ip.p, f"UnknownIPProtocol({ip.p})"), "checksum": ip.sum,
        "srcIP": str(ipaddress.ip_address(ip.src)), "dstIP": str(ipaddress.ip_address(ip.dst)),
    }  # fmt: skip


def proto_ipv6(ip: dpkt.ip6.IP6) -> dict[str, Any]:
    return {
        "version": ip.v, "trafficClass": ip.fc, "flowLabel": ip.flow, "length": ip.plen,
        "nextHeader": _IP_PROTOCOLS.get(ip.nxt, f"UnknownIPProtocol({ip.nxt})"),
        "hopLimit": ip.hlim, "srcIP": str(ipaddress.ip_address(ip.src)),
        "dstIP": str(ipaddress.ip_address(ip.dst)),
    }  # fmt: skip


def proto_tcp(tcp: dpkt.tcp.TCP) -> dict[str, Any]:
    flags = tcp.flags
    bit = {name: int(bool(flags & mask)) for name, mask in (
        ("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
        ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))}  # fmt: skip
    return {
        "srcPort": tcp.sport, "dstPort": tcp.dport, "seq": tcp.seq, "ack": tcp.ack,
        "dataOffset": tcp.off, **bit, "NS": (tcp._off_flags >> 8) & 1, "window": tcp.win,
        "checksum": tcp.sum, "urgent": tcp.urp,
    }  # fmt: skip


def proto_udp(udp: dpkt.udp.UDP) -> dict[str, Any]:
    return {"srcPort": udp.sport, "dstPort": udp.dport, "length": udp.ulen, "checksum": udp.sum}


def proto_icmp(icmp: dpkt.icmp.ICMP) -> dict[str, Any]:
    echo = icmp.data if isinstance(icmp.data, dpkt.icmp.ICMP.Echo) else None
    return {
        "typeCode": icmp_type_code(icmp.type, icmp.code, _ICMP4_TYPES, _ICMP4_CODES),
        "checksum": icmp.sum,
        "id": echo.id if echo is not None else 0,
        "seq": echo.seq if echo is not None else 0,
    }


def proto_icmpv6(icmp: dpkt.icmp6.ICMP6) -> dict[str, Any]:
    return {
        "typeCode": icmp_type_code(icmp.type, icmp.code, _ICMP6_TYPES, {}),
        "checksum": icmp.sum,
    }


_PROTO_OF = {
    "net_packet_ipv4": proto_ipv4,
    "net_packet_ipv6": proto_ipv6,
    "net_packet_tcp": proto_tcp,
    "net_packet_udp": proto_udp,
    "net_packet_icmp": proto_icmp,
    "net_packet_icmpv6": proto_icmpv6,
}
_IP_EVENTS = frozenset({"net_packet_ipv4", "net_packet_ipv6"})
_PORTED = frozenset({"net_packet_tcp", "net_packet_udp"})


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
    if ip is None:
        return []  # not even an IP header: nothing Tracee would derive an event from
    addresses = (str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst)))
    ported = l4 is not None and hasattr(l4, "sport")
    with_ports = (*addresses, l4.sport, l4.dport) if ported else ()
    if follow and ported:
        names.append("net_packet_dns")
    out = []
    for name in names:
        if name == "net_packet_dns":
            if not ported:
                continue
            side = (env["direction"], env["ifindex"], ip.src, ip.dst)
            missing = max(0, env["orig_len"] - len(payload))
            # each message comes back with its own segment's envelope and addresses
            found = dns.messages(side, l4, missing, tagged=not follow, context=(env, with_ports))
            for (its_env, its_leading), proto in found:
                args = _args(name, *its_leading, proto)
                out.append(_envelope(its_env, name, args, 0, ""))
            continue
        layer = ip if name in _IP_EVENTS else l4
        if name == "net_packet_http":
            if not ported:
                continue
            args = _args(name, *with_ports, protocols.proto_http(l4))
        elif name in _PORTED:
            if not ported:
                continue
            args = _args(name, *with_ports, _PROTO_OF[name](layer))
        elif name in _PROTO_OF and layer is not None:
            args = _args(name, *addresses, _PROTO_OF[name](layer))
        else:
            continue  # a transport header cut off: no event, as in Tracee
        out.append(_envelope(env, name, args, 0, ""))
    return out


#: Object events by topic, made from the object's first message (envelope and payload).
_OBJECT_EVENTS: dict[bytes, Callable[[dict[str, Any], bytes], dict[str, Any] | None]] = {
    bus.TOPIC_MEM: mem_event,
    bus.TOPIC_MODULE: module_event,
    bus.TOPIC_BPF: bpf_event,
}


def events_for(
    msg: bus.Message, wanted: tuple[str, ...], merged: bool = False
) -> list[dict[str, Any]]:
    """The Tracee events of a file or process message (none when not selected: with no
    ``wanted``, every event but forks and exits). Object messages need EventPrinter, which
    remembers which objects it printed."""
    if msg.topic in (bus.TOPIC_FILE_WRITE, bus.TOPIC_FILE_READ):
        events = file_events(msg.env, msg.topic, merged)
    elif msg.topic == bus.TOPIC_PROC and msg.env.get("event") in _PROC_EVENTS:
        name, make = _PROC_EVENTS[msg.env["event"]]
        # forks and exits only when named (kinds.PROCESS_EVENTS), as in Tracee
        if name not in wanted and (wanted or name in PROCESS_EVENTS):
            return []
        events = [make(msg.env)]
    else:
        return []
    return [event for event in events if not wanted or event["eventName"] in wanted]


class EventPrinter:
    """One event per object (a region, module or program travels as several messages)."""

    def __init__(self, remember: int = 4096, merged: bool = False) -> None:
        self._printed: dict[tuple[int, int], None] = {}
        self._remember = remember
        self._merged = merged
        self.dns = DnsReader()

    def events_for(self, msg: bus.Message, wanted: tuple[str, ...]) -> list[dict[str, Any]]:
        if msg.topic == bus.TOPIC_NET_PACKETS:  # BadMessage for a batch that does not add up
            return [
                event
                for one in bus.split_packets(msg)
                for event in packet_events(one.env, one.payload, wanted, self.dns)
            ]
        if msg.topic == bus.TOPIC_NET_PACKET:
            return packet_events(msg.env, msg.payload, wanted, self.dns)
        make = _OBJECT_EVENTS.get(msg.topic)
        if make is None:
            return events_for(msg, wanted, self._merged)
        key = (msg.env["epoch"], msg.env["obj_id"])
        if key in self._printed:
            return []
        self._printed[key] = None
        if len(self._printed) > self._remember:
            del self._printed[next(iter(self._printed))]
        event = make(msg.env, msg.payload if msg.env.get("obj_off") == 0 else b"")
        if event is None or (wanted and event["eventName"] not in wanted):
            return []
        return [event]
