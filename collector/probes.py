"""Load and attach the kernel side for a given configuration, and read its counters.

The one CO-RE object holds every program; only those the configuration needs are loaded
(autoload), the filters go into .rodata and the scope maps, and every program is attached
through a BPF link so that the kernel detaches it when the collector exits, however it exits.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from bpf import records
from collector.cgroup_rules import (
    STATE_SIZE,
    CgroupState,
    Rule,
    decode_state,
    encode_rules,
    encode_state,
)
from collector.containers import cgroup2_root
from collector.hooks import FILE_SYSCALLS, HOOKS, Choice, choose
from collector.kernel_features import KernelFeatures, withheld
from collector.kernel_symbols import KernelSymbols
from collector.libbpf import BpfObject, possible_cpus
from collector.ring_reader import RingReader
from tracecap.options import RING_FLOOR_MB, Config, FileCapture


class BpfMap(StrEnum):
    """Every map of the object that Python opens by name. libbpf's generated skeleton would
    check these names when the loader is compiled; tests/unit/collector/test_object_names.py
    checks them against the built object instead."""

    FILE_RB = "file_rb"
    OBJ_RB = "obj_rb"
    PKT_RB = "pkt_rb"
    DATA_SCRATCH = "data_scratch"
    PKT_SCRATCH = "pkt_scratch"
    EXCLUDED = "excluded"
    SCOPE_COMM = "scope_comm"
    SCOPE_PID = "scope_pid"
    SCOPE_UID = "scope_uid"
    SCOPE_CGROUPS = "scope_cgroups"
    SCOPE_CIDS = "scope_cids"
    CGROUP_RULES = "cgroup_rules"
    CGROUP_STATES = "cgroup_states"
    COUNTERS = "counters"
    FILE_DROPS = "file_drops"
    DROP_SIDE = "drop_side"
    MEM_PROCS = "mem_procs"
    MEM_COUNTERS = "mem_counters"


def _syscall_programs(syscalls: Iterable[str], sides: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f"tc_{side}_{sc}" for sc in syscalls for side in sides)


#: Where tc_drop_key.side lies in a key (little-endian: its low byte).
_DROP_SIDE_AT = records.TC_DROP_KEY.offsets["side"]
#: At stop, between switching file_drops' halves and draining the one just left: a program that
#: read the old side finishes within microseconds.
DROP_SIDE_SETTLE_S = 0.01

#: A syscall's pair of programs at its tracepoints, or at fentry/fexit on its function
#: (bpf/file_io_fentry.bpf.h: the same bodies).
_TP, _FENTRY = ("enter", "exit"), ("fenter", "fexit")
#: The plain reads and writes: on fentry_syscalls one program each, tc_fexit_<name>, which
#: checks the scope and reads the arguments at the exit (bpf/file_io_fentry.bpf.h TC_IO_FEXIT).
FEXIT_ONLY = frozenset(
    {"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto",
     "read", "pread64", "readv", "preadv", "preadv2", "recvfrom"}
)  # fmt: skip
#: The object's programs by what they capture; a configuration loads only those it needs.
_ALWAYS = frozenset({"tc_fork", "tc_proc_exit", "tc_cgroup_mkdir", "tc_cgroup_rmdir"})
_MODULE_TP = frozenset(
    {"tc_init_module_enter", "tc_init_module_exit", "tc_finit_module_enter", "tc_finit_module_exit"}
)
#: Without CONFIG_MODULES the module syscalls have no tracepoints; the raw syscall tracepoints
#: still see the attempt, at a small cost on every syscall (only with --capture module).
_MODULE_RAW = frozenset({"tc_module_raw_enter", "tc_module_raw_exit"})
#: The image in the kernel's buffer (bpf/module_kread.bpf.h), with the syscalls' tracepoints
#: for the attempt, or their fentry/fexit twins (bpf/objects_fentry.bpf.h).
_KREAD = frozenset({"tc_kread_file", "tc_kread_data"})
_MODULE_KREAD = _KREAD | _MODULE_TP
_MODULE_FENTRY = _syscall_programs(("init_module", "finit_module"), _FENTRY)
#: Attached to the cgroup2 root rather than to a tracepoint.
_NET_CGROUP = frozenset({"tc_sock_create", "tc_skb_egress", "tc_skb_ingress"})
#: Run by the collector (BPF_PROG_TEST_RUN), never attached: owners of sockets that existed
#: before the capture (net.bpf.h).
_RUN_ONLY = frozenset({"tc_sock_adopt"})
#: io_uring requests, at their completion: one program for both directions of the requests
#: with a user buffer, one for SPLICE and TEE (pipes.bpf.h).
_URING = frozenset({"tc_uring_complete", "tc_uring_xfer_complete"})
#: Writes through shared file mappings: their dirty pages at msync, munmap and exit
#: (mappings.bpf.h); mmap's exit remembers the mappings for the exit. On the same hook as the
#: write capture's syscalls (mappings_fentry.bpf.h the fentry twins), so that a capture on
#: fentry attaches no syscall tracepoint; the exit is tp_btf either way.
_MAPPINGS = {
    _TP: frozenset({"tc_map_msync_munmap", "tc_map_mmap_exit", "tc_map_exit"}),
    _FENTRY: frozenset(
        {"tc_map_fenter_msync", "tc_map_fenter_munmap", "tc_map_fexit_mmap", "tc_map_exit"}
    ),
}


#: The file syscalls' exit programs at their tracepoints, each one program attached to the
#: sys_exit tracepoint of every syscall listed (bpf/shared_exits.bpf.h: the same body, so one
#: verification instead of one per syscall).
SHARED_EXITS: dict[str, tuple[str, ...]] = {
    "tc_exit_io": ("write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg",
                   "read", "pread64", "readv", "preadv", "preadv2", "recvfrom", "recvmsg",
                   "vmsplice"),
    "tc_exit_mmsg": ("sendmmsg", "recvmmsg"),
    "tc_exit_xfer": ("copy_file_range", "sendfile64", "splice", "tee"),
}  # fmt: skip
_EXIT_OF = {sc: prog for prog, syscalls in SHARED_EXITS.items() for sc in syscalls}
#: Enter programs at the tracepoints serving syscalls whose arguments they read alike, each
#: attached to the sys_enter tracepoint of every syscall listed; the syscall number tells them
#: apart (bpf/mem.bpf.h, mappings.bpf.h). One verification instead of two: on 6.18 a program
#: each took 50-52 ms (mprotect's) and 37 ms (msync's, munmap's) of the default
#: configuration's 0.56 s of verifying (BPF_PROG_LOAD timed with bpftrace).
SHARED_ENTERS: dict[str, tuple[str, ...]] = {
    "tc_mprotect_enter": ("mprotect", "pkey_mprotect"),
    "tc_map_msync_munmap": ("msync", "munmap"),
}


def _file_syscalls(kind: str) -> tuple[str, ...]:
    """The write or read capture's syscalls; transfers that pass no user buffer, and vmsplice,
    whose direction the kernel tells, serve both."""
    return FILE_SYSCALLS[kind] + FILE_SYSCALLS["both"]


def _file_programs(kind: str, sides: tuple[str, str]) -> frozenset[str]:
    """The write or read capture's programs: its syscalls' (at the tracepoints, each its enter
    and a shared exit; on fentry, an fexit alone for FEXIT_ONLY), io_uring's and, for writes,
    the shared mappings'."""
    syscalls = _file_syscalls(kind)
    if sides == _TP:
        pairs = _syscall_programs(syscalls, ("enter",)) | {_EXIT_OF[sc] for sc in syscalls}
    else:
        fexit_only = [sc for sc in syscalls if sc in FEXIT_ONLY]
        pairs = _syscall_programs(fexit_only, ("fexit",)) | _syscall_programs(
            [sc for sc in syscalls if sc not in FEXIT_ONLY], sides
        )
    return pairs | _URING | (_MAPPINGS[sides] if kind == "write" else frozenset())


