"""Python side of bpf/records.h: decoders for ring-buffer records and the .rodata config encoder.

Each struct is declared once, as a CStruct (its members and their formats); the Structs the
decoders unpack with and the offsets and sizes that tests/unit/bpf/test_records_abi.py checks
against the BTF of the compiled object are all built from it, so the two sides cannot drift
apart silently. The decoders are pure functions over bytes; those on the hot paths (file
contents, packets) unpack positionally, the others by name.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any, NamedTuple

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
REC_FILE_XFER = 11
REC_FORK = 12
REC_EXIT = 13
PKT_DIRECTIONS = ("egress", "ingress")
#: tc_sock_adopt's results (enum tc_adopt_result), in order.
ADOPT_RESULTS = ("owned", "known", "no_task", "full")

MEM_SYSCALLS = ("mprotect", "pkey_mprotect", "mmap", "munmap", "exit")
#: enum tc_mem_alert in value order: (name, the alert text Tracee prints for it; types/trace
#: MemProtAlert of Tracee v0.17).
MEM_ALERTS = (
    ("none", ""),
    ("mmap_w_x", "Mmaped region with W+E permissions!"),
    ("mprot_x_add", "Protection changed to Executable!"),
    ("mprot_w_add", "Protection changed from E to W+E!"),
    ("mprot_w_rem", "Protection changed from W to E!"),
)
#: enum tc_mem_dump in value order: what became of a mem event's region bytes.
MEM_DUMPS = ("none", "sent", "repeat", "budget")
#: enum tc_mem_counter: the per-CPU ``mem_counters`` map, reported as ``mem.<name>``.
MEM_COUNTERS = (
    "alerts",
    "unexamined",
    "repeats",
    "skipped_events",
    "skipped_dumps",
    "skipped_bytes",
    "zero_bytes",
    "rwx_tracked",
    "rwx_empty",
    "table_full",
)
MODULE_SYSCALLS = ("init_module", "finit_module")
MOD_MAPPED = 2
MOD_MAP_SHARED = 4
MOD_MAP_WRITTEN = 8
MOD_KREAD_IMAGE = 16
MOD_KREAD = 32
EXEC_ARGV_TRUNCATED = 1
EXEC_FILENAME_TRUNCATED = 2
EXEC_MEMFD = 4
EXEC_DELETED = 8
EXEC_COPIED = 16
EXEC_SCRIPT = 32
EXEC_SCRIPT_FILE = 64
EXEC_SCRIPT_MEMFD = 128
EXEC_SCRIPT_DELETED = 256
EXEC_SCRIPT_COPIED = 512
EXEC_SCRIPT_PATH_TRUNCATED = 1024
EXEC_INTERP_TRUNCATED = 2048
EXEC_PATH_TRUNCATED = 4096
EXEC_FROM_KERNEL = 8192

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
    "copy_file_range",
    "sendfile",
    "splice",
    "io_uring_write",
    "io_uring_writev",
    "io_uring_write_fixed",
    "io_uring_read",
    "io_uring_readv",
    "io_uring_read_fixed",
    "sendto",
    "sendmsg",
    "recvfrom",
    "recvmsg",
    "io_uring_send",
    "io_uring_sendmsg",
    "io_uring_recv",
    "io_uring_recvmsg",
    "sendmmsg",
    "recvmmsg",
    "vmsplice",
    "tee",
    "io_uring_splice",
    "io_uring_tee",
    "msync",
    "munmap",
    "exit",
)
#: The syscalls whose bytes are a shared file mapping's dirty pages (bpf/mappings.bpf.h).
MAPPING_SYSCALLS = frozenset({"msync", "munmap", "exit"})
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
    "map_unwalked",
)
#: Counter blocks, in enum tc_counter_kind order: one per capture source (tracecap/kinds.py),
#: then ``proc``, the fork and exit records every capture sends.
COUNTER_KINDS = ("write", "read", "exec", "mem", "module", "bpf", "net", "proc")
NUM_COUNTERS = len(COUNTER_KINDS) * len(COUNTERS)

TYPE_BITS = {"regular": 1, "pipe": 2, "socket": 4, "elf": 8}
SCOPE_COMM, SCOPE_COMM_NOT, SCOPE_PID, SCOPE_UID, SCOPE_FOLLOW = 1, 2, 4, 8, 16
SCOPE_CONTAINER, SCOPE_HOST = 32, 64

EV_PATH_TRUNCATED = 1
EV_APPEND = 2
DATA_UNREADABLE = 1
DATA_ZERO = 2


class CStruct:
    """One struct of records.h, declared once as its members in C order: ``(name, format)``,
    the format being the ``struct`` code of the whole member (``"I"`` for __u32, ``"i"`` for
    __s32, ``"16s"`` for char[16], ``"3I"`` for __u32[3]) or the CStruct of a nested struct.
    Members named ``_pad...`` are the C side's explicit padding. With ``prefix_nested`` a
    nested struct's values are named ``<member>_<name>`` (for structs that nest one struct
    twice, or two that share member names).

    Everything Python knows of the struct's layout derives from that one list, so no two copies
    can disagree: ``struct``, the little-endian Struct the decoders unpack with (no implicit
    padding: the C structs are naturally aligned and every gap is a ``_pad`` member); ``offsets``
    of the real members, which tests/unit/bpf/test_records_abi.py compares with the object's
    BTF together with ``size`` and each member's type; and ``Raw``, the NamedTuple of the
    unpacked values (a nested struct's values inline, an array's as ``name_0``, ``name_1``...).
    """

    __slots__ = ("Raw", "c_name", "members", "names", "offsets", "size", "struct")

    def __init__(
        self,
        c_name: str,
        members: tuple[tuple[str, str | CStruct], ...],
        prefix_nested: bool = False,
    ) -> None:
        self.c_name = c_name
        self.members = members
        codes = [fmt.struct.format[1:] if isinstance(fmt, CStruct) else fmt for _, fmt in members]
        self.struct = struct.Struct("<" + "".join(codes))
        self.size = self.struct.size
        #: {member: byte offset} of every member but the padding.
        self.offsets: dict[str, int] = {}
        #: The name of each value ``struct`` unpacks, in order.
        self.names: tuple[str, ...] = ()
        at = 0
        for (name, fmt), code in zip(members, codes, strict=True):
            if not _is_pad(name):
                self.offsets[name] = at
            member = struct.Struct("<" + code)
            if isinstance(fmt, CStruct):
                pre = f"{name}_" if prefix_nested else ""
                self.names += tuple(pre + n for n in fmt.names)
            elif (count := len(member.unpack(bytes(member.size)))) == 1:
                self.names += (name,)
            else:
                self.names += tuple(f"{name}_{i}" for i in range(count))
            at += member.size
        # rename=True turns the padding's names (and only theirs, checked below) into _<index>
        self.Raw = namedtuple(c_name, self.names, rename=True)
        lost = [n for n, f in zip(self.names, self.Raw._fields, strict=True) if n != f]
        if any(not _is_pad(n) for n in lost):
            raise ValueError(f"{c_name}: members {lost} cannot name unpacked values")

    def unpack(self, raw: bytes) -> tuple:
        """The ``Raw`` values of the struct at the start of ``raw`` (struct.error when short)."""
        return self.Raw._make(self.struct.unpack_from(raw))


def _is_pad(name: str) -> bool:
    return name.startswith("_pad")


TC_HDR = CStruct("tc_hdr", (
    ("kind", "I"), ("cpu", "I"), ("ts", "Q"), ("pid", "I"), ("tid", "I"), ("ppid", "I"),
    ("uid", "I"), ("cgroup_id", "Q"), ("ns_pid", "I"), ("ns_tid", "I"), ("ns_ppid", "I"),
    ("mnt_ns", "I"), ("thread_start", "Q"), ("pid_ns", "I"), ("_pad", "I"),
    ("comm", f"{COMM_LEN}s"),
))  # fmt: skip
TC_FILE_EVENT = CStruct("tc_file_event", (
    ("h", TC_HDR), ("io_id", "Q"), ("io_len", "Q"), ("pos", "Q"), ("inode", "Q"), ("dev", "I"),
    ("mode", "I"), ("fd", "i"), ("syscall", "H"), ("direction", "B"), ("flags", "B"),
    ("path_len", "I"), ("generation", "I"), ("req", "Q"), ("path", f"{PATH_BUF + NAME_SLACK}s"),
))  # fmt: skip
TC_FILE_CONT = CStruct("tc_file_cont", (
    ("kind", "I"), ("cpu", "I"), ("ts", "Q"), ("io_id", "Q"), ("prev_io_id", "Q"),
    ("io_len", "Q"), ("pos", "Q"), ("req", "Q"),
))  # fmt: skip
TC_FILE_DATA = CStruct("tc_file_data", (
    ("kind", "I"), ("len", "I"), ("io_id", "Q"), ("io_off", "Q"), ("want", "I"), ("flags", "I"),
))  # fmt: skip
TC_XFER_FILE = CStruct("tc_xfer_file", (
    ("inode", "Q"), ("pos", "Q"), ("size", "Q"), ("mtime", "Q"), ("ctime", "Q"), ("dev", "I"),
    ("mode", "I"), ("generation", "I"), ("fd", "i"),
))  # fmt: skip
TC_XFER = CStruct("tc_xfer", (
    ("src", TC_XFER_FILE), ("dst", TC_XFER_FILE), ("other_path_len", "I"), ("other_flags", "I"),
    ("other_path", f"{PATH_BUF + NAME_SLACK}s"),
), prefix_nested=True)  # fmt: skip
TC_FILE_XFER = CStruct("tc_file_xfer", (("ev", TC_FILE_EVENT), ("x", TC_XFER)), prefix_nested=True)
TC_EXEC_EVENT = CStruct("tc_exec_event", (
    ("h", TC_HDR), ("inode", "Q"), ("ctime", "Q"), ("dev", "I"), ("mode", "I"),
    ("filename_len", "I"), ("argv_len", "I"), ("flags", "I"), ("interp_len", "I"),
    ("size", "Q"), ("obj_id", "Q"), ("captured", "Q"), ("script_inode", "Q"),
    ("script_ctime", "Q"), ("script_size", "Q"), ("script_obj_id", "Q"),
    ("script_captured", "Q"), ("script_dev", "I"), ("script_path_len", "I"),
    ("path_len", "I"), ("script_mode", "I"), ("stdin_mode", "I"),
    ("stdin_path_len", "I"), ("path", f"{PATH_BUF}s"),
    ("filename", f"{FILENAME_BUF}s"), ("interp", f"{FILENAME_BUF}s"),
    ("script_path", f"{PATH_BUF}s"), ("argv", f"{ARGV_BUF}s"), ("stdin_path", f"{PATH_BUF}s"),
))  # fmt: skip
TC_PROC_EVENT = CStruct("tc_proc_event", (
    ("h", TC_HDR), ("child_start", "Q"), ("child_pid", "I"), ("child_ns_pid", "I"),
    ("exit_code", "i"), ("_pad", "I"),
))  # fmt: skip
TC_MEM_EVENT = CStruct("tc_mem_event", (
    ("h", TC_HDR), ("obj_id", "Q"), ("addr", "Q"), ("len", "Q"), ("size", "Q"),
    ("captured", "Q"), ("same_as", "Q"), ("skipped_events", "Q"), ("skipped_dumps", "Q"),
    ("skipped_bytes", "Q"), ("prot_before", "I"), ("prot_after", "I"), ("syscall", "I"),
    ("alert", "I"), ("dump", "I"), ("_pad", "I"),
))  # fmt: skip
TC_MEM_PROC = CStruct("tc_mem_proc", (
    ("refill_ns", "Q"), ("events", "q"), ("bytes", "q"), ("skipped_events", "Q"),
    ("skipped_dumps", "Q"), ("skipped_bytes", "Q"), ("cgroup_id", "Q"), ("exec_id", "Q"),
    ("uid", "I"), ("rwx_regions", "I"),
))  # fmt: skip
TC_MODULE_EVENT = CStruct("tc_module_event", (
    ("h", TC_HDR), ("obj_id", "Q"), ("ret", "q"), ("len", "Q"), ("captured", "Q"),
    ("inode", "Q"), ("dev", "I"), ("fd", "i"), ("syscall", "I"), ("params_len", "I"),
    ("path_len", "I"), ("flags", "I"), ("addr", "Q"), ("map_start", "Q"), ("map_end", "Q"),
    ("map_pgoff", "Q"), ("ctime", "Q"), ("mtime", "Q"), ("size", "Q"), ("load_flags", "I"),
    ("_pad", "I"), ("params", f"{PARAMS_BUF}s"), ("path", f"{PATH_BUF}s"),
))  # fmt: skip
TC_BPF_EVENT = CStruct("tc_bpf_event", (
    ("h", TC_HDR), ("obj_id", "Q"), ("ret", "q"), ("captured", "Q"), ("insn_cnt", "I"),
    ("prog_type", "I"), ("prog_name", f"{PROG_NAME_LEN}s"), ("prog_id", "I"), ("_pad", "I"),
))  # fmt: skip
TC_PACKET = CStruct("tc_packet", (
    ("kind", "I"), ("len", "I"), ("ts", "Q"), ("cookie", "Q"), ("cgroup_id", "Q"),
    ("owner_start", "Q"), ("orig_len", "I"), ("ifindex", "I"), ("direction", "I"),
    ("owner_pid", "I"), ("owner_tid", "I"), ("owner_ppid", "I"), ("owner_uid", "I"),
    ("_pad", "I"), ("owner_comm", f"{COMM_LEN}s"),
))  # fmt: skip
TC_SOCK_OWNER = CStruct("tc_sock_owner", (
    ("h", TC_HDR), ("cookie", "Q"), ("start_time", "Q"), ("in_scope", "I"), ("_pad", "I"),
))  # fmt: skip
TC_SOCK_ADOPT = CStruct("tc_sock_adopt", (
    ("cookie", "Q"), ("start_time", "Q"), ("cgroup_id", "Q"), ("pid", "I"), ("ppid", "I"),
    ("uid", "I"), ("in_scope", "I"), ("result", "I"), ("_pad", "I"), ("comm", f"{COMM_LEN}s"),
))  # fmt: skip
TC_DROP_KEY = CStruct("tc_drop_key", (
    ("inode", "Q"), ("cgroup_id", "Q"), ("dev", "I"), ("direction", "H"), ("side", "H"),
))  # fmt: skip
TC_DROP_VAL = CStruct("tc_drop_val", (
    ("bytes", "Q"), ("lo", "Q"), ("hi", "Q"), ("ios", "Q"), ("append", "I"), ("unsized", "I"),
))  # fmt: skip
TC_FILE_FILTER = CStruct("tc_file_filter", (
    ("enabled", "I"), ("types", "I"), ("fds", "I"), ("npaths", "I"),
    ("path_len", f"{MAX_PREFIXES}I"), ("_pad", "I"), ("paths", f"{PREFIX_LEN * MAX_PREFIXES}s"),
))  # fmt: skip
#: ``filters`` (struct tc_file_filter[2]) is one blob: encode_config joins two encoded filters.
TC_CONFIG = CStruct("tc_config", (
    ("excluded_uid", "I"), ("scope_flags", "I"), ("filters", f"{TC_FILE_FILTER.size * 2}s"),
    ("net_ifindex", "I"), ("snaplen", "i"), ("mem_events_per_s", "I"), ("mem_bytes_per_s", "I"),
    ("mem_hash_seed", "Q"), ("fput_addr", "Q"),
))  # fmt: skip

#: Every struct of records.h.
STRUCTS = (
    TC_HDR, TC_FILE_EVENT, TC_FILE_CONT, TC_FILE_DATA, TC_XFER_FILE, TC_XFER, TC_FILE_XFER,
    TC_EXEC_EVENT, TC_PROC_EVENT, TC_MEM_EVENT, TC_MEM_PROC,
    TC_MODULE_EVENT, TC_BPF_EVENT, TC_PACKET, TC_SOCK_OWNER, TC_SOCK_ADOPT, TC_DROP_KEY,
    TC_DROP_VAL, TC_FILE_FILTER, TC_CONFIG,
)  # fmt: skip

HDR = TC_HDR.struct
#: Values of HDR when unpacked; a record's own values follow.
_HF = len(TC_HDR.names)
FILE_EVENT = TC_FILE_EVENT.struct
FILE_DATA = TC_FILE_DATA.struct
FILE_CONT = TC_FILE_CONT.struct
#: A continuation as the kernel sends it: the tc_file_cont, then its first chunk's tc_file_data.
FILE_CONT_AND_DATA = struct.Struct(f"<{FILE_CONT.format[1:]}{FILE_DATA.format[1:]}")
FILE_FILTER = TC_FILE_FILTER.struct
CONFIG = TC_CONFIG.struct
PACKET = TC_PACKET.struct
DROP_KEY = TC_DROP_KEY.struct
DROP_VAL = TC_DROP_VAL.struct

#: Member offsets the ABI test compares with the object's BTF: {struct: {member: offset}}.
LAYOUT: dict[str, dict[str, int]] = {s.c_name: s.offsets for s in STRUCTS}
SIZES = {s.c_name: s.size for s in STRUCTS}


class RecordError(ValueError):
    """A ring-buffer record that is too short or of an unknown kind."""


class Header(NamedTuple):
    """Who did it: the tc_hdr every event starts with. ``ts`` is CLOCK_BOOTTIME ns (the
    collector adds the boot-to-epoch offset), pid/tid/ppid are host numbers and the ``ns_``
    ones the process's own pid namespace's; ``comm`` is cut at its NUL."""

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
    #: mount and pid namespace inode numbers, the thread's start (CLOCK_BOOTTIME ns)
    mnt_ns: int = 0
    pid_ns: int = 0
    thread_start: int = 0


class FileEvent(NamedTuple):
    """One read or write syscall with who and which file: ``io_id`` names it, and its bytes
    follow as FileData records carrying that id. ``syscall`` is the name, ``dev`` the
    kernel's s_dev, ``path`` cut at PATH_BUF (EV_PATH_TRUNCATED in ``flags`` says so)."""

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
    #: what the syscall asked for: bytes, or iovecs for the vectored calls
    req: int = 0

    @property
    def append(self) -> bool:
        return bool(self.flags & EV_APPEND)


