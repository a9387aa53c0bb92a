"""A thin ctypes binding to the system's libbpf.so.1: just what the collector uses.

Why ctypes and not bcc: bcc compiles C at every start against kernel headers that do not match
this kernel, and reads structs at wrong offsets; CO-RE objects built once are relocated against
the running kernel's BTF by libbpf at load time. Why not a PyPI binding: none has ring buffers.
"""

from __future__ import annotations

import ctypes as ct
import functools
import os
import threading
from collections.abc import Callable

_vp = ct.c_void_p
_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, _vp)

_libc = ct.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, _vp]

_PROTOTYPES = [
    ("libbpf_set_print", _vp, [_PRINT_FN]),
    ("libbpf_get_error", ct.c_long, [_vp]),
    ("libbpf_num_possible_cpus", ct.c_int, []),
    ("bpf_object__open_file", _vp, [ct.c_char_p, _vp]),
    ("bpf_object__load", ct.c_int, [_vp]),
    ("bpf_object__close", None, [_vp]),
    ("bpf_object__next_program", _vp, [_vp, _vp]),
    ("bpf_object__next_map", _vp, [_vp, _vp]),
    ("bpf_object__find_map_by_name", _vp, [_vp, ct.c_char_p]),
    ("bpf_program__name", ct.c_char_p, [_vp]),
    ("bpf_program__set_autoload", ct.c_int, [_vp, ct.c_bool]),
    ("bpf_program__autoload", ct.c_bool, [_vp]),
    ("bpf_program__attach", _vp, [_vp]),
    ("bpf_program__attach_cgroup", _vp, [_vp, ct.c_int]),
    ("bpf_program__attach_tracepoint", _vp, [_vp, ct.c_char_p, ct.c_char_p]),
    ("bpf_link__destroy", ct.c_int, [_vp]),
    ("bpf_map__name", ct.c_char_p, [_vp]),
    ("bpf_map__fd", ct.c_int, [_vp]),
    ("bpf_map__set_max_entries", ct.c_int, [_vp, ct.c_uint32]),
    ("bpf_map__initial_value", _vp, [_vp, ct.POINTER(ct.c_size_t)]),
    ("bpf_map_update_elem", ct.c_int, [ct.c_int, _vp, _vp, ct.c_uint64]),
    ("bpf_map_lookup_elem", ct.c_int, [ct.c_int, _vp, _vp]),
    ("bpf_map_get_next_key", ct.c_int, [ct.c_int, _vp, _vp]),
    ("bpf_map_delete_elem", ct.c_int, [ct.c_int, _vp]),
    ("bpf_program__fd", ct.c_int, [_vp]),
    ("bpf_prog_test_run_opts", ct.c_int, [ct.c_int, _vp]),
    # feature probes (collector/kernel_features.py)
    ("libbpf_probe_bpf_prog_type", ct.c_int, [ct.c_int, _vp]),
    ("libbpf_probe_bpf_map_type", ct.c_int, [ct.c_int, _vp]),
    ("libbpf_probe_bpf_helper", ct.c_int, [ct.c_int, ct.c_int, _vp]),
    ("bpf_prog_load", ct.c_int, [ct.c_int, ct.c_char_p, ct.c_char_p, _vp, ct.c_size_t, _vp]),
    ("btf__load_vmlinux_btf", _vp, []),
    ("btf__find_by_name_kind", ct.c_int, [_vp, ct.c_char_p, ct.c_uint32]),
    ("btf__free", None, [_vp]),
]


class _TestRunOpts(ct.Structure):
    """libbpf's struct bpf_test_run_opts (its `sz` field tells libbpf which version)."""

    _fields_ = (
        ("sz", ct.c_size_t), ("data_in", _vp), ("data_out", _vp), ("data_size_in", ct.c_uint),
        ("data_size_out", ct.c_uint), ("ctx_in", _vp), ("ctx_out", _vp),
        ("ctx_size_in", ct.c_uint), ("ctx_size_out", ct.c_uint), ("retval", ct.c_uint),
        ("repeat", ct.c_int), ("duration", ct.c_uint), ("flags", ct.c_uint), ("cpu", ct.c_uint),
        ("batch_size", ct.c_uint),
    )  # fmt: skip


_log: list[str] = []
#: libbpf_print_level: LIBBPF_WARN 0, LIBBPF_INFO 1, LIBBPF_DEBUG 2.
_LIBBPF_DEBUG = 2