#: What the collector needs for each capture kind of tracecap/kinds.py (keyed by its
#: ``--capture`` word): the programs of its syscall tracepoints or only hook (the others in
#: HOOK_PROGRAMS) and the ring its records arrive on.
CAPTURE_PROGRAMS: dict[str, frozenset[str]] = {
    "write": _file_programs("write", _TP),
    "read": _file_programs("read", _TP),
    "exec": frozenset({"tc_exec"}),
    "mem": frozenset(
        {
            "tc_mprotect_enter",
            "tc_mmap_enter",
            "tc_mmap_exit",
            "tc_munmap_enter",
            "tc_mem_exit",
        }
    ),
    "module": _MODULE_KREAD | _MODULE_RAW,
    "bpf": frozenset({"tc_bpf_enter", "tc_bpf_exit"}),
    "network": frozenset({"tc_sock_send", "tc_sock_recv"}) | _NET_CGROUP | _RUN_ONLY,
}
#: mem on fentry/fexit (bpf/mem_fentry.bpf.h): the twins of its syscall tracepoint programs,
#: its exit (tp_btf) the same.
_MEM_FENTRY = frozenset(
    {
        "tc_fenter_mprotect",
        "tc_fenter_pkey_mprotect",
        "tc_fenter_mmap",
        "tc_fexit_mmap",
        "tc_fenter_munmap",
        "tc_mem_exit",
    }
)
#: The programs of each hook of collector/hooks.py HOOKS, by (kind, hook).
HOOK_PROGRAMS: dict[tuple[str, str], frozenset[str]] = {
    (kind, hook.name): CAPTURE_PROGRAMS[kind] for kind, hooks in HOOKS.items() for hook in hooks
} | {
    ("module", "kernel_read_file"): _MODULE_KREAD,
    ("module", "syscall_tracepoints"): _MODULE_TP,
    ("module", "raw_syscalls"): _MODULE_RAW,
    ("write", "fentry_syscalls"): _file_programs("write", _FENTRY),
    ("read", "fentry_syscalls"): _file_programs("read", _FENTRY),
    ("module", "kernel_read_file_fentry"): _KREAD | _MODULE_FENTRY,
    ("module", "fentry_syscalls"): _MODULE_FENTRY,
    ("mem", "fentry_syscalls"): _MEM_FENTRY,
    ("bpf", "fentry_syscalls"): _syscall_programs(("bpf",), _FENTRY),
}
CAPTURE_RING: dict[str, BpfMap] = {
    "write": BpfMap.FILE_RB,
    "read": BpfMap.FILE_RB,
    "exec": BpfMap.OBJ_RB,
    "mem": BpfMap.OBJ_RB,
    "module": BpfMap.OBJ_RB,
    "bpf": BpfMap.OBJ_RB,
    "network": BpfMap.PKT_RB,
}
#: Every program the collector may enable (checked against the built object like BpfMap).
PROGRAM_NAMES = frozenset().union(_ALWAYS, *CAPTURE_PROGRAMS.values(), *HOOK_PROGRAMS.values())
#: Ring sizes. Each ring's pages are resident in the collector (mapped once, see
#: ring_reader.py), so a ring costs its size of resident memory; a kind that is not captured
#: gets a one-page ring. The file-contents ring is sized from the host's memory by the command
#: line (tracecap/options.py RING_MEM_SHARE: a pipe burst of 100 MB in 0.2 s needs 64 MiB);
#: this floor is the size for a collector started without one (tests).
DEFAULT_RING_BYTES = RING_FLOOR_MB << 20
OBJECT_RING_BYTES = 8 << 20
#: The packet ring's floor; it gets the file ring's size when that is larger (``--ring-mb``,
#: sized from the host's memory). A packet of pcap-snaplen:headers UDP takes 128 bytes of
#: ring (an 88-byte record, 28 bytes of headers, the ring's 8-byte header), so 16 MiB holds
#: 131,072 packets: 0.7 s of a 100,000 datagrams/s loopback flood (each seen twice). The
#: collector and the pcap writer need 12-13 us of CPU a packet together near their lossless
#: rate (bench_net_exec on a quiet host, NOTES.md "State (session 12)"), and on a shared
#: CPU they are off it for longer than that: a 100,000-datagram flood at 34,000/s lost 40,275
#: packets in 16 MiB while the collector had 0.58 s of CPU in its 5 s.
PACKET_RING_BYTES = 16 << 20
UNUSED_RING_BYTES = 4096
#: The object ring also carries every capture's fork and exit records (bpf/procs.bpf.h, 112
#: bytes and an 8-byte ring header each): with no object kind on it still holds 2,000 of them
#: between two polls, for 256 KiB of resident memory.
PROC_RING_BYTES = 256 << 10
#: What one process's memory captures may cost per second (bpf/mem.bpf.h): events (alerts and
#: dumps), and bytes of its memory hashed or dumped. LuaJIT compiling many small functions
#: makes 44,000-51,000 changes to executable a second; with these it runs at 1.06x its
#: untraced time (scripts/bench_mem.py, median), and 4 MiB/s is about 32 of its 64 KiB
#: machine-code areas hashed and sent.
MEM_EVENTS_PER_S = 64
MEM_BYTES_PER_S = 4 << 20
#: bpf/containers.bpf.h struct tc_cid_prefix: length, id prefix[64], padding
_CID_PREFIX = struct.Struct("<B64s7x")


