"""Every event tracecap prints, declared once as Tracee v0.17 defines it (pure data).

Source of truth: Tracee v0.17.0 -- ``pkg/events/events.go`` (event ids: ``iota + 700`` for
kernel events, ``iota + 2000`` for the user-space network events; the syscall ids of
``pkg/events/amd64.go``; each definition's ``Params``), ``pkg/events/parse_args.go`` (what
``--output option:parse-arguments`` turns an argument into) and ``types/trace/trace.go`` (the
``trace.Event`` envelope and how Go decodes an argument by its type string). tracecap always
prints arguments parsed, so ``printed`` is the type string it prints when parsing changes it.

The front end (``tracecap.frontend.tracee_json``) builds every event from these declarations,
and the conformance tests decode what it prints against them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracecap.kinds import EVENT_NAMES


@dataclass(frozen=True)
class Arg:
    """One argument of an event: Tracee's name and ``ArgMeta`` type string."""

    name: str
    #: The type in Tracee's event definition.
    type: str
    #: The type string printed when parse-arguments changes it (``u32`` alert -> ``string``).
    printed: str | None = None

    @property
    def shown(self) -> str:
        """The ``type`` tracecap prints (always parsed, as option:parse-arguments does)."""
        return self.printed or self.type


@dataclass(frozen=True)
class EventSchema:
    """One event: name, Tracee's numeric id (printed as a string) and arguments in order."""

    name: str
    id: int
    args: tuple[Arg, ...]
    #: A syscall event (Tracee's ``Syscall: true``): its returnValue is the syscall's.
    syscall: bool = False

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(arg.name for arg in self.args)


def _args(*pairs: tuple[str, str] | tuple[str, str, str]) -> tuple[Arg, ...]:
    return tuple(Arg(*pair) for pair in pairs)


_FILE_IO = (("pathname", "const char*"), ("dev", "dev_t"), ("inode", "unsigned long"))
_ADDRESSES = (("src", "const char*"), ("dst", "const char*"))
_PORTS = (("src_port", "u16"), ("dst_port", "u16"))