class FileData(NamedTuple):
    """One payload chunk of a syscall (``io_id``) or of an object (its obj_id), at ``io_off``
    in it. It stands for ``want`` bytes: fewer in ``data``, or ``unreadable``, means the rest
    of them is lost; ``zero`` (memory regions) means they are zeros, a page never touched."""

    io_id: int
    io_off: int
    want: int
    unreadable: bool
    data: bytes | memoryview  # may view ring memory: valid only while the record is handled
    zero: bool = False


class FileCont(NamedTuple):
    """A syscall that continues ``prev_io_id``: same thread, open file and context. It carries
    its first chunk; the others come as FileData records."""

    ts: int
    io_id: int
    prev_io_id: int
    io_len: int
    pos: int
    first: FileData
    req: int = 0


class XferEnd(NamedTuple):
    """One end of a transfer as the kernel saw it at the syscall's exit: which file, where the
    bytes started in it (0 for streams), and its size, mtime and ctime then (ns; 0 when the
    kernel could not tell), by which the collector knows whether it changed since."""

    inode: int
    pos: int
    size: int
    mtime: int
    ctime: int
    dev: int
    mode: int
    generation: int
    fd: int


class FileXfer(NamedTuple):
    """A copy_file_range, sendfile or splice: ``event`` is the artifact's file as for a write
    (the destination) or a read (the source), ``io_len`` the bytes moved; no data records
    follow. ``other_path`` is the path of the other end."""

    event: FileEvent
    src: XferEnd
    dst: XferEnd
    other_path: bytes