def object_path() -> str:
    """The built object, beside bpf/records.py (a regular package: importlib.resources
    would cost 6-7 ms of imports to say the same)."""
    path = os.path.join(os.path.dirname(records.__file__), "tracecap.bpf.o")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `make setup` to build the BPF objects")
    return path


def programs_for(choices: dict[str, Choice]) -> set[str]:
    """The programs of the hooks chosen; a refused kind's are not loaded (autoload off), so
    the object loads where they would not."""
    names = set(_ALWAYS)
    for kind, choice in choices.items():
        if choice.hook:
            names |= HOOK_PROGRAMS[kind, choice.hook]
    return names


def exit_tracepoints(choices: dict[str, Choice]) -> dict[str, tuple[str, ...]]:
    """Per shared exit program loaded, the syscalls at whose sys_exit tracepoints it attaches:
    those of the file kinds that run on the syscall tracepoints."""
    syscalls = {
        sc
        for kind, choice in choices.items()
        if kind in ("write", "read") and choice.hook == "syscall_tracepoints"
        for sc in _file_syscalls(kind)
    }
    shared = {prog: tuple(sc for sc in scs if sc in syscalls) for prog, scs in SHARED_EXITS.items()}
    return {prog: scs for prog, scs in shared.items() if scs}


def shared_tracepoints(choices: dict[str, Choice]) -> dict[str, tuple[str, ...]]:
    """Per loaded program that serves several syscalls (section "tp", no tracepoint of its
    own), the syscall tracepoints it attaches to: a shared exit's at exit_tracepoints'
    syscalls, a shared enter's at every syscall SHARED_ENTERS gives it."""
    exits = {
        prog: tuple(f"sys_exit_{sc}" for sc in scs)
        for prog, scs in exit_tracepoints(choices).items()
    }
    loaded = programs_for(choices)
    enters = {
        prog: tuple(f"sys_enter_{sc}" for sc in scs)
        for prog, scs in SHARED_ENTERS.items()
        if prog in loaded
    }
    return exits | enters