@_PRINT_FN
def _printer(level: int, fmt: bytes, va: int) -> int:
    # Debug messages are libbpf tracing its own steps: 11,103 of them for the write capture's
    # load, each given a zeroed 4 MiB buffer here, cost 0.5-1.1 s of open and more of load
    # (31% of the collector's start in perf). Warnings and infos are what an error report needs.
    if level >= _LIBBPF_DEBUG:
        return 0
    # Verifier logs run past 4 KiB per message; keep the tail for error reports.
    buf = ct.create_string_buffer(1 << 22)
    _libc.vsnprintf(buf, len(buf), fmt, va)
    _log.append(buf.value.decode(errors="replace"))
    del _log[:-400]
    return 0


@functools.cache
def _library() -> ct.CDLL:
    """libbpf.so.1 with its prototypes declared and its log routed to ``_log``, loaded at the
    first object opened: the front end and the unit tests import the collector's modules, and
    need not have libbpf installed."""
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    for name, res, args in _PROTOTYPES:
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    lib.libbpf_set_print(_printer)
    return lib


def library() -> ct.CDLL:
    """libbpf with the prototypes above (for the feature probes)."""
    return _library()


class BpfError(RuntimeError):
    """A libbpf call failed; the message holds errno and the tail of libbpf's log."""


def _error(what: str, err: int | None = None) -> BpfError:
    err = ct.get_errno() if err is None else err
    tail = "".join(_log[-30:]).rstrip()
    detail = f"\n--- libbpf log ---\n{tail}" if tail else ""
    return BpfError(f"{what}: {os.strerror(err)} (errno {err}){detail}")


def possible_cpus() -> int:
    return _library().libbpf_num_possible_cpus()