class ExecCopy(NamedTuple):
    """Bytes of an executed file the kernel read from its page cache at the exec (a memfd or
    deleted file, gone with its process): the first ``captured`` of its ``size`` follow as
    object chunks of ``obj_id``."""

    obj_id: int
    captured: int


class ScriptFile(NamedTuple):
    """The script of a #! execution, as the kernel had it open: identity, size, path (d_path,
    cut when ``path_truncated``), and its bytes when ``copy`` (memfd or deleted)."""

    dev: int
    inode: int
    ctime: int
    mode: int
    size: int
    path: bytes
    path_truncated: bool
    memfd: bool
    deleted: bool
    copy: ExecCopy | None


class ExecEvent(NamedTuple):
    """A program executed (sched_process_exec): the binary (dev, inode and ``ctime``, which
    together tell one version of it from another), the name it was run as and its argv, cut
    at ARGV_BUF when ``argv_truncated``. The binary's bytes are not in the record: the
    collector reads the file itself."""

    hdr: Header
    inode: int
    ctime: int
    dev: int
    mode: int
    filename: bytes
    argv: tuple[bytes, ...]
    argv_truncated: bool
    size: int = 0
    #: The executed file's path (d_path; the interpreter's for a #! execution, "/memfd:NAME"
    #: for a memfd), cut when ``path_truncated``.
    path: bytes = b""
    path_truncated: bool = False
    memfd: bool = False
    deleted: bool = False
    copy: ExecCopy | None = None
    #: For a #! execution: the interpreter the #! line named (the executed file is then that
    #: interpreter, ``filename`` the script as it was run) and the script file if found.
    interp: bytes | None = None
    script: ScriptFile | None = None
    #: the file type bits (S_IFMT) of the program's fd 0 at exec, 0 when it has none
    stdin_mode: int = 0
    #: its parent is a kernel thread (a usermode helper)
    from_kernel: bool = False
    #: fd 0's path; empty for pipes, sockets and none
    stdin_path: bytes = b""