def probe_features() -> frozenset[str]:
    """What this kernel offers (collector/kernel_features.py), less what the collector's
    environment withholds for a test."""
    return KernelFeatures().offered() - withheld(os.environ)


def choose_hooks(config: Config, offered: frozenset[str]) -> dict[str, Choice]:
    """Per capture kind on, its hook; ProbeError when the kernel can run none of them."""
    choices = choose(config.kinds(), offered)
    if choices and not any(c.hook for c in choices.values()):
        reasons = "; ".join(c.reason for c in choices.values())
        raise ProbeError(f"no capture kind asked for can run on this kernel: {reasons}")
    return choices


def ring_sizes(kinds: Iterable[str], file_ring_bytes: int) -> dict[BpfMap, int]:
    """Each ring's size: the capture kinds that run decide which rings carry records; the
    others get one page, but the object ring never less than PROC_RING_BYTES (forks and
    exits). The packet ring is as large as the file ring, at least PACKET_RING_BYTES."""
    used = {CAPTURE_RING[kind] for kind in kinds}
    sizes = {
        BpfMap.FILE_RB: file_ring_bytes,
        BpfMap.OBJ_RB: OBJECT_RING_BYTES,
        BpfMap.PKT_RB: max(PACKET_RING_BYTES, file_ring_bytes),
    }
    out = {ring: size if ring in used else UNUSED_RING_BYTES for ring, size in sizes.items()}
    out[BpfMap.OBJ_RB] = max(out[BpfMap.OBJ_RB], PROC_RING_BYTES)
    return out


