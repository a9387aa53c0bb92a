"""What the report reads inside artifacts (pure: bytes in, text out): an ELF header's type and
machine, a kernel module's ``.modinfo``, a hex preview, and BPF instructions disassembled.

Each reads only what its artifact holds and never raises on bad bytes: a truncated or hostile
file gives "not ELF", an empty ``.modinfo`` or an ``(invalid)`` instruction, not an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
#: e_type (elf.h ET_*).
ELF_TYPES = {0: "NONE", 1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}
#: e_machine (elf.h EM_*): the architectures Linux runs on that an analyst meets.
ELF_MACHINES = {
    2: "SPARC", 3: "x86", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "S390", 40: "ARM",
    43: "SPARCV9", 50: "IA-64", 62: "x86-64", 183: "AArch64", 243: "RISC-V", 247: "BPF",
    258: "LoongArch",
}  # fmt: skip
PT_INTERP = 3
#: Bytes of an executable the report reads: the header and, in practice, its program headers.
ELF_HEAD_BYTES = 4096


@dataclass(frozen=True)
class ElfInfo:
    """``kind``: EXEC, DYN, PIE (DYN with an interpreter), REL, CORE; ``machine``; ``bits``."""

    kind: str
    machine: str
    bits: int
    endian: str

    def text(self) -> str:
        return f"ELF{self.bits} {self.kind} {self.machine} ({self.endian})"


def elf_info(head: bytes) -> ElfInfo | None:
    """The ELF header of ``head`` (the file's first bytes), or None when it is not ELF."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC) or head[4] not in (1, 2):
        return None
    bits = 32 if head[4] == 1 else 64
    order = "<" if head[5] != 2 else ">"
    e_type, e_machine = struct.unpack_from(order + "HH", head, 16)
    kind = ELF_TYPES.get(e_type, f"type {e_type}")
    if e_type == 3 and _has_interp(head, bits, order):
        kind = "PIE"
    machine = ELF_MACHINES.get(e_machine, f"machine {e_machine}")
    return ElfInfo(kind, machine, bits, "LE" if order == "<" else "BE")


def _has_interp(head: bytes, bits: int, order: str) -> bool:
    """Whether a program header of type PT_INTERP lies within ``head`` (a PIE executable has
    one; a shared library has none)."""
    if bits == 64:
        if len(head) < 64:
            return False
        phoff = struct.unpack_from(order + "Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
    else:
        if len(head) < 52:
            return False
        phoff = struct.unpack_from(order + "I", head, 28)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
    if phentsize < 4:
        return False
    for i in range(min(phnum, 256)):
        off = phoff + i * phentsize
        if off + 4 > len(head):
            return False
        if struct.unpack_from(order + "I", head, off)[0] == PT_INTERP:
            return True
    return False


def section(image: bytes, name: bytes) -> bytes | None:
    """The contents of the ELF64 section ``name`` (``.modinfo``), or None when the image is not
    a little- or big-endian ELF64 with that section inside its bytes."""
    if len(image) < 64 or not image.startswith(ELF_MAGIC) or image[4] != 2:
        return None
    order = "<" if image[5] != 2 else ">"
    shoff = struct.unpack_from(order + "Q", image, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", image, 58)
    if shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(image):
        return None

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        sh_name = struct.unpack_from(order + "I", image, base)[0]
        sh_offset, sh_size = struct.unpack_from(order + "QQ", image, base + 24)
        return sh_name, sh_offset, sh_size

    _, str_off, str_size = header(shstrndx)
    strtab = image[str_off : str_off + str_size]
    for i in range(shnum):
        sh_name, off, size = header(i)
        end = strtab.find(b"\0", sh_name)
        if end >= 0 and strtab[sh_name:end] == name:
            return image[off : off + size] if off + size <= len(image) else None
    return None


def modinfo(image: bytes) -> list[tuple[str, str]]:
    """``.modinfo``'s ``key=value`` strings (name, license, vermagic, parm, ...), in order."""
    data = section(image, b".modinfo")
    if not data:
        return []
    out = []
    for item in data.split(b"\0"):
        key, eq, value = item.partition(b"=")
        if eq and key:
            out.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return out


def hex_preview(data: bytes, width: int = 16) -> str:
    """``hexdump -C`` lines: offset, bytes in hex, printable ASCII (others as ``.``)."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off : off + width]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {chunk.hex(' '):<{width * 3 - 1}}  |{text}|")
    return "\n".join(lines)


# --- BPF ---------------------------------------------------------------------------------------

#: enum bpf_prog_type (include/uapi/linux/bpf.h), in its order.
PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local",
    "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable",
    "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)  # fmt: skip


def prog_type_name(value: object) -> str:
    if isinstance(value, int) and 0 <= value < len(PROG_TYPES):
        return PROG_TYPES[value]
    return f"type {value}"


INSN = struct.Struct("<BBhi")  # code, dst:4|src:4, off, imm (struct bpf_insn)
#: ALU/ALU64 operations (code & 0xf0) as the verifier prints them.
_ALU = {0x00: "+=", 0x10: "-=", 0x20: "*=", 0x30: "/=", 0x40: "|=", 0x50: "&=", 0x60: "<<=",
        0x70: ">>=", 0x90: "%=", 0xA0: "^=", 0xB0: "=", 0xC0: "s>>="}  # fmt: skip
#: Conditional jumps (code & 0xf0).
_JMP = {0x10: "==", 0x20: ">", 0x30: ">=", 0x40: "&", 0x50: "!=", 0x60: "s>", 0x70: "s>=",
        0xA0: "<", 0xB0: "<=", 0xC0: "s<", 0xD0: "s<="}  # fmt: skip
_SIZES = {0x00: "u32", 0x08: "u16", 0x10: "u8", 0x18: "u64"}
#: Helper functions by id (enum bpf_func_id), the ones loaders use most.
HELPERS = {
    1: "map_lookup_elem", 2: "map_update_elem", 3: "map_delete_elem", 4: "probe_read",
    5: "ktime_get_ns", 6: "trace_printk", 7: "get_prandom_u32", 8: "get_smp_processor_id",
    14: "get_current_pid_tgid", 15: "get_current_uid_gid", 16: "get_current_comm",
    25: "perf_event_output", 35: "get_current_task", 113: "probe_read_user",
    112: "probe_read_kernel", 114: "probe_read_kernel_str", 115: "probe_read_user_str",
    130: "ringbuf_output", 131: "ringbuf_reserve", 132: "ringbuf_submit",
}  # fmt: skip
_ATOMIC = {0x00: "+=", 0x40: "|=", 0x50: "&=", 0xA0: "^="}


def _reg(n: int, wide: bool = True) -> str:
    return f"{'r' if wide else 'w'}{n}"


def _mem(size: int, reg: int, off: int) -> str:
    return f"*({_SIZES[size]} *)(r{reg} {'-' if off < 0 else '+'} {abs(off)})"


def _alu(code: int, dst: int, src: int, imm: int, off: int) -> str:
    wide = code & 0x07 == 0x07
    op = code & 0xF0
    d = _reg(dst, wide)
    operand = _reg(src, wide) if code & 0x08 else str(imm)
    if op == 0x80:
        return f"{d} = -{d}"
    if op == 0xD0:  # byte swap: BPF_TO_LE (0) / BPF_TO_BE (8), width in imm
        return f"{_reg(dst)} = {'be' if code & 0x08 else 'le'}{imm} {_reg(dst)}"
    if op in _ALU:
        if op == 0xB0 and off in (8, 16, 32) and code & 0x08:  # movsx
            return f"{d} = (s{off}){operand}"
        return f"{d} {_ALU[op]} {operand}"
    return "(invalid)"


def _jmp(code: int, dst: int, src: int, imm: int, off: int) -> str:
    op = code & 0xF0
    wide = code & 0x07 == 0x05
    if op == 0x00:
        return f"goto {off:+d}" if wide else f"gotol {imm:+d}"
    if op == 0x80:
        if src == 1:
            return f"call pc{imm:+d}"
        return f"call {HELPERS.get(imm, imm)}" + (f"#{imm}" if imm in HELPERS else "")
    if op == 0x90:
        return "exit"
    if op in _JMP:
        operand = _reg(src, wide) if code & 0x08 else str(imm)
        return f"if {_reg(dst, wide)} {_JMP[op]} {operand} goto {off:+d}"
    return "(invalid)"


def _ldst(code: int, dst: int, src: int, imm: int, off: int) -> str:
    cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
    if cls == 0x01 and mode in (0x60, 0x80):
        sign = "s" if mode == 0x80 else ""
        return f"r{dst} = {sign}{_mem(size, src, off)}"
    if cls == 0x02 and mode == 0x60:
        return f"{_mem(size, dst, off)} = {imm}"
    if cls == 0x03 and mode == 0x60:
        return f"{_mem(size, dst, off)} = r{src}"
    if cls == 0x03 and mode == 0xC0 and size in (0x00, 0x18):
        op = imm & ~0x01  # BPF_FETCH is bit 0
        if op in _ATOMIC:
            fetch = " fetch" if imm & 0x01 else ""
            return f"lock {_mem(size, dst, off)} {_ATOMIC[op]} r{src}{fetch}"
        exchanges = {
            0xE1: f"r{src} = xchg({_mem(size, dst, off)}, r{src})",
            0xF1: f"r0 = cmpxchg({_mem(size, dst, off)}, r0, r{src})",
        }
        return exchanges.get(imm, "(invalid)")
    if cls == 0x00 and mode in (0x20, 0x40):  # legacy packet access
        where = f"skb[{imm}]" if mode == 0x20 else f"skb[r{src} + {imm}]"
        return f"r0 = *({_SIZES[size]} *){where}"
    return "(invalid)"


#: The pseudo sources of a 64-bit immediate load (BPF_PSEUDO_*), by src_reg.
_LD_PSEUDO = {1: "map_fd", 2: "map_value", 3: "btf_id", 4: "func", 5: "map_idx",
              6: "map_idx_value"}  # fmt: skip


def disassemble(insns: bytes, limit: int = 16) -> list[str]:
    """The first ``limit`` instructions of ``insns`` (raw ``struct bpf_insn``, little-endian),
    one line each: ``index: hex  text``. A 64-bit immediate load takes two slots and one line;
    a trailing partial instruction is shown as such."""
    out: list[str] = []
    i = 0
    count = len(insns) // INSN.size
    while i < count and len(out) < limit:
        code, regs, off, imm = INSN.unpack_from(insns, i * INSN.size)
        dst, src = regs & 0x0F, regs >> 4
        raw = insns[i * INSN.size : (i + 1) * INSN.size].hex()
        width = 1
        cls = code & 0x07
        if code == 0x18:  # BPF_LD | BPF_IMM | BPF_DW
            if i + 1 < count:
                high = INSN.unpack_from(insns, (i + 1) * INSN.size)[3]
                value = (high << 32) | (imm & 0xFFFFFFFF)
                what = _LD_PSEUDO.get(src)
                text = f"r{dst} = {what}[{imm}]" if what else f"r{dst} = {value:#x} ll"
                width = 2
            else:
                text = "(truncated 64-bit load)"
        elif cls in (0x04, 0x07):
            text = _alu(code, dst, src, imm, off)
        elif cls in (0x05, 0x06):
            text = _jmp(code, dst, src, imm, off)
        else:
            text = _ldst(code, dst, src, imm, off)
        out.append(f"{i:4d}: {raw}  {text}")
        i += width
    if len(insns) % INSN.size and len(out) < limit and i >= count:
        out.append(f"{count:4d}: {insns[count * INSN.size :].hex()}  (partial instruction)")
    return out