class ProcEvent(NamedTuple):
    """A fork (``event`` "fork": ``hdr`` is the parent thread, ``child_*`` the new process; its
    start is CLOCK_BOOTTIME ns) or a process exit (``event`` "exit": ``hdr`` is its last
    thread, ``exit_code`` the wait status, as the kernel's task->exit_code holds it)."""

    hdr: Header
    event: str
    child_pid: int = 0
    child_ns_pid: int = 0
    child_start: int = 0
    exit_code: int = 0


class MemEvent(NamedTuple):
    """A protection change Tracee alerts on (``alert``, its text; "" for none), the dump of a
    region (``dump``: "sent", then ``captured`` of its ``size`` bytes follow as FileData records
    for ``obj_id``; "repeat" of the earlier dump ``same_as``; "budget": skipped), or both.
    ``syscall`` is mprotect, pkey_mprotect, mmap, munmap or exit (the process's last thread);
    ``length`` is the region's length as asked, ``size`` that rounded up to pages. The
    ``skipped_*`` counts are what the process's allowances skipped since its previous event."""

    hdr: Header
    obj_id: int
    addr: int
    length: int
    size: int
    captured: int
    same_as: int
    skipped_events: int
    skipped_dumps: int
    skipped_bytes: int
    prot_before: int
    prot_after: int
    syscall: str
    alert: str
    dump: str


