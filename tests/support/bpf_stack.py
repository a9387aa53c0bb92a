"""The combined stack of each program's deepest call chain, as a kernel before 6.13 counts it.

Before 6.13 the verifier (``check_max_stack_depth``) limits the stack of a whole call chain (the
program, its bpf-to-bpf calls and its ``bpf_loop`` callbacks) to 512 bytes, each frame rounded up
to 32 (a frame of 0 counts as 32). 6.13+ gives tracing programs a private stack and no longer
refuses them, so a newer host loads an object an older kernel refuses: "combined stack size of
3 calls is 736. Too large" on Debian's 6.1. This module computes that figure on any kernel:
each subprogram's stack depth from the verifier's log (level 4, "stack depth a+b+c", one
figure per subprogram in start order), the call graph from the program as the kernel holds it
(its translated instructions and function table from ``BPF_OBJ_GET_INFO_BY_FD``: a pseudo call's
``off`` and a callback address load's ``imm`` are the callee's start relative to the next
instruction, as measured on 6.18 with the JIT on).
"""

from __future__ import annotations

import ctypes as ct
import functools
import re
import struct
from dataclasses import dataclass

from collector import libbpf

#: The limit before 6.13 (MAX_BPF_STACK) and the verifier's rounding of each frame.
MAX_STACK = 512
FRAME_ALIGN = 32

_BPF_JMP_CALL = 0x85  # BPF_JMP | BPF_CALL
_BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
_PSEUDO_CALL = 1
_PSEUDO_FUNC = 4
_SHT_SYMTAB = 2
_STT_FUNC = 2
_SYM_SIZE = 24
_DEPTHS = re.compile(r"stack depth ([0-9+]+)")


class _ProgInfo(ct.Structure):
    """The head of the kernel's struct bpf_prog_info (uapi; fields only ever appended)."""

    _fields_ = (
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64), ("name", ct.c_char * 16),
        ("ifindex", ct.c_uint32), ("gpl_compatible", ct.c_uint32), ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64), ("nr_jited_ksyms", ct.c_uint32),
        ("nr_jited_func_lens", ct.c_uint32), ("jited_ksyms", ct.c_uint64),
        ("jited_func_lens", ct.c_uint64), ("btf_id", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
        ("nr_func_info", ct.c_uint32),
    )  # fmt: skip


class _Insn(ct.Structure):
    _fields_ = (
        ("code", ct.c_uint8), ("regs", ct.c_uint8), ("off", ct.c_int16), ("imm", ct.c_int32),
    )  # fmt: skip


class _FuncInfo(ct.Structure):
    _fields_ = (("insn_off", ct.c_uint32), ("type_id", ct.c_uint32))


class _BtfType(ct.Structure):
    _fields_ = (("name_off", ct.c_uint32), ("info", ct.c_uint32), ("size", ct.c_uint32))


@dataclass(frozen=True)
class Chain:
    """A program's deepest call chain: its frames' names and verifier depths, and the total."""

    program: str
    frames: tuple[tuple[str, int], ...]

    @property
    def combined(self) -> int:
        return sum(frame_size(depth) for _, depth in self.frames)

    def __str__(self) -> str:
        path = " -> ".join(f"{name}({depth})" for name, depth in self.frames)
        return f"{self.program}: {self.combined} bytes: {path}"


def frame_size(depth: int) -> int:
    """What one frame costs in the combined figure (the verifier's round_up(max(d, 1), 32))."""
    return -(-max(depth, 1) // FRAME_ALIGN) * FRAME_ALIGN


def deepest(depths: list[int], calls: dict[int, set[int]], at: int = 0) -> tuple[int, ...]:
    """The subprogram indices of the costliest chain from ``at`` (the verifier refuses
    recursion, so the graph is a DAG)."""
    below = [deepest(depths, calls, callee) for callee in sorted(calls.get(at, ()))]
    costliest = max(below, key=lambda c: sum(frame_size(depths[i]) for i in c), default=())
    return (at, *costliest)


def stack_depths(log: str) -> list[int]:
    """Each subprogram's depth from a level-4 verifier log."""
    found = _DEPTHS.findall(log)
    if not found:
        raise ValueError("the verifier log has no 'stack depth' line (log level 4?)")
    return [int(d) for d in found[-1].split("+")]


@functools.cache
def _lib() -> ct.CDLL:
    lib = libbpf.library()
    lib.bpf_program__set_log_level.argtypes = [ct.c_void_p, ct.c_uint32]
    lib.bpf_program__set_log_buf.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_size_t]
    lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    lib.btf__load_from_kernel_by_id.restype = ct.c_void_p
    lib.btf__load_from_kernel_by_id.argtypes = [ct.c_uint32]
    lib.btf__type_by_id.restype = ct.POINTER(_BtfType)
    lib.btf__type_by_id.argtypes = [ct.c_void_p, ct.c_uint32]
    lib.btf__name_by_offset.restype = ct.c_char_p
    lib.btf__name_by_offset.argtypes = [ct.c_void_p, ct.c_uint32]
    return lib


def _info(fd: int, info: _ProgInfo) -> None:
    size = ct.c_uint32(ct.sizeof(info))
    if _lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)):
        raise OSError(ct.get_errno(), f"BPF_OBJ_GET_INFO_BY_FD on program fd {fd}")