SCHEMAS: dict[str, EventSchema] = {
    schema.name: schema
    for schema in (
        EventSchema("vfs_write", 718, _args(*_FILE_IO, ("count", "size_t"), ("pos", "off_t"))),
        EventSchema(
            "vfs_writev", 719, _args(*_FILE_IO, ("vlen", "unsigned long"), ("pos", "off_t"))
        ),
        EventSchema("vfs_read", 720, _args(*_FILE_IO, ("count", "size_t"), ("pos", "off_t"))),
        EventSchema(
            "vfs_readv", 721, _args(*_FILE_IO, ("vlen", "unsigned long"), ("pos", "off_t"))
        ),
        EventSchema(
            "sched_process_exec",
            713,
            _args(
                ("cmdpath", "const char*"),
                ("pathname", "const char*"),
                ("dev", "dev_t"),
                ("inode", "unsigned long"),
                ("ctime", "unsigned long"),
                ("inode_mode", "umode_t"),
                ("interpreter_pathname", "const char*"),
                ("interpreter_dev", "dev_t"),
                ("interpreter_inode", "unsigned long"),
                ("interpreter_ctime", "unsigned long"),
                ("argv", "const char**"),
                ("interp", "const char*"),
                ("stdin_type", "umode_t", "string"),
                ("stdin_path", "char*"),
                ("invoked_from_kernel", "int"),
                ("env", "const char**"),
            ),
        ),
        # parent (the event's process) and child; start_time: the child's start, printed as
        # threadStartTime is (ns since the epoch)
        EventSchema(
            "sched_process_fork",
            712,
            _args(
                ("parent_tid", "int"),
                ("parent_ns_tid", "int"),
                ("parent_pid", "int"),
                ("parent_ns_pid", "int"),
                ("child_tid", "int"),
                ("child_ns_tid", "int"),
                ("child_pid", "int"),
                ("child_ns_pid", "int"),
                ("start_time", "unsigned long"),
            ),
        ),
        # exit_code: the wait status (task->exit_code); tracecap sends only the process's
        # last thread's exit, so process_group_exit is always true
        EventSchema(
            "sched_process_exit", 714, _args(("exit_code", "long"), ("process_group_exit", "bool"))
        ),
        EventSchema(
            "mem_prot_alert",
            722,
            _args(
                ("alert", "u32", "string"),
                # a pointer is printed "0x..." parsed; its type string stays void*
                ("addr", "void*"),
                ("len", "size_t"),
                ("prot", "int", "string"),
                ("prev_prot", "int", "string"),
                ("pathname", "const char*"),
                ("dev", "dev_t"),
                ("inode", "unsigned long"),
                ("ctime", "u64"),
            ),
        ),
        EventSchema(
            "init_module",
            175,
            _args(
                ("module_image", "void*"), ("len", "unsigned long"), ("param_values", "const char*")
            ),
            syscall=True,
        ),
        EventSchema(
            "finit_module",
            313,
            _args(("fd", "int"), ("param_values", "const char*"), ("flags", "int")),
            syscall=True,
        ),
        EventSchema(
            "security_bpf_prog",
            776,
            _args(
                ("type", "int", "string"),
                ("name", "const char*"),
                ("helpers", "unsigned long[]", "const char**"),
                ("id", "u32"),
                ("load", "bool"),
            ),
        ),
        EventSchema("net_packet_ipv4", 2000, _args(*_ADDRESSES, ("proto_ipv4", "trace.ProtoIPv4"))),
        EventSchema("net_packet_ipv6", 2001, _args(*_ADDRESSES, ("proto_ipv6", "trace.ProtoIPv6"))),
        EventSchema(
            "net_packet_tcp", 2002, _args(*_ADDRESSES, *_PORTS, ("proto_tcp", "trace.ProtoTCP"))
        ),
        EventSchema(
            "net_packet_udp", 2003, _args(*_ADDRESSES, *_PORTS, ("proto_udp", "trace.ProtoUDP"))
        ),
        EventSchema("net_packet_icmp", 2004, _args(*_ADDRESSES, ("proto_icmp", "trace.ProtoICMP"))),
        EventSchema(
            "net_packet_icmpv6", 2005, _args(*_ADDRESSES, ("proto_icmpv6", "trace.ProtoICMPv6"))
        ),
        EventSchema(
            "net_packet_dns", 2006, _args(*_ADDRESSES, *_PORTS, ("proto_dns", "trace.ProtoDNS"))
        ),
        EventSchema(
            "net_packet_http",
            2009,
            _args(*_ADDRESSES, *_PORTS, ("proto_http", "trace.ProtoHTTP")),
        ),
    )
}

#: The trace.Event fields of Tracee v0.17 in its order, with the JSON kind of each: ``int``
#: (Go int), ``uint`` (Go uint), ``str``, ``int-string`` (``json:",string"``: an int printed as
#: a string), ``object``, ``list``, ``list-or-null``, ``bool``. ``omitempty`` fields may be
#: absent; ``metadata`` (omitempty, for signatures) is never printed by tracecap.
ENVELOPE: tuple[tuple[str, str], ...] = (
    ("timestamp", "int"),
    ("threadStartTime", "int"),
    ("processorId", "int"),
    ("processId", "int"),
    ("cgroupId", "uint"),
    ("threadId", "int"),
    ("parentProcessId", "int"),
    ("hostProcessId", "int"),
    ("hostThreadId", "int"),
    ("hostParentProcessId", "int"),
    ("userId", "int"),
    ("mountNamespace", "int"),
    ("pidNamespace", "int"),
    ("processName", "str"),
    ("hostName", "str"),
    ("containerId", "str"),
    ("container", "object"),
    ("kubernetes", "object"),
    ("eventId", "int-string"),
    ("eventName", "str"),
    ("matchedPolicies", "list"),
    ("argsNum", "int"),
    ("returnValue", "int"),
    ("syscall", "str"),
    ("stackAddresses", "list-or-null"),
    ("contextFlags", "object"),
    ("args", "list"),
)
#: Envelope fields Go marshals with ``omitempty`` (absent when empty).
ENVELOPE_OMITEMPTY = frozenset({"matchedPolicies", "metadata"})
#: ``container`` and ``kubernetes`` members (all omitempty strings; podSandbox a bool).
CONTAINER_FIELDS = {"id": "str", "name": "str", "image": "str", "imageDigest": "str"}
KUBERNETES_FIELDS = {"podName": "str", "podNamespace": "str", "podUID": "str", "podSandbox": "bool"}
CONTEXT_FLAGS = {"containerStarted": "bool", "isCompat": "bool"}