class MemSkipped(NamedTuple):
    """What a process's mem allowances skipped that no event of it reported yet (``mem_procs``)."""

    tgid: int
    uid: int
    cgroup_id: int
    skipped_events: int
    skipped_dumps: int
    skipped_bytes: int


class ModuleMapping(NamedTuple):
    """Where an init_module image lies when a file is mapped there: the mapping
    ``[start, end)``, its file offset ``pgoff`` in pages, whether it is ``shared``, and whether
    it is private and ``written`` (has copied-on-write pages, which may differ from the file)."""

    start: int
    end: int
    pgoff: int
    shared: bool
    written: bool


class ModuleEvent(NamedTuple):
    """An init_module or finit_module call and its result. For init_module the image's
    ``captured`` bytes at ``addr`` follow as FileData records for ``obj_id``, and ``mapping``
    says which file mapping holds them, if any; for finit_module the collector reads the file
    (fd) itself. The file, finit_module's or the mapped one, is named by dev, inode and path,
    with its ctime, mtime (ns) and size as they were at the syscall."""

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
    addr: int = 0
    ctime: int = 0
    mtime: int = 0
    size: int = 0
    mapping: ModuleMapping | None = None
    #: finit_module's flags argument
    load_flags: int = 0
    #: How the kernel's own buffer was involved (bpf/module_kread.bpf.h): "image" for the event
    #: sent at its hook with the image's bytes (``ret`` is not known yet), "attempt" for the
    #: syscall's event whose image that one sent (``captured`` 0), "" for neither.
    kread: str = ""


