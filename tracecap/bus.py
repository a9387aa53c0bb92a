"""The bus contract: topics, the envelope, and a defensive decoder.

Everything a consumer needs to read the tracecap stream lives here, so that the collector,
the writers and third-party subscribers agree by importing one module.

A message is multipart ``[topic, envelope, payload?]``:

* ``topic``: ASCII, always ending in ``.`` so that prefix subscriptions never collide.
* ``envelope``: a msgpack map. Common keys are listed in ``COMMON_KEYS``; kinds add their own.
  Kernel strings (``comm``, paths) travel as msgpack ``bin`` because they are not always UTF-8.
* ``payload``: optional raw bytes (artifact data), kept out of msgpack to avoid copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1

TOPIC_FILE_WRITE = b"file.write."
TOPIC_FILE_READ = b"file.read."
TOPIC_EXEC = b"exec."
TOPIC_MEM = b"mem."
TOPIC_MODULE = b"module."
TOPIC_BPF = b"bpf."
TOPIC_NET_PACKET = b"net.packet."
TOPIC_NET_PACKETS = b"net.packets."
TOPIC_PROC = b"proc."
TOPIC_STATS = b"stats."

TOPICS = (
    TOPIC_FILE_WRITE,
    TOPIC_FILE_READ,
    TOPIC_EXEC,
    TOPIC_MEM,
    TOPIC_MODULE,
    TOPIC_BPF,
    TOPIC_NET_PACKET,
    TOPIC_NET_PACKETS,
    TOPIC_PROC,
    TOPIC_STATS,
)

#: Keys present in every envelope, with the Python types a decoder accepts for them.
COMMON_KEYS: dict[str, tuple[type, ...]] = {
    "v": (int,),
    "epoch": (int,),
    "seq": (int,),
    "ts": (int,),
    "pid": (int,),
    "tid": (int,),
    "ppid": (int,),
    "uid": (int,),
    "comm": (bytes,),
    "cgroup_id": (int,),
    "container_id": (str,),
}

#: Optional keys of a message whose ``container_id`` is not "": what the container's runtime
#: (Docker, Podman) says of it, when the collector could ask (see the README's Containers):
#: its name, its image as the user named it, the image's registry digest (``name@sha256:..``)
#: or else its id (``sha256:...``), and Kubernetes' pod labels. Strings; absent when unknown.
CONTAINER_KEYS = (
    "container_name",
    "container_image",
    "container_image_digest",
    "pod_name",
    "pod_namespace",
    "pod_uid",
)
#: Longer values are not taken by ``container_fields`` (the collector sends at most 512).
MAX_CONTAINER_VALUE_CHARS = 1024


def container_fields(env: dict[str, Any]) -> dict[str, str]:
    """The CONTAINER_KEYS an envelope carries with a usable value (a non-empty string within
    MAX_CONTAINER_VALUE_CHARS); anything else is ignored, as unknown keys are."""
    out = {}
    for key in CONTAINER_KEYS:
        value = env.get(key)
        if isinstance(value, str) and 0 < len(value) <= MAX_CONTAINER_VALUE_CHARS:
            out[key] = value
    return out


#: Events from processes also carry ``ns_pid``, ``ns_tid`` and ``ns_ppid``: the same ids as the
#: process's own pid namespace numbers them (equal to the host's outside containers).

#: Keys every ``file.write.`` / ``file.read.`` envelope carries on top of COMMON_KEYS.
#: ``off`` is the file offset of this message's payload; ``io_id`` names the syscall the bytes
#: came from; ``io_off`` is the payload's position inside that syscall's transfer, whose total is
#: ``io_len``; ``append`` says the target is a stream (pipe, socket, character device) whose bytes
#: are appended rather than placed at ``off``; ``lost`` lists ``[start, end)`` file ranges the
#: kernel could not deliver (then there is no payload). ``io_count`` (optional, 1 when absent)
#: says how many consecutive syscalls of one thread on one open file the transfer ``io_id``
#: stands for: the collector merges them, ``io_id`` and ``ts`` being the first's and
#: ``ts_last`` the last's, ``io_len`` their total; such a run lists ``ios``, ``[ts, bytes,
#: asked]`` per syscall (``asked``: the size requested, iovecs for the vectored calls), and a
#: single syscall's request is ``io_req`` (both optional). ``source`` (optional) says how the
#: bytes were obtained when not from the syscall's user buffer: ``"readback"``, read by the
#: collector from the file that held them (copy_file_range, sendfile, splice); then
#: ``readback_error`` says why a ``lost`` range could not be read back. ``lost_unsized``
#: (optional) counts transfers lost whose byte count no one could read (a sendmmsg/recvmmsg
#: message header unmapped by the syscall's exit): no range can name them.
FILE_KEYS: dict[str, tuple[type, ...]] = {
    "syscall": (str,),
    "fd": (int,),
    "path": (bytes,),
    "dev": (int,),
    "inode": (int,),
    "mode": (int,),
    "io_id": (int,),
    "io_len": (int,),
    "io_off": (int,),
    "off": (int,),
    "append": (bool,),
}

#: Keys of every whole-object artifact (exec., mem., module., bpf.). An object travels as one or
#: more messages with the same ``obj_id`` (unique per epoch); ``obj_off`` is the payload's offset
#: in the object, ``obj_len`` its size as known when the message was sent (a file read to its
#: end may have grown: the largest ``obj_len`` is the size), and the message with ``last`` true
#: ends it (it may carry no payload). Optional: ``lost`` lists ``[start, end)`` ranges that did
#: not arrive; ``error`` says why (a read that failed part-way); ``ok`` false means the object
#: could not be read at all (there is no artifact, only the index record of the failure).
OBJECT_KEYS: dict[str, tuple[type, ...]] = {
    "obj_id": (int,),
    "obj_off": (int,),
    "obj_len": (int,),
    "last": (bool,),
}

#: exec.: the binary a process executed. ``path`` is the name it was executed by, ``argv`` its
#: arguments (empty when unknown), ``ctime`` the inode's change time (ns) so that a modified
#: binary is captured again; ``memfd`` for memfd_create'd binaries, whose name is ``path``.
EXEC_KEYS = {
    "path": (bytes,),
    "argv": (list,),
    "dev": (int,),
    "inode": (int,),
    "ctime": (int,),
    "mode": (int,),
    "memfd": (bool,),
}

#: mem.: a protection change Tracee alerts on, the bytes of a region, or both. ``syscall`` is
#: mprotect, pkey_mprotect, mmap, munmap, exit (the process's last thread) or stop (the
#: collector's report at a stop); ``alert`` Tracee's text ("" for none); ``prot_before`` /
#: ``prot_after`` PROT_* bits (before from the kernel's vm_flags, not guessed); ``len`` the
#: length as asked, ``size`` the region's bytes (whole pages). ``dump``: "sent" (the object's
#: bytes are the region's; optional ``zero`` lists ranges of pages never touched, zeros),
#: "repeat" (the same content as the earlier object ``same_as`` of this epoch; no bytes),
#: "budget" (skipped: the process spent its byte allowance) or "none". ``skipped_*``: what the
#: process's allowances skipped since its previous message (events, dumps, their bytes).
MEM_KEYS = {
    "syscall": (str,),
    "addr": (int,),
    "len": (int,),
    "size": (int,),
    "prot_before": (int,),
    "prot_after": (int,),
    "alert": (str,),
    "dump": (str,),
    "same_as": (int,),
    "skipped_events": (int,),
    "skipped_dumps": (int,),
    "skipped_bytes": (int,),
}

#: module.: a kernel module image. ``syscall`` is init_module or finit_module, ``ret`` its return
#: value (a negative errno when the load failed), ``params`` the parameter string, and for
#: finit_module the file's ``dev``, ``inode`` and ``path`` (0, 0, b"" for init_module).
#: Optional: ``fd`` and ``load_flags`` (finit_module's), ``addr`` (init_module's image);
#: ``mapping`` when that image lies in a file mapping (a map: ``start``, ``end``, ``pgoff`` in
#: pages, ``shared``, ``written``, and the file's ``dev``, ``inode``, ``ctime``, ``mtime``,
#: ``size``, ``path`` as the kernel saw them); on the last message, ``from_file`` (the
#: ``[start, end)`` ranges the collector read from that file because the kernel could not read
#: them from memory) and ``fill_error`` (why ranges it could not read from the file are still
#: ``lost``); ``source`` (MODULE_SOURCES); ``error`` with ``ret`` -115 (EINPROGRESS) when the
#: kernel sent the image but the load had not returned when the capture stopped.
#:
#: A module message's ``source``: where its image's bytes come from, by (syscall, whether the
#: kernel's own buffer gave them): "kernel_read_file" (finit_module's file as the kernel read
#: it, compressed if the file is) and "kernel_load_data" (init_module's image as the kernel
#: copied it), where fentry runs on those hooks; else "file" (finit_module's file, read by
#: the collector) and "memory" (init_module's image, read from the caller's memory at the
#: syscall's exit, what could not be read there taken from its file mapping: ``from_file``).
MODULE_SOURCES = {
    ("finit_module", True): "kernel_read_file",
    ("init_module", True): "kernel_load_data",
    ("finit_module", False): "file",
    ("init_module", False): "memory",
}
MODULE_KEYS = {
    "syscall": (str,),
    "ret": (int,),
    "params": (bytes,),
    "dev": (int,),
    "inode": (int,),
    "path": (bytes,),
}

#: bpf.: the instructions of a BPF_PROG_LOAD (``insn_cnt`` * 8 bytes), with the program's name and
#: type and the syscall's return value (the new program's fd, or a negative errno).
BPF_KEYS = {
    "prog_name": (bytes,),
    "prog_type": (int,),
    "insn_cnt": (int,),
    "ret": (int,),
}

#: net.packet.: one packet, the payload frame holding its bytes from the IP header on (link type
#: RAW), cut to the snap length: ``orig_len`` is its real length. ``direction`` is "egress" or
#: "ingress", ``ifindex`` the interface, ``cookie`` the socket's cookie. The common keys name the
#: process that owns the socket (pid 0 and an empty comm when no process does, such as a
#: kernel-generated reply), ``start_time`` that thread's start (ns since the epoch, 0 when
#: unknown) and ``cgroup_id``/``container_id`` the packet's cgroup. ``protocols`` lists the
#: net_packet_* event names the packet matches (ipv4, tcp, dns, ...).
NET_KEYS = {
    "direction": (str,),
    "ifindex": (int,),
    "orig_len": (int,),
    "cookie": (int,),
    "start_time": (int,),
    "protocols": (list,),
}

#: net.packets.: packets in batches, what the writers read (one ``net.packet.`` message per packet
#: cost the collector a ZeroMQ send each, a quarter of its time under a flood). The common keys
#: are nobody's (pid 0, empty comm and container_id; ``ts`` the first packet's); ``contexts``
#: lists the packets' owners, each a map of the keys a ``net.packet.`` envelope would carry
#: besides its packet's own (CONTEXT_KEYS: the common ones, ``start_time``, ``direction``, the
#: container's), and ``packets`` one array per packet, in the order the collector read them:
#: ``[ts, context, ifindex, orig_len, cookie, caplen, protocols]`` (PACKET_ROW), ``context`` an
#: index into ``contexts``, ``caplen`` the bytes it has in the payload, which holds every
#: packet's captured bytes back to back. ``packet_rows`` and ``split_packets`` read it. Its
#: ``seq`` numbers packets, not batches: the next batch's is this one's plus its packet count
#: (``seq_width``), so a gap counts the packets lost.
NET_BATCH_KEYS = {
    "contexts": (list,),
    "packets": (list,),
}

KIND_KEYS: dict[bytes, dict[str, tuple[type, ...]]] = {
    TOPIC_FILE_WRITE: FILE_KEYS,
    TOPIC_FILE_READ: FILE_KEYS,
    TOPIC_EXEC: {**OBJECT_KEYS, **EXEC_KEYS},
    TOPIC_MEM: {**OBJECT_KEYS, **MEM_KEYS},
    TOPIC_MODULE: {**OBJECT_KEYS, **MODULE_KEYS},
    TOPIC_BPF: {**OBJECT_KEYS, **BPF_KEYS},
    TOPIC_NET_PACKET: NET_KEYS,
    TOPIC_NET_PACKETS: NET_BATCH_KEYS,
    # proc.: process events; ``event`` names which ("exec": then the EXEC_KEYS too; "fork":
    # child_pid, child_ns_pid, child_start; "exit": exit_code, signal, wait_status)
    TOPIC_PROC: {"event": (str,)},
}

#: The largest message a consumer accepts; bigger ones are dropped and counted.
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


class BadMessage(ValueError):
    """A bus message that does not follow this contract; the reason says which rule it broke."""


@dataclass(frozen=True)
class Message:
    """One bus message as ``decode`` returns it: the envelope has passed the version, key and
    type checks of its topic; ``payload`` is empty when the message carries none."""

    topic: bytes
    env: dict[str, Any]
    payload: bytes


_OBJECT_TOPICS = (TOPIC_EXEC, TOPIC_MEM, TOPIC_MODULE, TOPIC_BPF)


def loss_notice(topic: bytes, env: dict[str, Any], size: int) -> dict[str, Any] | None:
    """The envelope that replaces a payload message the collector could not send (its bus
    backlog was full): the same keys, and the ``size`` bytes it carried as a ``lost`` range,
    so that writers list exactly those bytes as missing. None for topics whose messages
    cannot say so (packets); those are skipped and show as a seq gap."""
    if topic in (TOPIC_FILE_WRITE, TOPIC_FILE_READ):
        start = env["off"]
    elif topic in _OBJECT_TOPICS:
        start = env["obj_off"]
    else:
        return None
    return dict(env, lost=[[start, start + size]])


def encode(
    topic: bytes, env: dict[str, Any], payload: bytes | bytearray | memoryview | None = None
) -> list:
    """The frames to pass to ``send_multipart`` for one message."""
    frames: list = [topic, msgpack.packb(env, use_bin_type=True)]
    if payload is not None:
        frames.append(payload)
    return frames


def decode(frames: list[bytes]) -> Message:
    """Validate and decode a multipart message; raise BadMessage on anything unexpected.

    Unknown keys are kept (consumers ignore what they do not know); missing or mistyped known
    keys, a foreign version, oversized frames and undecodable msgpack are all rejected.
    """
    if len(frames) not in (2, 3):
        raise BadMessage(f"expected 2 or 3 frames, got {len(frames)}")
    topic, raw_env = bytes(frames[0]), frames[1]
    payload = bytes(frames[2]) if len(frames) == 3 else b""
    if not topic.endswith(b"."):
        raise BadMessage(f"topic {topic[:64]!r} does not end with '.'")
    if len(raw_env) > MAX_ENVELOPE_BYTES:
        raise BadMessage(f"envelope of {len(raw_env)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadMessage(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        env = msgpack.unpackb(raw_env, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise BadMessage(f"envelope is not msgpack: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(env, dict):
        raise BadMessage(f"envelope is a {type(env).__name__}, not a map")
    if env.get("v") != VERSION:
        raise BadMessage(f"envelope version {env.get('v')!r}, expected {VERSION}")
    for key, types, bool_ok in _required(topic):
        value = env.get(key, _MISSING)
        if value is _MISSING:
            raise BadMessage(f"envelope lacks {key!r}")
        if not isinstance(value, types) or (type(value) is bool and not bool_ok):
            raise BadMessage(f"envelope key {key!r} has type {type(value).__name__}")
    return Message(topic, env, payload)


#: A ``net.packets.`` row's fields, in order.
PACKET_ROW = ("ts", "context", "ifindex", "orig_len", "cookie", "caplen", "protocols")
ROW_TS, ROW_CONTEXT, ROW_IFINDEX, ROW_ORIG_LEN, ROW_COOKIE, ROW_CAPLEN, ROW_PROTOCOLS = range(7)
#: The keys every context of a ``net.packets.`` batch carries (CONTAINER_KEYS are optional).
CONTEXT_KEYS: dict[str, tuple[type, ...]] = {
    **{key: COMMON_KEYS[key] for key in ("pid", "tid", "ppid", "uid", "comm", "cgroup_id")},
    "container_id": (str,),
    "start_time": (int,),
    "direction": (str,),
}
_CONTEXT_CHECKS = tuple((key, types) for key, types in CONTEXT_KEYS.items())
_ROW_INTS = (ROW_TS, ROW_CONTEXT, ROW_IFINDEX, ROW_ORIG_LEN, ROW_COOKIE, ROW_CAPLEN)

#: One packet of a batch: its context (shared with the batch's other packets of that owner and
#: direction: do not change it), its row and its captured bytes.
BatchPacket = tuple[dict[str, Any], list[Any], bytes]


def packet_rows(msg: Message) -> list[BatchPacket]:
    """The packets of a decoded ``net.packets.`` message, in order; BadMessage when the batch
    does not hold together (a row that is not PACKET_ROW's ints and list, a context index out of
    range, a context without CONTEXT_KEYS' types, captured lengths that do not add up to the
    payload): then none of it is taken, since its bytes can no longer be told apart. Values
    (a direction, orig_len against caplen) are the consumer's to check, as for ``net.packet.``.
    """
    contexts, rows, payload = msg.env["contexts"], msg.env["packets"], msg.payload
    for ctx in contexts:
        if not isinstance(ctx, dict):
            raise BadMessage(f"a packet context is a {type(ctx).__name__}, not a map")
        for key, types in _CONTEXT_CHECKS:
            value = ctx.get(key, _MISSING)
            if not isinstance(value, types) or type(value) is bool:
                raise BadMessage(f"packet context key {key!r} is {type(value).__name__}")
    out: list[BatchPacket] = []
    at, count = 0, len(contexts)
    for row in rows:
        if type(row) is not list or len(row) != len(PACKET_ROW):
            raise BadMessage(f"packet row {row!r:.80} is not {len(PACKET_ROW)} fields")
        for i in _ROW_INTS:
            if type(row[i]) is not int:
                raise BadMessage(f"packet row field {PACKET_ROW[i]!r} is {type(row[i]).__name__}")
        if type(row[ROW_PROTOCOLS]) is not list:
            raise BadMessage("packet row field 'protocols' is not a list")
        ctx_index, caplen = row[ROW_CONTEXT], row[ROW_CAPLEN]
        if not 0 <= ctx_index < count:
            raise BadMessage(f"packet context {ctx_index} of {count}")
        if caplen < 0 or at + caplen > len(payload):
            raise BadMessage(f"packet of {caplen} bytes at {at}: payload of {len(payload)}")
        out.append((contexts[ctx_index], row, payload[at : at + caplen]))
        at += caplen
    if at != len(payload):
        raise BadMessage(f"{len(payload) - at} payload bytes belong to no packet")
    return out


def seq_width(topic: bytes, env: dict[str, Any]) -> int:
    """How far a message moves its topic's ``seq``: 1, but for a ``net.packets.`` batch the
    number of its packets, so that its ``seq`` numbers packets (the batch's first) and a gap
    says how many packets were lost, not how many batches."""
    if topic == TOPIC_NET_PACKETS:
        rows = env.get("packets")
        return max(len(rows), 1) if isinstance(rows, list) else 1
    return 1


def split_packets(msg: Message) -> list[Message]:
    """A ``net.packets.`` batch as the ``net.packet.`` messages its packets would have been
    (each with the batch's ``epoch``, and ``seq`` its number: the batch's ``seq`` plus its
    place in the batch); BadMessage as ``packet_rows``."""
    v, epoch, seq = msg.env["v"], msg.env["epoch"], msg.env["seq"]
    return [
        Message(
            TOPIC_NET_PACKET,
            {
                "v": v,
                "epoch": epoch,
                "seq": seq + i,
                **ctx,
                "ts": row[ROW_TS],
                "ifindex": row[ROW_IFINDEX],
                "orig_len": row[ROW_ORIG_LEN],
                "cookie": row[ROW_COOKIE],
                "protocols": row[ROW_PROTOCOLS],
            },
            data,
        )
        for i, (ctx, row, data) in enumerate(packet_rows(msg))
    ]


_MISSING = object()
#: The checks of each topic seen (a few: the bus has nine), bounded against a peer that sends
#: many made-up topics: key, accepted types, whether a bool is one of them.
_REQUIRED: dict[bytes, tuple[tuple[str, tuple[type, ...], bool], ...]] = {}
_REQUIRED_MAX = 64


def _required(topic: bytes) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    """The keys ``topic``'s envelope must carry: COMMON_KEYS and those of every KIND_KEYS
    prefix it starts with; computed once per topic (it was a third of a packet's decode)."""
    checks = _REQUIRED.get(topic)
    if checks is None:
        required = dict(COMMON_KEYS)
        for prefix, keys in KIND_KEYS.items():
            if topic.startswith(prefix):
                required.update(keys)
        checks = tuple((key, types, bool in types) for key, types in required.items())
        if len(_REQUIRED) < _REQUIRED_MAX:
            _REQUIRED[topic] = checks
    return checks


# -- value checks ------------------------------------------------------------------------------
#
# ``decode`` checks that the keys are there with the right types; these check that the values
# can describe a real transfer or object, before any consumer hands them to ``pwrite``. They are
# part of the contract so that a third-party consumer refuses exactly what tracecap's writers do.

#: Offsets beyond this are refused: Python ints are unbounded, ``off_t`` is not.
MAX_OFFSET = 1 << 62
#: The largest object accepted. Bigger than any binary, module or region we expect, and small
#: enough that hashing the (possibly sparse) result cannot stall a writer for minutes.
MAX_OBJECT_BYTES = 4 << 30


class BadFileMessage(ValueError):
    """A file message that decodes but cannot describe a real transfer (negative offset...)."""


class BadObjectMessage(ValueError):
    """An object message that decodes but cannot describe a real object."""


def parse_lost(value: object) -> list[tuple[int, int]]:
    """Validate the optional ``lost`` key: a short list of ``[start, end)`` pairs."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or len(value) > 4096:
        raise BadFileMessage("lost is not a list of at most 4096 ranges")
    out = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or any(type(v) is not int for v in item)
            or not 0 <= item[0] < item[1] <= MAX_OFFSET
        ):
            raise BadFileMessage(f"bad lost range {item!r:.80}")
        out.append((item[0], item[1]))
    return out


def check_transfer(env: dict[str, Any], length: int) -> None:
    """Refuse offsets that no real syscall produces, before they reach ``pwrite``.

    For a positional file a chunk cannot start before its syscall does (``off >= io_off``);
    streams carry collector-defined offsets, so only the bounds are checked for them.
    """
    off, io_off, io_len = env["off"], env["io_off"], env["io_len"]
    if off < 0 or off + length > MAX_OFFSET:
        raise BadFileMessage(f"offset {off} (+{length}) out of range")
    if not (0 <= io_off <= io_len <= MAX_OFFSET):
        raise BadFileMessage(f"io_off {io_off} / io_len {io_len} out of range")
    if io_off > off and not env["append"]:
        raise BadFileMessage(f"io_off {io_off} beyond file offset {off}")
    count = env.get("io_count", 1)
    if type(count) is not int or not 0 <= count <= max(io_len, 1):
        raise BadFileMessage(f"io_count {count!r:.40} out of range")


#: The values of a file message's ``source``.
#: Read back by the collector from a file that still held them (copy_file_range, sendfile, splice,
#: io_uring SPLICE: no user buffer carried them).
SOURCE_READBACK = "readback"
#: A shared file mapping's dirty pages, copied from the mapping at msync, munmap or the process's
#: exit (bpf/mappings.bpf.h): the page cache's bytes as the process left them.
SOURCE_MAPPING = "mapping"
FILE_SOURCES = (SOURCE_READBACK, SOURCE_MAPPING)


def parse_source(env: dict[str, Any]) -> str | None:
    """A file message's optional ``source``: None for bytes from the syscall itself."""
    source = env.get("source")
    if source is not None and source not in FILE_SOURCES:
        raise BadFileMessage(f"unknown source {source!r:.40}")
    return source


#: The most ``lost_unsized`` one message may carry (the kernel counts them in 32 bits).
MAX_LOST_UNSIZED = (1 << 32) - 1


def parse_extent(env: dict[str, Any]) -> int | None:
    """A file message's ``extent``: None for a transfer; for the collector's announcement at
    stop, the file offset after the last byte of the artifact it published or reported lost
    (such a message has no payload and an empty transfer)."""
    extent = env.get("extent")
    if extent is None:
        return None
    if type(extent) is not int or not 0 <= extent <= MAX_OFFSET:
        raise BadFileMessage(f"extent {extent!r:.40} out of range")
    if env["io_len"] != 0:
        raise BadFileMessage(f"an extent announcement with io_len {env['io_len']}")
    return extent


def parse_lost_unsized(env: dict[str, Any]) -> int:
    """A file message's optional ``lost_unsized``: transfers lost whose size is unknown."""
    count = env.get("lost_unsized", 0)
    if type(count) is not int or not 0 <= count <= MAX_LOST_UNSIZED:
        raise BadFileMessage(f"lost_unsized {count!r:.40} out of range")
    return count


def check_object(env: dict[str, Any]) -> list[tuple[int, int]]:
    """Refuse sizes and offsets no real object has, before they reach ``pwrite``; return the
    message's ``lost`` ranges. ``ts`` and ``pid`` name artifacts, so they must be non-negative."""
    obj_off, obj_len = env["obj_off"], env["obj_len"]
    if not 0 <= obj_len <= MAX_OBJECT_BYTES:
        raise BadObjectMessage(f"obj_len {obj_len} outside [0, {MAX_OBJECT_BYTES}]")
    if not 0 <= obj_off <= MAX_OBJECT_BYTES:
        raise BadObjectMessage(f"obj_off {obj_off} outside [0, {MAX_OBJECT_BYTES}]")
    if env["ts"] < 0 or env["pid"] < 0:
        raise BadObjectMessage(f"negative ts {env['ts']} or pid {env['pid']}")
    if not isinstance(env.get("ok", True), bool):
        raise BadObjectMessage(f"ok is a {type(env['ok']).__name__}, not a bool")
    return parse_lost(env.get("lost"))