#: The members of each ``trace.Proto*`` argument value, as Go's decoder requires them
#: (types/trace/trace.go jsonConvertTo*): ``u8``/``u16``/``u32``/``int``/``int64`` numbers,
#: ``str`` strings, ``headers`` an http.Header (name -> list of strings), ``dns-*`` nested.
PROTO_FIELDS: dict[str, dict[str, str]] = {
    "trace.ProtoIPv4": {
        "version": "u8", "IHL": "u8", "TOS": "u8", "length": "u16", "id": "u16", "flags": "u8",
        "fragOffset": "u16", "TTL": "u8", "protocol": "str", "checksum": "u16", "srcIP": "str",
        "dstIP": "str",
    },
    "trace.ProtoIPv6": {
        "version": "u8", "trafficClass": "u8", "flowLabel": "u32", "length": "u16",
        "nextHeader": "str", "hopLimit": "u8", "srcIP": "str", "dstIP": "str",
    },
    "trace.ProtoTCP": {
        "srcPort": "u16", "dstPort": "u16", "seq": "u32", "ack": "u32", "dataOffset": "u8",
        "FIN": "u8", "SYN": "u8", "RST": "u8", "PSH": "u8", "ACK": "u8", "URG": "u8",
        "ECE": "u8", "CWR": "u8", "NS": "u8", "window": "u16", "checksum": "u16",
        "urgent": "u16",
    },
    "trace.ProtoUDP": {"srcPort": "u16", "dstPort": "u16", "length": "u16", "checksum": "u16"},
    "trace.ProtoICMP": {"typeCode": "str", "checksum": "u16", "id": "u16", "seq": "u16"},
    "trace.ProtoICMPv6": {"typeCode": "str", "checksum": "u16"},
    "trace.ProtoDNS": {
        "ID": "u16", "QR": "u8", "opCode": "str", "AA": "u8", "TC": "u8", "RD": "u8",
        "RA": "u8", "Z": "u8", "responseCode": "str", "QDCount": "u16", "ANCount": "u16",
        "NSCount": "u16", "ARCount": "u16", "questions": "dns-questions",
        "answers": "dns-records", "authorities": "dns-records", "additionals": "dns-records",
    },
    "trace.ProtoHTTP": {
        "direction": "str", "method": "str", "protocol": "str", "host": "str",
        "uri_path": "str", "status": "str", "status_code": "int", "headers": "headers",
        "content_length": "int64",
    },
}  # fmt: skip
DNS_QUESTION_FIELDS = {"name": "str", "type": "str", "class": "str"}
DNS_RECORD_FIELDS = {
    "name": "str", "type": "str", "class": "str", "TTL": "u32", "IP": "str", "NS": "str",
    "CNAME": "str", "PTR": "str", "TXTs": "strings", "SOA": "dns-soa", "SRV": "dns-srv",
    "MX": "dns-mx", "OPT": "dns-opts", "URI": "dns-uri", "TXT": "str",
}  # fmt: skip
DNS_NESTED_FIELDS: dict[str, dict[str, str]] = {
    "dns-soa": {"MName": "str", "RName": "str", "serial": "u32", "refresh": "u32",
                "retry": "u32", "expire": "u32", "minimum": "u32"},
    "dns-srv": {"priority": "u16", "weight": "u16", "port": "u16", "name": "str"},
    "dns-mx": {"preference": "u16", "name": "str"},
    "dns-uri": {"priority": "u16", "weight": "u16", "target": "str"},
    "dns-opt": {"code": "str", "data": "str"},
}  # fmt: skip


def schema_of(name: str) -> EventSchema:
    """The declaration of an event tracecap prints (KeyError for any other name)."""
    return SCHEMAS[name]


def check_registry() -> list[str]:
    """Event names the kind registry lists without a schema, and schemas of no kind (both
    should be empty; a unit test says which)."""
    missing = [name for name in EVENT_NAMES if name not in SCHEMAS]
    extra = [name for name in SCHEMAS if name not in EVENT_NAMES]
    return missing + extra