def net_settings(config: Config) -> tuple[int, int]:
    """(ifindex for net=<iface> or 0, snap length for the kernel: payload bytes, -1 = all)."""
    ifindex = 0
    if config.pcap.iface:
        try:
            ifindex = socket.if_nametoindex(config.pcap.iface)
        except OSError:
            raise ProbeError(f"net={config.pcap.iface}: no such network interface") from None
    return ifindex, config.pcap.snaplen


class ProbeError(RuntimeError):
    """The kernel side cannot be set up as asked (the message says why)."""


def scope_flags(config: Config) -> int:
    s = config.scope
    flags = 0
    flags |= records.SCOPE_COMM if s.comm else 0
    flags |= records.SCOPE_COMM_NOT if s.comm_not else 0
    flags |= records.SCOPE_PID if s.pid else 0
    flags |= records.SCOPE_UID if s.uid else 0
    flags |= records.SCOPE_FOLLOW if s.follow else 0
    if s.container is not None:
        flags |= records.SCOPE_CONTAINER if s.container else records.SCOPE_HOST
    return flags


def _filter(capture: FileCapture) -> bytes:
    return records.encode_file_filter(capture.enabled, capture.paths, capture.types, capture.fds)


def rodata_for(config: Config, excluded_uid: int, ifindex: int = 0, fput_addr: int = 0) -> bytes:
    return records.encode_config(
        excluded_uid,
        scope_flags(config),
        _filter(config.write),
        _filter(config.read),
        net_ifindex=ifindex,
        snaplen=config.pcap.snaplen,
        mem_budget=(MEM_EVENTS_PER_S, MEM_BYTES_PER_S),
        # a secret per run: no program can shape a second stage to hash like its first
        mem_hash_seed=int.from_bytes(os.urandom(8), "little"),
        fput_addr=fput_addr,
    )


def _comm_key(comm: bytes) -> bytes:
    return comm[: records.COMM_LEN - 1].ljust(records.COMM_LEN, b"\0")


#: The deferred fput's task work function: how tc_exec finds a #! script's file.
FPUT = "____fput"


def _fput(lookup: KernelSymbols | None) -> int:
    """____fput's address, or 0 (no #! script files, said on stderr) when kallsyms lacks it."""
    if lookup is None:
        return 0
    try:
        addr = lookup.get(FPUT)
    except OSError as exc:
        raise ProbeError(f"cannot read kernel symbols: {exc}") from exc
    if not addr:
        print(
            f"tracecap collector: {FPUT} not in /proc/kallsyms (or hidden by kptr_restrict): "
            "the files of #! scripts are not captured",
            file=sys.stderr,
        )
    return addr


