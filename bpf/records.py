"""Python side of bpf/records.h: decoders for ring-buffer records and the .rodata config encoder.

Pure functions over bytes. tests/unit/bpf/test_records_abi.py checks every size and offset here
against the BTF of the compiled object, so the two sides cannot drift apart silently.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

COMM_LEN = 16
PATH_BUF = 512
NAME_SLACK = 256
CHUNK = 32768
MAX_PREFIXES = 3
PREFIX_LEN = 64
FILENAME_BUF = 4096
ARGV_BUF = 4096
PARAMS_BUF = 256
PROG_NAME_LEN = 16

REC_FILE_EVENT = 1
REC_FILE_DATA = 2
REC_OBJ_DATA = 3
REC_EXEC_EVENT = 4
REC_MEM_EVENT = 5
REC_MODULE_EVENT = 6
REC_BPF_EVENT = 7
REC_PACKET = 8
REC_SOCK_OWNER = 9
REC_FILE_CONT = 10
PKT_DIRECTIONS = ("egress", "ingress")

MEM_SYSCALLS = ("mprotect", "pkey_mprotect", "mmap")
MODULE_SYSCALLS = ("init_module", "finit_module")
EXEC_ARGV_TRUNCATED = 1
EXEC_FILENAME_TRUNCATED = 2

SYSCALLS = (
    "write",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev2",
    "read",
    "pread64",
    "readv",
    "preadv",
    "preadv2",
)
DIR_WRITE, DIR_READ = 0, 1

COUNTERS = (
    "events",
    "event_drops",
    "chunks",
    "chunk_drops",
    "bytes",
    "dropped_bytes",
    "pending_full",
    "drop_table_full",
)
#: Counter blocks, in enum tc_counter_kind order.
COUNTER_KINDS = ("write", "read", "exec", "mem", "module", "bpf", "net")
NUM_COUNTERS = len(COUNTER_KINDS) * len(COUNTERS)

TYPE_BITS = {"regular": 1, "pipe": 2, "socket": 4, "elf": 8}
SCOPE_COMM, SCOPE_COMM_NOT, SCOPE_PID, SCOPE_UID, SCOPE_FOLLOW = 1, 2, 4, 8, 16
SCOPE_CONTAINER, SCOPE_HOST = 32, 64

EV_PATH_TRUNCATED = 1
EV_APPEND = 2
DATA_UNREADABLE = 1

HDR = struct.Struct("<IIQIIIIQIIII16s")
#: Fields of HDR when unpacked; a record's own fields follow.
_HF = 13
FILE_EVENT = struct.Struct(f"<{HDR.format[1:]}QQQQIIiHBBII{PATH_BUF + NAME_SLACK}s")
FILE_DATA = struct.Struct("<IIQQII")
FILE_CONT = struct.Struct("<IIQQQQQ")
#: A continuation as the kernel sends it: the tc_file_cont, then its first chunk's tc_file_data.
FILE_CONT_AND_DATA = struct.Struct(f"<{FILE_CONT.format[1:]}{FILE_DATA.format[1:]}")
FILE_FILTER = struct.Struct(f"<IIII{MAX_PREFIXES}II{PREFIX_LEN * MAX_PREFIXES}s")
CONFIG = struct.Struct(f"<II{FILE_FILTER.size * 2}sIi")
EXEC_EVENT = struct.Struct(f"<{HDR.format[1:]}QQIIIIII{FILENAME_BUF}s{ARGV_BUF}s")
MEM_EVENT = struct.Struct(f"<{HDR.format[1:]}QQQQIIII")
MODULE_EVENT = struct.Struct(f"<{HDR.format[1:]}QqQQQIiIIII{PARAMS_BUF}s{PATH_BUF}s")
BPF_EVENT = struct.Struct(f"<{HDR.format[1:]}QqQII{PROG_NAME_LEN}s")
PACKET = struct.Struct(f"<IIQQQQIIIIIIII{COMM_LEN}s")
SOCK_OWNER = struct.Struct(f"<{HDR.format[1:]}QQII")
DROP_KEY = struct.Struct("<QQII")
DROP_VAL = struct.Struct("<QQQQII")

#: Field offsets the ABI test compares with the object's BTF: {struct: {field: offset}}.
LAYOUT: dict[str, dict[str, int]] = {
    "tc_hdr": {
        "kind": 0,
        "cpu": 4,
        "ts": 8,
        "pid": 16,
        "tid": 20,
        "ppid": 24,
        "uid": 28,
        "cgroup_id": 32,
        "ns_pid": 40,
        "ns_tid": 44,
        "ns_ppid": 48,
        "comm": 56,
    },
    "tc_file_event": {
        "h": 0,
        "io_id": 72,
        "io_len": 80,
        "pos": 88,
        "inode": 96,
        "dev": 104,
        "mode": 108,
        "fd": 112,
        "syscall": 116,
        "direction": 118,
        "flags": 119,
        "path_len": 120,
        "generation": 124,
        "path": 128,
    },
    "tc_file_data": {"kind": 0, "len": 4, "io_id": 8, "io_off": 16, "want": 24, "flags": 28},
    "tc_file_cont": {
        "kind": 0,
        "cpu": 4,
        "ts": 8,
        "io_id": 16,
        "prev_io_id": 24,
        "io_len": 32,
        "pos": 40,
    },
    "tc_file_filter": {
        "enabled": 0,
        "types": 4,
        "fds": 8,
        "npaths": 12,
        "path_len": 16,
        "paths": 32,
    },
    "tc_config": {
        "excluded_uid": 0,
        "scope_flags": 4,
        "filters": 8,
        "net_ifindex": 456,
        "snaplen": 460,
    },
    "tc_exec_event": {
        "h": 0,
        "inode": 72,
        "ctime": 80,
        "dev": 88,
        "mode": 92,
        "filename_len": 96,
        "argv_len": 100,
        "flags": 104,
        "filename": 112,
        "argv": 4208,
    },
    "tc_mem_event": {
        "h": 0,
        "obj_id": 72,
        "addr": 80,
        "len": 88,
        "captured": 96,
        "prot_before": 104,
        "prot_after": 108,
        "syscall": 112,
    },
    "tc_module_event": {
        "h": 0,
        "obj_id": 72,
        "ret": 80,
        "len": 88,
        "captured": 96,
        "inode": 104,
        "dev": 112,
        "fd": 116,
        "syscall": 120,
        "params_len": 124,
        "path_len": 128,
        "flags": 132,
        "params": 136,
        "path": 392,
    },
    "tc_bpf_event": {
        "h": 0,
        "obj_id": 72,
        "ret": 80,
        "captured": 88,
        "insn_cnt": 96,
        "prog_type": 100,
        "prog_name": 104,
    },
    "tc_drop_key": {"inode": 0, "cgroup_id": 8, "dev": 16, "direction": 20},
    "tc_packet": {
        "kind": 0,
        "len": 4,
        "ts": 8,
        "cookie": 16,
        "cgroup_id": 24,
        "owner_start": 32,
        "orig_len": 40,
        "ifindex": 44,
        "direction": 48,
        "owner_pid": 52,
        "owner_tid": 56,
        "owner_ppid": 60,
        "owner_uid": 64,
        "owner_comm": 72,
    },
    "tc_sock_owner": {"h": 0, "cookie": 72, "start_time": 80, "in_scope": 88},
    "tc_drop_val": {"bytes": 0, "lo": 8, "hi": 16, "ios": 24, "append": 32},
}
SIZES = {
    "tc_hdr": HDR.size,
    "tc_file_event": FILE_EVENT.size,
    "tc_file_data": FILE_DATA.size,
    "tc_file_cont": FILE_CONT.size,
    "tc_file_filter": FILE_FILTER.size,
    "tc_config": CONFIG.size,
    "tc_exec_event": EXEC_EVENT.size,
    "tc_mem_event": MEM_EVENT.size,
    "tc_module_event": MODULE_EVENT.size,
    "tc_bpf_event": BPF_EVENT.size,
    "tc_drop_key": DROP_KEY.size,
    "tc_packet": PACKET.size,
    "tc_sock_owner": SOCK_OWNER.size,
    "tc_drop_val": DROP_VAL.size,
}


class RecordError(ValueError):
    """A ring-buffer record that is too short or of an unknown kind."""


class Header(NamedTuple):
    kind: int
    cpu: int
    ts: int
    pid: int
    tid: int
    ppid: int
    uid: int
    cgroup_id: int
    comm: bytes
    ns_pid: int = 0
    ns_tid: int = 0
    ns_ppid: int = 0


class FileEvent(NamedTuple):
    hdr: Header
    io_id: int
    io_len: int
    pos: int
    inode: int
    dev: int
    mode: int
    fd: int
    syscall: str
    direction: int
    flags: int
    path: bytes
    generation: int = 0

    @property
    def append(self) -> bool:
        return bool(self.flags & EV_APPEND)


class FileData(NamedTuple):
    io_id: int
    io_off: int
    want: int
    unreadable: bool
    data: bytes | memoryview  # may view ring memory: valid only while the record is handled


class FileCont(NamedTuple):
    """A syscall that continues ``prev_io_id``: same thread, open file and context. It carries
    its first chunk; the others come as FileData records."""

    ts: int
    io_id: int
    prev_io_id: int
    io_len: int
    pos: int
    first: FileData


class ExecEvent(NamedTuple):
    hdr: Header
    inode: int
    ctime: int
    dev: int
    mode: int
    filename: bytes
    argv: tuple[bytes, ...]
    argv_truncated: bool


class MemEvent(NamedTuple):
    hdr: Header
    obj_id: int
    addr: int
    length: int
    captured: int
    prot_before: int
    prot_after: int
    syscall: str


class ModuleEvent(NamedTuple):
    hdr: Header
    obj_id: int
    ret: int
    length: int
    captured: int
    inode: int
    dev: int
    fd: int
    syscall: str
    params: bytes
    path: bytes


class BpfEvent(NamedTuple):
    hdr: Header
    obj_id: int
    ret: int
    captured: int
    insn_cnt: int
    prog_type: int
    prog_name: bytes


_KIND = struct.Struct("<I")


def record_kind(raw: bytes | memoryview) -> int:
    if len(raw) < 4:
        raise RecordError(f"record of {len(raw)} bytes has no kind")
    return _KIND.unpack_from(raw)[0]


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def decode_file_event(raw: bytes) -> FileEvent:
    if len(raw) < FILE_EVENT.size:
        raise RecordError(f"file event of {len(raw)} bytes, expected {FILE_EVENT.size}")
    f = FILE_EVENT.unpack_from(raw)
    hdr = _header(f)
    (io_id, io_len, pos, inode, dev, mode, fd, sc, direction, flags, path_len, generation, path) = (
        f[_HF:]
    )
    if sc >= len(SYSCALLS):
        raise RecordError(f"file event with unknown syscall {sc}")
    return FileEvent(
        hdr,
        io_id,
        io_len,
        pos,
        inode,
        dev,
        mode,
        fd,
        SYSCALLS[sc],
        direction,
        flags,
        _cstr(path[: min(path_len, PATH_BUF)]),
        generation,
    )


def decode_file_data(raw: bytes | memoryview, at: int = 0) -> FileData:
    """The tc_file_data at ``raw[at:]`` (a record of its own, or a continuation's tail). The
    chunk's bytes are a slice of ``raw``: a view when ``raw`` is one."""
    if len(raw) < at + FILE_DATA.size:
        raise RecordError(f"file data of {len(raw) - at} bytes, expected at least {FILE_DATA.size}")
    _kind, length, io_id, io_off, want, flags = FILE_DATA.unpack_from(raw, at)
    start = at + FILE_DATA.size
    data = raw[start : start + length]
    if len(data) != length:
        raise RecordError(f"file data says {length} bytes, record holds {len(data)}")
    return FileData(io_id, io_off, want, bool(flags & DATA_UNREADABLE), data)


def decode_file_cont(raw: bytes | memoryview) -> FileCont:
    """A continuation and the first chunk behind it, in one unpack (the per-record path)."""
    if len(raw) < FILE_CONT_AND_DATA.size:
        raise RecordError(
            f"file continuation of {len(raw)} bytes, expected at least {FILE_CONT_AND_DATA.size}"
        )
    fields = FILE_CONT_AND_DATA.unpack_from(raw)
    _kind, _cpu, ts, io_id, prev_io_id, io_len, pos = fields[:7]
    _data_kind, length, data_io_id, io_off, want, flags = fields[7:]
    if data_io_id != io_id:
        raise RecordError(f"file continuation {io_id} carries data of {data_io_id}")
    # A view, not a copy: the collector copies these bytes once, into the run they join.
    data = memoryview(raw)[FILE_CONT_AND_DATA.size : FILE_CONT_AND_DATA.size + length]
    if len(data) != length:
        raise RecordError(f"file data says {length} bytes, record holds {len(data)}")
    first = FileData(io_id, io_off, want, bool(flags & DATA_UNREADABLE), data)
    return FileCont(ts, io_id, prev_io_id, io_len, pos, first)


def whole_file_cont(
    raw: bytes | memoryview,
) -> tuple[int, int, int, int, bytes | memoryview] | None:
    """(ts, io_id, prev_io_id, pos, data) of a continuation whose first chunk is its syscall's
    every byte, all readable; None for any other (or malformed) one, which
    ``decode_file_cont`` then handles. The collector's hot path: no record objects, and
    ``data`` is a slice of ``raw`` (a view of the ring when ``raw`` is one)."""
    if len(raw) < FILE_CONT_AND_DATA.size:
        return None
    (_k, _c, ts, io_id, prev_io_id, io_len, pos, _dk, length, data_io_id, io_off, want, flags) = (
        FILE_CONT_AND_DATA.unpack_from(raw)
    )
    if (
        length != io_len
        or want != length
        or io_off
        or flags
        or data_io_id != io_id
        or len(raw) < FILE_CONT_AND_DATA.size + length
    ):
        return None
    start = FILE_CONT_AND_DATA.size
    return ts, io_id, prev_io_id, pos, raw[start : start + length]


def _need(raw: bytes, layout: struct.Struct, what: str) -> tuple:
    if len(raw) < layout.size:
        raise RecordError(f"{what} of {len(raw)} bytes, expected {layout.size}")
    return layout.unpack_from(raw)


def _header(fields: tuple) -> Header:
    ns_pid, ns_tid, ns_ppid, _pad, comm = fields[8:_HF]
    return Header(*fields[:8], _cstr(comm), ns_pid, ns_tid, ns_ppid)


def decode_exec_event(raw: bytes) -> ExecEvent:
    f = _need(raw, EXEC_EVENT, "exec event")
    inode, ctime, dev, mode, filename_len, argv_len, flags, _pad, filename, argv = f[_HF:]
    args = argv[: min(argv_len, ARGV_BUF)]
    argv_items = tuple(args.rstrip(b"\0").split(b"\0")) if args.strip(b"\0") else ()
    return ExecEvent(
        _header(f),
        inode,
        ctime,
        dev,
        mode,
        filename[: min(filename_len, FILENAME_BUF)],
        argv_items,
        bool(flags & EXEC_ARGV_TRUNCATED),
    )


def decode_mem_event(raw: bytes) -> MemEvent:
    f = _need(raw, MEM_EVENT, "mem event")
    obj_id, addr, length, captured, before, after, sc, _pad = f[_HF:]
    if sc >= len(MEM_SYSCALLS):
        raise RecordError(f"mem event with unknown syscall {sc}")
    return MemEvent(_header(f), obj_id, addr, length, captured, before, after, MEM_SYSCALLS[sc])


def decode_module_event(raw: bytes) -> ModuleEvent:
    f = _need(raw, MODULE_EVENT, "module event")
    (obj_id, ret, length, captured, inode, dev, fd, sc, params_len, path_len, _flags, params,
     path) = f[_HF:]  # fmt: skip
    if sc >= len(MODULE_SYSCALLS):
        raise RecordError(f"module event with unknown syscall {sc}")
    return ModuleEvent(
        _header(f),
        obj_id,
        ret,
        length,
        captured,
        inode,
        dev,
        fd,
        MODULE_SYSCALLS[sc],
        params[: min(params_len, PARAMS_BUF)],
        path[: min(path_len, PATH_BUF)],
    )


def decode_bpf_event(raw: bytes) -> BpfEvent:
    f = _need(raw, BPF_EVENT, "bpf event")
    obj_id, ret, captured, insn_cnt, prog_type, name = f[_HF:]
    return BpfEvent(_header(f), obj_id, ret, captured, insn_cnt, prog_type, _cstr(name))


class DroppedIo(NamedTuple):
    """What the syscalls whose events were dropped did to one file (the file_drops map)."""

    inode: int
    cgroup_id: int
    dev: int
    direction: int
    bytes: int
    lo: int
    hi: int
    ios: int
    append: bool


def decode_dropped_io(key: bytes, value: bytes) -> DroppedIo:
    inode, cgroup_id, dev, direction = DROP_KEY.unpack_from(key)
    nbytes, lo, hi, ios, append, _pad = DROP_VAL.unpack_from(value)
    return DroppedIo(inode, cgroup_id, dev, direction, nbytes, lo, hi, ios, bool(append))


class Packet(NamedTuple):
    ts: int
    cookie: int
    cgroup_id: int
    owner_start: int
    orig_len: int
    ifindex: int
    direction: str
    owner_pid: int
    owner_tid: int
    owner_ppid: int
    owner_uid: int
    owner_comm: bytes
    data: bytes


class SockOwner(NamedTuple):
    hdr: Header
    cookie: int
    start_time: int
    in_scope: bool


def decode_packet(raw: bytes) -> Packet:
    f = _need(raw, PACKET, "packet")
    (_kind, length, ts, cookie, cgroup_id, start, orig_len, ifindex, direction, pid, tid, ppid,
     uid, _pad, comm) = f  # fmt: skip
    if direction >= len(PKT_DIRECTIONS):
        raise RecordError(f"packet with unknown direction {direction}")
    data = raw[PACKET.size : PACKET.size + length]
    if len(data) != length:
        raise RecordError(f"packet says {length} bytes, record holds {len(data)}")
    return Packet(
        ts, cookie, cgroup_id, start, orig_len, ifindex, PKT_DIRECTIONS[direction], pid, tid,
        ppid, uid, _cstr(comm), data,
    )  # fmt: skip


def decode_sock_owner(raw: bytes) -> SockOwner:
    f = _need(raw, SOCK_OWNER, "socket owner")
    cookie, start_time, in_scope, _pad = f[_HF:]
    return SockOwner(_header(f), cookie, start_time, bool(in_scope))


def encode_file_filter(
    enabled: bool, paths: tuple[bytes, ...], types: frozenset[str], fds: frozenset[int]
) -> bytes:
    if len(paths) > MAX_PREFIXES or any(len(p) >= PREFIX_LEN for p in paths):
        raise ValueError(f"at most {MAX_PREFIXES} path prefixes of under {PREFIX_LEN} bytes")
    lens = [len(p) for p in paths] + [0] * (MAX_PREFIXES - len(paths))
    blob = b"".join(p.ljust(PREFIX_LEN, b"\0") for p in paths).ljust(
        PREFIX_LEN * MAX_PREFIXES, b"\0"
    )
    type_bits = sum(TYPE_BITS[t] for t in types)
    fd_bits = sum(1 << fd for fd in fds)
    return FILE_FILTER.pack(int(enabled), type_bits, fd_bits, len(paths), *lens, 0, blob)


def encode_config(
    excluded_uid: int,
    scope_flags: int,
    write: bytes,
    read: bytes,
    net_ifindex: int = 0,
    snaplen: int = -1,
) -> bytes:
    return CONFIG.pack(excluded_uid & 0xFFFFFFFF, scope_flags, write + read, net_ifindex, snaplen)


def decode_counters(per_cpu_values: list[list[int]]) -> dict[str, int]:
    """Sum per-CPU counter slots into {"write.events": n, "exec.event_drops": n, ...}."""
    out: dict[str, int] = {}
    for k, prefix in enumerate(COUNTER_KINDS):
        for i, name in enumerate(COUNTERS):
            idx = k * len(COUNTERS) + i
            out[f"{prefix}.{name}"] = sum(cpu[idx] for cpu in per_cpu_values)
    return out