class BpfObject:
    """One CO-RE object: open, configure (autoload, .rodata, map sizes), load, attach, close.

    Every program is attached through a BPF link, so the kernel detaches it when the last fd
    closes, even if the collector dies by SIGKILL.
    """

    def __init__(self, path: str) -> None:
        self._lib = lib = _library()
        _log.clear()
        obj = lib.bpf_object__open_file(path.encode(), None)
        if not obj or lib.libbpf_get_error(obj):
            raise _error(f"cannot open BPF object {path}")
        self._obj: int | None = obj
        self._links: list[int] = []
        self.programs: dict[str, int] = {}
        prog = None
        while prog := lib.bpf_object__next_program(obj, prog):
            self.programs[lib.bpf_program__name(prog).decode()] = prog
        self.maps: dict[str, int] = {}
        m = None
        while m := lib.bpf_object__next_map(obj, m):
            self.maps[lib.bpf_map__name(m).decode()] = m

    def enable_only(self, names: set[str]) -> None:
        unknown = names - self.programs.keys()
        if unknown:
            raise BpfError(f"no such programs in object: {sorted(unknown)}")
        for name, prog in self.programs.items():
            self._lib.bpf_program__set_autoload(prog, name in names)

    def set_rodata(self, data: bytes) -> None:
        """Overwrite the start of .rodata (where the object keeps its `cfg` block)."""
        m = next((m for n, m in self.maps.items() if n.endswith(".rodata")), None)
        if m is None:
            raise BpfError("object has no .rodata map")
        size = ct.c_size_t(0)
        base = self._lib.bpf_map__initial_value(m, ct.byref(size))
        if not base or size.value < len(data):
            raise BpfError(f".rodata holds {size.value} bytes, config needs {len(data)}")
        ct.memmove(base, data, len(data))

    def set_max_entries(self, map_name: str, entries: int) -> None:
        if self._lib.bpf_map__set_max_entries(self.maps[map_name], entries):
            raise _error(f"cannot resize map {map_name}")

    def load(self) -> None:
        _log.clear()
        if self._lib.bpf_object__load(self._obj):
            raise _error("cannot load BPF programs")

    def attach(self, name: str) -> None:
        _log.clear()
        link = self._lib.bpf_program__attach(self.programs[name])
        if not link or self._lib.libbpf_get_error(link):
            raise _error(f"cannot attach {name}")
        self._links.append(link)

    def attach_tracepoint(self, name: str, category: str, tracepoint: str) -> None:
        """Attach to a tracepoint named here rather than by the program's section: a program
        may be attached to several (bpf/shared_exits.bpf.h)."""
        _log.clear()
        link = self._lib.bpf_program__attach_tracepoint(
            self.programs[name], category.encode(), tracepoint.encode()
        )
        if not link or self._lib.libbpf_get_error(link):
            raise _error(f"cannot attach {name} to {category}:{tracepoint}")
        self._links.append(link)

    def attach_cgroup(self, name: str, cgroup_fd: int) -> None:
        """Attach through a BPF link: never left behind, never exclusive (unlike bcc's)."""
        _log.clear()
        link = self._lib.bpf_program__attach_cgroup(self.programs[name], cgroup_fd)
        if not link or self._lib.libbpf_get_error(link):
            raise _error(f"cannot attach {name} to the cgroup")
        self._links.append(link)

    def run(self, name: str, ctx: bytes) -> bytes:
        """Run a loaded ``syscall`` program once on ``ctx`` (BPF_PROG_TEST_RUN) and return the
        context as the program left it: such programs read and write the caller's memory."""
        buf = ct.create_string_buffer(ctx, len(ctx))
        opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), ctx_in=ct.addressof(buf),
                            ctx_size_in=len(ctx))  # fmt: skip
        fd = self._lib.bpf_program__fd(self.programs[name])
        if self._lib.bpf_prog_test_run_opts(fd, ct.byref(opts)):
            raise _error(f"cannot run {name}")
        return buf.raw

    def map_fd(self, name: str) -> int:
        return self._lib.bpf_map__fd(self.maps[name])

    def update(self, map_name: str, key: bytes, value: bytes) -> None:
        k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(value, len(value))
        if self._lib.bpf_map_update_elem(self.map_fd(map_name), k, v, 0):
            raise _error(f"cannot update map {map_name}")

    def delete(self, map_name: str, key: bytes) -> None:
        k = ct.create_string_buffer(key, len(key))
        self._lib.bpf_map_delete_elem(self.map_fd(map_name), k)  # already gone is fine

    def lookup(self, map_name: str, key: bytes, value_size: int) -> bytes | None:
        k = ct.create_string_buffer(key, len(key))
        v = ct.create_string_buffer(value_size)
        if self._lib.bpf_map_lookup_elem(self.map_fd(map_name), k, v):
            return None
        return v.raw

    def drain(
        self,
        map_name: str,
        key_size: int,
        value_size: int,
        select: Callable[[bytes], bool] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Read and delete every entry of a hash map whose key ``select`` takes (all without
        it; entries added meanwhile stay for later)."""
        return self._entries(map_name, key_size, value_size, delete=True, select=select)

    def entries(self, map_name: str, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
        """Read every entry of a hash map."""
        return self._entries(map_name, key_size, value_size, delete=False)

    def _entries(
        self,
        map_name: str,
        key_size: int,
        value_size: int,
        delete: bool,
        select: Callable[[bytes], bool] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        fd = self.map_fd(map_name)
        keys = []
        cur, nxt = None, ct.create_string_buffer(key_size)
        while self._lib.bpf_map_get_next_key(fd, cur, nxt) == 0:
            if select is None or select(nxt.raw):
                keys.append(nxt.raw)
            cur = ct.create_string_buffer(nxt.raw, key_size)
        out = []
        for key in keys:
            k, v = ct.create_string_buffer(key, key_size), ct.create_string_buffer(value_size)
            if self._lib.bpf_map_lookup_elem(fd, k, v) == 0:
                if delete:
                    self._lib.bpf_map_delete_elem(fd, k)
                out.append((key, v.raw))
        return out

    def close(self) -> None:
        """Destroy the links, each on a thread of its own, then the object.

        Destroying a syscall tracepoint's link waits for the tracepoints' grace period, under
        a lock of the kernel's (perf_trace_destroy): 60-84 ms each on 6.18, 2.4 s in all for
        the default configuration's 47 links, one after the other, at every stop. Called at
        once from threads (ctypes releases the GIL), the waits overlap in part: 1.3-1.7 s.
        """
        links, self._links = self._links, []
        started = []
        for link in links:
            thread = threading.Thread(target=self._lib.bpf_link__destroy, args=(link,))
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: destroyed here, in turn
                self._lib.bpf_link__destroy(link)
                continue
            started.append(thread)
        for thread in started:
            thread.join()
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None