class KernelProbes:
    """The loaded BPF object of one run: only the configured kinds' programs, the scope and
    filters in its read-only data, its rings sized. Constructing it loads (the verifier's work)
    and ``attach`` starts capture, so loading can overlap the writers' start; it owns the
    object and the cgroup fd, and ``close`` releases both."""

    def __init__(
        self,
        config: Config,
        excluded_tgids: Iterable[int],
        excluded_uid: int,
        ring_bytes: int = DEFAULT_RING_BYTES,
        *,
        features: Callable[[], frozenset[str]] = probe_features,
        symbols: Callable[[Iterable[str]], KernelSymbols] = KernelSymbols,
    ) -> None:
        # exec's #! scripts need ____fput's address (bpf/objects.bpf.h); read from kallsyms on
        # a thread while the features are probed and the object opened
        lookup = symbols([FPUT]) if "exec" in config.kinds() else None
        self._features = features()
        self.choices = choose_hooks(config, self._features)
        running = [kind for kind, choice in self.choices.items() if choice.hook]
        ifindex, _snaplen = net_settings(config)
        cgroup_fd = -1
        if "network" in running:
            with open("/proc/mounts") as f:
                root = cgroup2_root(f.read())
            if root is None:
                raise ProbeError("network capture needs cgroup2 mounted (none in /proc/mounts)")
            cgroup_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cgroup_fd = cgroup_fd
        self._obj = BpfObject(object_path())
        try:
            self._programs = programs_for(self.choices)
            self._shared = shared_tracepoints(self.choices)
            self._obj.enable_only(self._programs)
            self._obj.set_rodata(rodata_for(config, excluded_uid, ifindex, _fput(lookup)))
            self._ring_sizes = ring_sizes(running, ring_bytes)
            for ring, size in self._ring_sizes.items():
                self._obj.set_max_entries(ring, size)
            self._obj.set_max_entries(BpfMap.DATA_SCRATCH, possible_cpus())
            self._obj.set_max_entries(BpfMap.PKT_SCRATCH, possible_cpus())
            self._obj.load()
            self._fill_maps(config, excluded_tgids)
        except BaseException:
            self.close()
            raise
        self._ncpu = possible_cpus()
        #: The half of file_drops taking losses (the drop_side map starts zeroed).
        self._drop_side = 0

    def attach(self) -> None:
        """Attach every loaded program. Loading (the verifier's work, most of the start-up
        time) happens in the constructor, so it can overlap the writers' start."""
        try:
            for name in sorted(self._programs):
                if name in _RUN_ONLY:
                    continue
                if name in _NET_CGROUP:
                    self._obj.attach_cgroup(name, self._cgroup_fd)
                elif name in self._shared:
                    for tracepoint in self._shared[name]:
                        self._obj.attach_tracepoint(name, "syscalls", tracepoint)
                else:
                    self._obj.attach(name)
        except BaseException:
            self.close()
            raise
        finally:
            if self._cgroup_fd >= 0:
                os.close(self._cgroup_fd)
                self._cgroup_fd = -1

    def _fill_maps(self, config: Config, excluded_tgids: Iterable[int]) -> None:
        u32 = struct.Struct("<I")
        for tgid in excluded_tgids:
            self._obj.update(BpfMap.EXCLUDED, u32.pack(tgid), b"\x01")
        for comm in config.scope.comm:
            self._obj.update(BpfMap.SCOPE_COMM, _comm_key(comm), b"\x01")
        for comm in config.scope.comm_not:
            self._obj.update(BpfMap.SCOPE_COMM, _comm_key(comm), b"\x02")
        for pid in config.scope.pid:
            self._obj.update(BpfMap.SCOPE_PID, u32.pack(pid), b"\x01")
        for uid in config.scope.uid:
            self._obj.update(BpfMap.SCOPE_UID, u32.pack(uid), b"\x01")

    def set_cgroup_rules(self, rules: tuple[Rule, ...], scope_ids: tuple[str, ...]) -> None:
        """The naming rules the kernel classifies new cgroups by, and the container id
        prefixes of ``container=ID`` (none: every container is in the scope set)."""
        for idx, raw in enumerate(encode_rules(rules)):
            self._obj.update(BpfMap.CGROUP_RULES, struct.pack("<I", idx), raw)
        for idx, prefix in enumerate(scope_ids):
            raw = _CID_PREFIX.pack(len(prefix), prefix.encode())
            self._obj.update(BpfMap.SCOPE_CIDS, struct.pack("<I", idx), raw)

    def put_cgroup_states(
        self, states: Iterable[tuple[int, CgroupState]], in_scope: Callable[[str], bool] | None
    ) -> None:
        """Cgroups that existed before the kernel saw them made: their states, and those of
        containers ``in_scope`` accepts into the scope set (None: no container scope)."""
        for cgroup_id, state in states:
            key = struct.pack("<Q", cgroup_id)
            self._obj.update(BpfMap.CGROUP_STATES, key, encode_state(state))
            if in_scope is not None and state.container_id and in_scope(state.container_id):
                self._obj.update(BpfMap.SCOPE_CGROUPS, key, b"\x01")

    def cgroup_container(self, cgroup_id: int) -> str | None:
        """The container id the kernel gave cgroup ``cgroup_id`` ("" = host; None = unknown)."""
        raw = self._obj.lookup(BpfMap.CGROUP_STATES, struct.pack("<Q", cgroup_id), STATE_SIZE)
        return decode_state(raw).container_id if raw else None

    def adopt_socket(self, pid: int, cookie: int) -> records.Adopted:
        """Record the owner of a socket that existed before the capture (``pid`` holds it),
        unless the kernel knows one already (bpf/net.bpf.h tc_sock_adopt)."""
        raw = self._obj.run("tc_sock_adopt", records.encode_sock_adopt(pid, cookie))
        return records.decode_sock_adopt(raw)

    def exclude(self, tgid: int) -> None:
        self._obj.update(BpfMap.EXCLUDED, struct.pack("<I", tgid), b"\x01")

    def rings(
        self, callback: Callable[[bytes], None], file_budget: Callable[[], int] | None = None
    ) -> RingReader:
        """Every ring buffer (file contents, objects, packets), drained by one poll; the
        file-contents ring at most ``file_budget()`` bytes per drain (RingReader.add)."""
        reader = RingReader()
        try:
            for ring, size in self._ring_sizes.items():
                budget = file_budget if ring is BpfMap.FILE_RB else None
                reader.add(self._obj.map_fd(ring), size, callback, budget)
        except BaseException:
            reader.close()
            raise
        return reader

    def per_cpu_counters(self) -> list[list[int]]:
        """Kernel counters as [cpu][counter]: events, drops and bytes per direction."""
        columns: list[tuple[int, ...]] = []
        for idx in range(records.NUM_COUNTERS):
            raw = self._obj.lookup(BpfMap.COUNTERS, struct.pack("<I", idx), 8 * self._ncpu)
            columns.append(struct.unpack(f"<{self._ncpu}Q", raw) if raw else (0,) * self._ncpu)
        return [list(row) for row in zip(*columns, strict=True)]

    def counters(self) -> dict[str, int]:
        return records.decode_counters(self.per_cpu_counters())

    def mem_counters(self) -> dict[str, int]:
        """The mem capture's own counters (alerts, repeats, what the allowances skipped)."""
        n = len(records.MEM_COUNTERS)
        raw = self._obj.lookup(BpfMap.MEM_COUNTERS, struct.pack("<I", 0), 8 * n * self._ncpu)
        values = struct.unpack(f"<{n * self._ncpu}Q", raw) if raw else (0,) * (n * self._ncpu)
        return records.decode_mem_counters(
            [list(values[i : i + n]) for i in range(0, len(values), n)]
        )

    def mem_skipped(self) -> list[records.MemSkipped]:
        """Processes whose mem allowances skipped something no event reported yet."""
        entries = self._obj.entries(BpfMap.MEM_PROCS, 4, records.TC_MEM_PROC.size)
        found = (records.decode_mem_skipped(k, v) for k, v in entries)
        return [s for s in found if s.skipped_events or s.skipped_dumps]

    def dropped_ios(self, final: bool = False) -> list[records.DroppedIo]:
        """Files that lost syscalls with their events: the half of file_drops that stopped
        taking losses at the previous call (so no program still adds to an entry that is read
        and deleted), which then takes them again. A loss is reported one or two calls after
        it happened. ``final``: both halves, the second after DROP_SIDE_SETTLE_S."""
        drops = self._drain_idle_drops()
        if final:
            time.sleep(DROP_SIDE_SETTLE_S)
            drops += self._drain_idle_drops()
        return drops

    def _drain_idle_drops(self) -> list[records.DroppedIo]:
        idle = self._drop_side ^ 1
        entries = self._obj.drain(
            BpfMap.FILE_DROPS,
            records.DROP_KEY.size,
            records.DROP_VAL.size,
            select=lambda key: key[_DROP_SIDE_AT] & 1 == idle,
        )
        self._obj.update(BpfMap.DROP_SIDE, struct.pack("<I", 0), struct.pack("<I", idle))
        self._drop_side = idle
        return [records.decode_dropped_io(k, v) for k, v in entries]

    @property
    def hooks(self) -> dict[str, dict[str, str]]:
        """Per capture kind on, the hook it uses or why it was refused (``stats.`` hooks)."""
        return {kind: choice.report() for kind, choice in self.choices.items()}

    @property
    def features(self) -> list[str]:
        """What the probe found this kernel offers (collector/hooks.py NEEDS tokens)."""
        return sorted(self._features)

    @property
    def program_names(self) -> list[str]:
        return sorted(self._programs)

    def close(self) -> None:
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1
        self._obj.close()