class BpfEvent(NamedTuple):
    """A BPF_PROG_LOAD and its result (``ret``: the new program's fd or a negative errno).
    The bytecode (``insn_cnt`` instructions of 8 bytes), ``captured`` bytes of it, follows
    as FileData records for ``obj_id``."""

    hdr: Header
    obj_id: int
    ret: int
    captured: int
    insn_cnt: int
    prog_type: int
    prog_name: bytes
    #: the loaded program's id, 0 when the load failed
    prog_id: int = 0


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
    (io_id, io_len, pos, inode, dev, mode, fd, sc, direction, flags, path_len, generation, req,
     path) = f[_HF:]  # fmt: skip
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
        req,
    )


_XFER_AT = TC_FILE_XFER.offsets["x"]
_XFER_END_VALUES = len(TC_XFER_FILE.names)


def decode_file_xfer(raw: bytes) -> FileXfer:
    _need(raw, TC_FILE_XFER, "file transfer")
    event = decode_file_event(raw)
    f = TC_XFER.struct.unpack_from(raw, _XFER_AT)
    n = _XFER_END_VALUES
    src, dst = XferEnd._make(f[:n]), XferEnd._make(f[n : 2 * n])
    other_len, _flags, other_path = f[2 * n :]
    return FileXfer(event, src, dst, _cstr(other_path[: min(other_len, PATH_BUF)]))


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
    return FileData(
        io_id, io_off, want, bool(flags & DATA_UNREADABLE), data, bool(flags & DATA_ZERO)
    )


def decode_file_cont(raw: bytes | memoryview) -> FileCont:
    """A continuation and the first chunk behind it, in one unpack (the per-record path)."""
    if len(raw) < FILE_CONT_AND_DATA.size:
        raise RecordError(
            f"file continuation of {len(raw)} bytes, expected at least {FILE_CONT_AND_DATA.size}"
        )
    fields = FILE_CONT_AND_DATA.unpack_from(raw)
    _kind, _cpu, ts, io_id, prev_io_id, io_len, pos, req = fields[:8]
    _data_kind, length, data_io_id, io_off, want, flags = fields[8:]
    if data_io_id != io_id:
        raise RecordError(f"file continuation {io_id} carries data of {data_io_id}")
    # A view, not a copy: the collector copies these bytes once, into the run they join.
    data = memoryview(raw)[FILE_CONT_AND_DATA.size : FILE_CONT_AND_DATA.size + length]
    if len(data) != length:
        raise RecordError(f"file data says {length} bytes, record holds {len(data)}")
    first = FileData(io_id, io_off, want, bool(flags & DATA_UNREADABLE), data)
    return FileCont(ts, io_id, prev_io_id, io_len, pos, first, req)


def whole_file_cont(
    raw: bytes | memoryview,
) -> tuple[int, int, int, int, int, bytes | memoryview] | None:
    """(ts, io_id, prev_io_id, pos, req, data) of a continuation whose first chunk is its syscall's
    every byte, all readable; None for any other (or malformed) one, which
    ``decode_file_cont`` then handles. The collector's hot path: no record objects, and
    ``data`` is a slice of ``raw`` (a view of the ring when ``raw`` is one)."""
    if len(raw) < FILE_CONT_AND_DATA.size:
        return None
    (_k, _c, ts, io_id, prev_io_id, io_len, pos, req, _dk, length, data_io_id, io_off, want,
     flags) = FILE_CONT_AND_DATA.unpack_from(raw)  # fmt: skip
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
    return ts, io_id, prev_io_id, pos, req, raw[start : start + length]


def _need(raw: bytes, layout: CStruct, what: str) -> None:
    if len(raw) < layout.size:
        raise RecordError(f"{what} of {len(raw)} bytes, expected {layout.size}")


def _header(fields: tuple) -> Header:
    ns_pid, ns_tid, ns_ppid, mnt_ns, thread_start, pid_ns, _pad, comm = fields[8:_HF]
    return Header(*fields[:8], _cstr(comm), ns_pid, ns_tid, ns_ppid, mnt_ns, pid_ns, thread_start)


