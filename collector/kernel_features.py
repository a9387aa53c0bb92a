"""What the running kernel offers BPF, probed at the collector's start before anything loads:
program types, helpers, kfuncs and BTF tracepoints, ring buffers, BTF, the LSM list, the
syscall tracepoints. The result is the set of tokens of collector/hooks.py's NEEDS it found;
hooks.py decides with it.

Each probe loads at most a two-instruction program (libbpf's ``libbpf_probe_bpf_*``, or a
``bpf_prog_load`` where libbpf's probe says less than needed) and closes it: all of them take
about 40 ms, most of it reading vmlinux BTF. libbpf's TRACING probe loads an fentry program,
so it says nothing of tp_btf: that one is probed by loading a tp_btf program on
``sched_process_fork``, and fentry on ``vfs_write``, LSM on ``file_permission`` likewise.
"""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Callable

from collector.hooks import FENTRY_FUNCTIONS, FENTRY_SYSCALLS, NEEDS
from collector.libbpf import library

#: enum bpf_prog_type, bpf_attach_type, bpf_func_id, bpf_map_type (include/uapi/linux/bpf.h)
_PROG_KPROBE, _PROG_TRACEPOINT, _PROG_CGROUP_SKB, _PROG_CGROUP_SOCK = 2, 5, 8, 9
_PROG_RAW_TRACEPOINT, _PROG_TRACING, _PROG_LSM, _PROG_SYSCALL = 17, 26, 29, 31
_ATTACH_TRACE_RAW_TP, _ATTACH_TRACE_FENTRY, _ATTACH_LSM_MAC = 23, 24, 27
_MAP_RINGBUF = 27
_HELPERS = {
    "bpf_get_current_task_btf": 158,
    "bpf_for_each_map_elem": 164,
    "bpf_find_vma": 180,
    "bpf_loop": 181,
}
_BTF_KIND_TYPEDEF, _BTF_KIND_FUNC = 8, 12
#: r0 = 0; exit
_RETURN_0 = bytes.fromhex("b7000000000000009500000000000000")
BTF_PATH = "/sys/kernel/btf/vmlinux"
LSM_LIST = "/sys/kernel/security/lsm"
TRACEFS_EVENTS = "/sys/kernel/tracing/events"
KPROBE_PATHS = ("/sys/bus/event_source/devices/kprobe/type", "/sys/kernel/tracing/kprobe_events")


class _LoadOpts(ct.Structure):
    """libbpf's struct bpf_prog_load_opts up to log_buf (1.0 and later; ``sz`` says where it
    ends, so a newer libbpf reads only these)."""

    _fields_ = (
        ("sz", ct.c_size_t), ("attempts", ct.c_int), ("expected_attach_type", ct.c_int),
        ("prog_btf_fd", ct.c_uint32), ("prog_flags", ct.c_uint32), ("prog_ifindex", ct.c_uint32),
        ("kern_version", ct.c_uint32), ("attach_btf_id", ct.c_uint32),
        ("attach_prog_fd", ct.c_uint32), ("attach_btf_obj_fd", ct.c_uint32),
        ("fd_array", ct.c_void_p), ("func_info", ct.c_void_p), ("func_info_cnt", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32), ("line_info", ct.c_void_p),
        ("line_info_cnt", ct.c_uint32), ("line_info_rec_size", ct.c_uint32),
        ("log_level", ct.c_uint32), ("log_size", ct.c_uint32), ("log_buf", ct.c_char_p),
    )  # fmt: skip