def call_graph(fd: int) -> tuple[list[str], dict[int, set[int]]]:
    """A loaded program's subprogram names (in start order) and who calls or passes whom."""
    lib = _lib()
    head = _ProgInfo()
    _info(fd, head)
    insns = (_Insn * (head.xlated_prog_len // ct.sizeof(_Insn)))()
    funcs = (_FuncInfo * head.nr_func_info)()
    info = _ProgInfo(
        xlated_prog_len=head.xlated_prog_len, xlated_prog_insns=ct.addressof(insns),
        nr_func_info=head.nr_func_info, func_info_rec_size=ct.sizeof(_FuncInfo),
        func_info=ct.addressof(funcs),
    )  # fmt: skip
    _info(fd, info)
    starts = [f.insn_off for f in funcs]
    btf = lib.btf__load_from_kernel_by_id(info.btf_id)
    if not btf:
        raise OSError(f"no BTF for program {head.name.decode()}")
    try:
        names = [
            lib.btf__name_by_offset(
                btf, lib.btf__type_by_id(btf, f.type_id).contents.name_off
            ).decode()
            for f in funcs
        ]
    finally:
        lib.btf__free(btf)
    calls: dict[int, set[int]] = {}
    caller = 0
    for i, insn in enumerate(insns):
        while caller + 1 < len(starts) and i >= starts[caller + 1]:
            caller += 1
        src = insn.regs >> 4
        if insn.code == _BPF_JMP_CALL and src == _PSEUDO_CALL:
            calls.setdefault(caller, set()).add(starts.index(i + insn.off + 1))
        elif insn.code == _BPF_LD_IMM64 and src == _PSEUDO_FUNC:
            calls.setdefault(caller, set()).add(starts.index(i + insn.imm + 1))
    return names, calls


def deepest_chains(path: str, programs: set[str], rodata: bytes) -> dict[str, Chain]:
    """Load ``programs`` of the object at ``path`` (with this .rodata, so that the paths the
    configuration gates are verified) and return each one's deepest chain."""
    lib = _lib()
    obj = libbpf.BpfObject(path)
    try:
        obj.enable_only(programs)
        obj.set_rodata(rodata)
        logs = {}
        for name in programs:
            logs[name] = ct.create_string_buffer(1 << 16)
            lib.bpf_program__set_log_level(obj.programs[name], 4)
            lib.bpf_program__set_log_buf(obj.programs[name], logs[name], len(logs[name]))
        obj.load()
        chains = {}
        for name in sorted(programs):
            depths = stack_depths(logs[name].value.decode(errors="replace"))
            names, calls = call_graph(lib.bpf_program__fd(obj.programs[name]))
            if len(names) != len(depths):
                raise ValueError(f"{name}: {len(names)} functions but {len(depths)} depths")
            frames = tuple((names[i], depths[i]) for i in deepest(depths, calls))
            chains[name] = Chain(name, frames)
        return chains
    finally:
        obj.close()


def _elf_functions(data: bytes) -> dict[str, bytes]:
    """Each function symbol's instructions in a BPF ELF object (ELF64, little-endian)."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    symtab = next(s for s in sections if s[1] == _SHT_SYMTAB)
    strtab = sections[symtab[6]]
    out = {}
    for off in range(symtab[4], symtab[4] + symtab[5], _SYM_SIZE):
        name_off, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
        if info & 0xF != _STT_FUNC or not size:
            continue
        name_at = strtab[4] + name_off
        name = data[name_at : data.index(b"\0", name_at)].decode()
        start = sections[shndx][4] + value
        out[name] = data[start : start + size]
    return out


def compiled_frame(code: bytes) -> int:
    """The deepest stack offset a function's instructions touch: the compiler's frame, which is
    what the verifier's depth for it is made of (plus 24 bytes where it inlines bpf_loop)."""
    deepest_off, fp_regs, i = 0, {}, 0
    while i < len(code):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        dst, src = regs & 0xF, regs >> 4
        i += 16 if op == _BPF_LD_IMM64 else 8
        cls = op & 7
        if (cls == 1 and src == 10) or (cls in (2, 3) and dst == 10):  # LDX; ST, STX
            deepest_off = min(deepest_off, off)
        elif op == 0xBF:  # rD = rS: a frame pointer when rS is one
            if src == 10 or src in fp_regs:
                fp_regs[dst] = fp_regs.get(src, 0)
            else:
                fp_regs.pop(dst, None)
        elif op == 0x07 and dst in fp_regs:  # rD += imm on a frame pointer
            fp_regs[dst] += imm
            deepest_off = min(deepest_off, fp_regs[dst])
        elif cls in (4, 7) or cls == 0 or op == 0x85:  # another write to rD (or a call)
            fp_regs.pop(dst, None)
            if op == 0x85:
                fp_regs = {r: v for r, v in fp_regs.items() if r >= 6}
    return -deepest_off


def compiled_frames(path: str) -> dict[str, int]:
    """compiled_frame for every function of the object at ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    return {name: compiled_frame(code) for name, code in _elf_functions(data).items()}


def twin_chain(program: str, twin: Chain, frames: dict[str, int]) -> Chain:
    """The chain of a program this kernel cannot load, from its loaded twin (the same body and
    calls, bpf/file_io_fentry.bpf.h): the twin's chain with its own frame grown by what the
    compiler gave the program more than the twin."""
    depth = twin.frames[0][1] + frames[program] - frames[twin.program]
    return Chain(program, ((program, depth), *twin.frames[1:]))