def decode_exec_event(raw: bytes) -> ExecEvent:
    _need(raw, TC_EXEC_EVENT, "exec event")
    f = TC_EXEC_EVENT.unpack(raw)
    args = f.argv[: min(f.argv_len, ARGV_BUF)]
    argv_items = tuple(args.rstrip(b"\0").split(b"\0")) if args.strip(b"\0") else ()
    return ExecEvent(
        _header(f),
        f.inode,
        f.ctime,
        f.dev,
        f.mode,
        f.filename[: min(f.filename_len, FILENAME_BUF)],
        argv_items,
        bool(f.flags & EXEC_ARGV_TRUNCATED),
        f.size,
        f.path[: min(f.path_len, PATH_BUF)],
        bool(f.flags & EXEC_PATH_TRUNCATED),
        bool(f.flags & EXEC_MEMFD),
        bool(f.flags & EXEC_DELETED),
        ExecCopy(f.obj_id, f.captured) if f.flags & EXEC_COPIED else None,
        f.interp[: min(f.interp_len, FILENAME_BUF)] if f.flags & EXEC_SCRIPT else None,
        _script_file(f) if f.flags & EXEC_SCRIPT_FILE else None,
        f.stdin_mode,
        bool(f.flags & EXEC_FROM_KERNEL),
        f.stdin_path[: min(f.stdin_path_len, PATH_BUF - 1)],
    )


def _script_file(f: Any) -> ScriptFile:
    copy = None
    if f.flags & EXEC_SCRIPT_COPIED:
        copy = ExecCopy(f.script_obj_id, f.script_captured)
    return ScriptFile(
        f.script_dev, f.script_inode, f.script_ctime, f.script_mode, f.script_size,
        f.script_path[: min(f.script_path_len, PATH_BUF)],
        bool(f.flags & EXEC_SCRIPT_PATH_TRUNCATED), bool(f.flags & EXEC_SCRIPT_MEMFD),
        bool(f.flags & EXEC_SCRIPT_DELETED), copy,
    )  # fmt: skip


#: The record kinds a tc_proc_event comes as, and the event each is.
PROC_EVENTS = {REC_FORK: "fork", REC_EXIT: "exit"}


def decode_proc_event(raw: bytes) -> ProcEvent:
    _need(raw, TC_PROC_EVENT, "process event")
    f = TC_PROC_EVENT.unpack(raw)
    event = PROC_EVENTS.get(f.kind)
    if event is None:
        raise RecordError(f"process event of record kind {f.kind}")
    if event == "fork":
        return ProcEvent(_header(f), event, f.child_pid, f.child_ns_pid, f.child_start)
    return ProcEvent(_header(f), event, exit_code=f.exit_code)


def decode_mem_event(raw: bytes) -> MemEvent:
    _need(raw, TC_MEM_EVENT, "mem event")
    f = TC_MEM_EVENT.unpack(raw)
    if f.syscall >= len(MEM_SYSCALLS):
        raise RecordError(f"mem event with unknown syscall {f.syscall}")
    if f.alert >= len(MEM_ALERTS):
        raise RecordError(f"mem event with unknown alert {f.alert}")
    if f.dump >= len(MEM_DUMPS):
        raise RecordError(f"mem event with unknown dump status {f.dump}")
    return MemEvent(
        _header(f), f.obj_id, f.addr, f.len, f.size, f.captured, f.same_as, f.skipped_events,
        f.skipped_dumps, f.skipped_bytes, f.prot_before, f.prot_after, MEM_SYSCALLS[f.syscall],
        MEM_ALERTS[f.alert][1], MEM_DUMPS[f.dump],
    )  # fmt: skip


def decode_mem_skipped(key: bytes, value: bytes) -> MemSkipped:
    """One ``mem_procs`` entry (key: the tgid)."""
    (tgid,) = struct.unpack_from("<I", key)
    v = TC_MEM_PROC.unpack(value)
    return MemSkipped(tgid, v.uid, v.cgroup_id, v.skipped_events, v.skipped_dumps,
                      v.skipped_bytes)  # fmt: skip


def decode_module_event(raw: bytes) -> ModuleEvent:
    _need(raw, TC_MODULE_EVENT, "module event")
    f = TC_MODULE_EVENT.unpack(raw)
    if f.syscall >= len(MODULE_SYSCALLS):
        raise RecordError(f"module event with unknown syscall {f.syscall}")
    if f.flags & MOD_KREAD_IMAGE and f.flags & MOD_KREAD:
        raise RecordError("module event flagged both the kernel's image and its attempt")
    mapping = None
    if f.flags & MOD_MAPPED:
        mapping = ModuleMapping(
            f.map_start, f.map_end, f.map_pgoff, bool(f.flags & MOD_MAP_SHARED),
            bool(f.flags & MOD_MAP_WRITTEN),
        )  # fmt: skip
    return ModuleEvent(
        _header(f),
        f.obj_id,
        f.ret,
        f.len,
        f.captured,
        f.inode,
        f.dev,
        f.fd,
        MODULE_SYSCALLS[f.syscall],
        f.params[: min(f.params_len, PARAMS_BUF)],
        f.path[: min(f.path_len, PATH_BUF)],
        f.addr,
        f.ctime,
        f.mtime,
        f.size,
        mapping,
        f.load_flags,
        _KREAD[f.flags & (MOD_KREAD_IMAGE | MOD_KREAD)],
    )