class KernelFeatures:
    """The probes, through libbpf (collector/libbpf.py) and a few files. ``offered`` runs them
    all; tests of the decision use hooks.py with sets of their own instead."""

    def __init__(self) -> None:
        self._lib = library()
        self._btf: int | None = None

    def _vmlinux_id(self, name: str, kind: int) -> int:
        """The id of ``name`` in vmlinux BTF, or -1 (no BTF, or no such name)."""
        if self._btf is None:
            self._btf = self._lib.btf__load_vmlinux_btf() or 0
        if not self._btf:
            return -1
        return self._lib.btf__find_by_name_kind(self._btf, name.encode(), kind)

    def prog_type(self, prog_type: int) -> bool:
        return self._lib.libbpf_probe_bpf_prog_type(prog_type, None) == 1

    def helper(self, helper_id: int) -> bool:
        """Whether the kernel knows the helper: probed in a tracepoint program, where every
        helper the object calls is allowed (libbpf cannot probe helpers of tp_btf programs)."""
        return self._lib.libbpf_probe_bpf_helper(_PROG_TRACEPOINT, helper_id, None) == 1

    def loads(self, prog_type: int, attach_type: int, target: str, kind: int) -> bool:
        """Whether a program of ``prog_type``/``attach_type`` on BTF ``target`` loads."""
        btf_id = self._vmlinux_id(target, kind)
        if btf_id < 0:
            return False
        opts = _LoadOpts(
            sz=ct.sizeof(_LoadOpts), expected_attach_type=attach_type, attach_btf_id=btf_id
        )
        fd = self._lib.bpf_prog_load(
            prog_type, b"tc_probe", b"GPL", _RETURN_0, len(_RETURN_0) // 8, ct.addressof(opts)
        )
        if fd < 0:
            return False
        os.close(fd)
        return True

    def functions(self, names: tuple[str, ...]) -> bool:
        """Whether fentry loads on the first of the kernel functions ``names`` and vmlinux BTF
        has all of them."""
        return self.loads(_PROG_TRACING, _ATTACH_TRACE_FENTRY, names[0], _BTF_KIND_FUNC) and all(
            self._vmlinux_id(name, _BTF_KIND_FUNC) > 0 for name in names
        )

    def syscall_functions(self, syscalls: tuple[str, ...]) -> bool:
        """Whether fentry loads on the x86-64 functions of ``syscalls`` (they are
        ``__<arch>_sys_*`` elsewhere: another architecture keeps the tracepoints)."""
        return self.functions(tuple(f"__x64_sys_{sc}" for sc in syscalls))

    def _probes(self) -> dict[str, Callable[[], bool]]:
        """Per token of hooks.NEEDS, how to tell whether this kernel offers it."""
        events = TRACEFS_EVENTS
        probes: dict[str, Callable[[], bool]] = {
            "btf": lambda: os.path.exists(BTF_PATH),
            "map:ringbuf": lambda: self._lib.libbpf_probe_bpf_map_type(_MAP_RINGBUF, None) == 1,
            "prog:tracepoint": lambda: self.prog_type(_PROG_TRACEPOINT),
            "prog:raw_tp": lambda: self.prog_type(_PROG_RAW_TRACEPOINT),
            "prog:tp_btf": lambda: self.loads(_PROG_TRACING, _ATTACH_TRACE_RAW_TP,
                                              "btf_trace_sched_process_fork", _BTF_KIND_TYPEDEF),
            "prog:cgroup_skb": lambda: self.prog_type(_PROG_CGROUP_SKB),
            "prog:cgroup_sock": lambda: self.prog_type(_PROG_CGROUP_SOCK),
            "prog:syscall": lambda: self.prog_type(_PROG_SYSCALL),
            "prog:fentry": lambda: self.loads(_PROG_TRACING, _ATTACH_TRACE_FENTRY, "vfs_write",
                                              _BTF_KIND_FUNC),
            # the program type loads wherever BPF does; attaching needs one of these
            "prog:kprobe": lambda: self.prog_type(_PROG_KPROBE)
            and any(os.path.exists(p) for p in KPROBE_PATHS),
            "prog:lsm": lambda: self.loads(_PROG_LSM, _ATTACH_LSM_MAC,
                                           "bpf_lsm_file_permission", _BTF_KIND_FUNC),
            "lsm:bpf": lambda: "bpf" in _read(LSM_LIST).split(","),
            "tracefs:syscalls": lambda: os.path.isdir(f"{events}/syscalls/sys_enter_write"),
            "tracefs:module_syscalls": lambda: os.path.isdir(
                f"{events}/syscalls/sys_enter_init_module"
            ),
        }  # fmt: skip
        for token, syscalls in FENTRY_SYSCALLS.items():
            probes[token] = lambda s=syscalls: self.syscall_functions(s)  # type: ignore[misc]
        for token, functions in FENTRY_FUNCTIONS.items():
            probes[token] = lambda f=functions: self.functions(f)  # type: ignore[misc]
        for name, helper_id in _HELPERS.items():
            probes[f"helper:{name}"] = lambda i=helper_id: self.helper(i)  # type: ignore[misc]
        for token in NEEDS:
            kind, _, name = token.partition(":")
            if kind == "kfunc":
                probes[token] = lambda n=name: self._vmlinux_id(n, _BTF_KIND_FUNC) > 0  # type: ignore[misc]
            elif kind == "btf_tp":
                probes[token] = lambda n=name: (  # type: ignore[misc]
                    self._vmlinux_id(f"btf_trace_{n}", _BTF_KIND_TYPEDEF) > 0
                )
        return probes

    def offered(self) -> frozenset[str]:
        """Every token of hooks.NEEDS this kernel offers."""
        try:
            return frozenset(token for token, probe in self._probes().items() if probe())
        finally:
            if self._btf:
                self._lib.btf__free(self._btf)
                self._btf = None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


#: Tokens the collector's environment withholds from what the probe found, so that a test can
#: see a kind refused on this kernel (tests/e2e/test_kernel_hooks.py). Only whoever starts the
#: collector (root, through `tracecap run` or supervisord) sets its environment, and it can
#: only take features away: a kind is then refused, never loaded where it would not load.
WITHHOLD_ENV = "TRACECAP_WITHHOLD_FEATURES"


def withheld(environ: dict[str, str] | os._Environ[str]) -> frozenset[str]:
    return frozenset(t for t in environ.get(WITHHOLD_ENV, "").split(",") if t)