#: ModuleEvent.kread by the event's flags; both at once is no event the kernel sends.
_KREAD = {0: "", MOD_KREAD_IMAGE: "image", MOD_KREAD: "attempt"}


def decode_bpf_event(raw: bytes) -> BpfEvent:
    _need(raw, TC_BPF_EVENT, "bpf event")
    f = TC_BPF_EVENT.unpack(raw)
    return BpfEvent(
        _header(f),
        f.obj_id,
        f.ret,
        f.captured,
        f.insn_cnt,
        f.prog_type,
        _cstr(f.prog_name),
        f.prog_id,
    )


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
    #: Of ``ios``, transfers whose byte count could not be read (a sendmmsg/recvmmsg message
    #: header unmapped by exit): lost bytes that ``bytes`` cannot include.
    unsized: int = 0


def decode_dropped_io(key: bytes, value: bytes) -> DroppedIo:
    k, v = TC_DROP_KEY.unpack(key), TC_DROP_VAL.unpack(value)
    return DroppedIo(k.inode, k.cgroup_id, k.dev, k.direction, v.bytes, v.lo, v.hi, v.ios,
                     bool(v.append), v.unsized)  # fmt: skip


class Packet(NamedTuple):
    """One packet from the IP header on, cut to the snap length (``orig_len`` is its real
    length), with its socket's ``cookie``. ``owner_pid`` is 0 when the kernel did not yet
    know the socket's owner; the collector then looks for a SockOwner of that cookie."""

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
    """The thread that created or used a socket (``cookie``), sent when it does so first
    and when the socket's user changes, so that packets can be attributed to it;
    ``in_scope`` says whether its packets belong to the capture."""

    hdr: Header
    cookie: int
    start_time: int
    in_scope: bool


def decode_packet(raw: bytes) -> Packet:
    _need(raw, TC_PACKET, "packet")
    f = PACKET.unpack_from(raw)  # positional, not TC_PACKET.unpack: packets are a hot path
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
    _need(raw, TC_SOCK_OWNER, "socket owner")
    f = TC_SOCK_OWNER.unpack(raw)
    return SockOwner(_header(f), f.cookie, f.start_time, bool(f.in_scope))


class Adopted(NamedTuple):
    """What tc_sock_adopt did with a socket that existed before the capture: ``result`` (one
    of ADOPT_RESULTS) and, when "owned", the owner it recorded (the process's main thread)."""

    result: str
    cookie: int
    start_time: int
    cgroup_id: int
    pid: int
    ppid: int
    uid: int
    in_scope: bool
    comm: bytes


def encode_sock_adopt(pid: int, cookie: int) -> bytes:
    return TC_SOCK_ADOPT.struct.pack(cookie, 0, 0, pid, 0, 0, 0, 0, 0, b"")


def decode_sock_adopt(raw: bytes) -> Adopted:
    _need(raw, TC_SOCK_ADOPT, "socket adoption")
    f = TC_SOCK_ADOPT.unpack(raw)
    if f.result >= len(ADOPT_RESULTS):
        raise RecordError(f"socket adoption with unknown result {f.result}")
    return Adopted(ADOPT_RESULTS[f.result], f.cookie, f.start_time, f.cgroup_id, f.pid, f.ppid,
                   f.uid, bool(f.in_scope), _cstr(f.comm))  # fmt: skip


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
    mem_budget: tuple[int, int] = (0, 0),
    mem_hash_seed: int = 0,
    fput_addr: int = 0,
) -> bytes:
    """The .rodata block; ``mem_budget`` is (events, bytes) a process may spend per second."""
    return CONFIG.pack(excluded_uid & 0xFFFFFFFF, scope_flags, write + read, net_ifindex, snaplen,
                       *mem_budget, mem_hash_seed, fput_addr)  # fmt: skip


def decode_counters(per_cpu_values: list[list[int]]) -> dict[str, int]:
    """Sum per-CPU counter slots into {"write.events": n, "exec.event_drops": n, ...}."""
    out: dict[str, int] = {}
    for k, prefix in enumerate(COUNTER_KINDS):
        for i, name in enumerate(COUNTERS):
            idx = k * len(COUNTERS) + i
            out[f"{prefix}.{name}"] = sum(cpu[idx] for cpu in per_cpu_values)
    return out


def decode_mem_counters(per_cpu_values: list[list[int]]) -> dict[str, int]:
    """Sum the per-CPU ``mem_counters`` into {"mem.alerts": n, "mem.skipped_events": n, ...}."""
    return {f"mem.{name}": sum(cpu[i] for cpu in per_cpu_values)
            for i, name in enumerate(MEM_COUNTERS)}  # fmt: skip
