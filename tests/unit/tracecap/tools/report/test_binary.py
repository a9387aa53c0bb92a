"""What the report reads inside artifacts: ELF headers, .modinfo, hex, BPF instructions."""

from __future__ import annotations

import struct

from tracecap.tools.report import binary


def elf64(e_type: int, machine: int, phdrs: list[int] = ()) -> bytes:
    """An ELF64 little-endian header with program headers of the given p_types."""
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5], head[6] = 2, 1, 1
    struct.pack_into("<HH", head, 16, e_type, machine)
    struct.pack_into("<Q", head, 32, 64)  # e_phoff
    struct.pack_into("<HH", head, 54, 56, len(phdrs))
    for p_type in phdrs:
        head += struct.pack("<I", p_type) + bytes(52)
    return bytes(head)


def test_elf_types_and_machines() -> None:
    assert binary.elf_info(elf64(2, 62)).text() == "ELF64 EXEC x86-64 (LE)"
    assert binary.elf_info(elf64(3, 183, [6, 3])).kind == "PIE"  # PT_PHDR, PT_INTERP
    assert binary.elf_info(elf64(3, 183, [1])).kind == "DYN"  # a shared library
    assert binary.elf_info(elf64(1, 9999)).text() == "ELF64 REL machine 9999 (LE)"
    head32 = bytearray(52)
    head32[:6] = b"\x7fELF\x01\x02"
    struct.pack_into(">HH", head32, 16, 2, 8)
    assert binary.elf_info(bytes(head32)).text() == "ELF32 EXEC MIPS (BE)"


def test_not_elf_or_truncated_is_none_never_an_error() -> None:
    assert binary.elf_info(b"#!/bin/sh\n") is None
    assert binary.elf_info(b"\x7fELF") is None
    header = elf64(3, 62, [3])
    truncated = header[:66]  # the program header table cut inside its p_type
    assert binary.elf_info(truncated).kind == "DYN"


def module_image(modinfo: bytes) -> bytes:
    """An ELF64 relocatable with sections: null, .modinfo, .shstrtab."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    modinfo_off = data_off
    strtab_off = modinfo_off + len(modinfo)
    shoff = strtab_off + len(shstrtab)
    head = bytearray(elf64(1, 62)[:64])
    struct.pack_into("<Q", head, 40, shoff)
    struct.pack_into("<HHH", head, 58, 64, 3, 2)

    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)

    sections = sh(0, 0, 0) + sh(1, modinfo_off, len(modinfo)) + sh(10, strtab_off, len(shstrtab))
    return bytes(head) + modinfo + shstrtab + sections


def test_modinfo_reads_the_section_by_name() -> None:
    image = module_image(b"license=GPL\0name=crc7\0\0vermagic=6.1.0 SMP\0junk\0")
    assert binary.modinfo(image) == [("license", "GPL"), ("name", "crc7"),
                                     ("vermagic", "6.1.0 SMP")]  # fmt: skip
    assert binary.modinfo(image[:100]) == []  # section headers cut off
    assert binary.modinfo(b"not an elf") == []


def test_hex_preview_is_hexdump_c() -> None:
    assert binary.hex_preview(b"AB\x00\xff" * 5) == (
        "00000000  41 42 00 ff 41 42 00 ff 41 42 00 ff 41 42 00 ff  |AB..AB..AB..AB..|\n"
        "00000010  41 42 00 ff                                      |AB..|"
    )


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return binary.INSN.pack(code, dst | src << 4, off, imm)


def texts(data: bytes, limit: int = 16) -> list[str]:
    return [line.split("  ", 2)[-1] for line in binary.disassemble(data, limit)]


def test_disassembly_of_the_common_instructions() -> None:
    prog = b"".join([
        insn(0xB7, dst=0, imm=0),                  # r0 = 0
        insn(0xBF, dst=6, src=1),                  # r6 = r1
        insn(0x07, dst=10, imm=-8),                # r10 += -8
        insn(0x04, dst=1, imm=1),                  # w1 += 1
        insn(0x18, dst=1, src=1, imm=5), insn(0),  # r1 = map_fd[5]
        insn(0x18, dst=2, imm=1), insn(0, imm=2),  # r2 = 0x200000001 ll
        insn(0x61, dst=2, src=1, off=4),           # r2 = *(u32 *)(r1 + 4)
        insn(0x7B, dst=10, src=1, off=-8),         # *(u64 *)(r10 - 8) = r1
        insn(0x62, dst=10, off=-4, imm=7),         # *(u32 *)(r10 - 4) = 7
        insn(0x15, dst=0, off=2, imm=0),           # if r0 == 0 goto +2
        insn(0x5D, dst=1, src=2, off=-3),          # if r1 != r2 goto -3
        insn(0x85, imm=14),                        # call get_current_pid_tgid
        insn(0xDB, dst=1, src=2, imm=0x01),        # lock ... += r2 fetch
        insn(0xDC, dst=3, imm=16),                 # r3 = be16 r3
        insn(0x95),                                # exit
    ])  # fmt: skip
    assert texts(prog, 20) == [
        "r0 = 0",
        "r6 = r1",
        "r10 += -8",
        "w1 += 1",
        "r1 = map_fd[5]",
        "r2 = 0x200000001 ll",
        "r2 = *(u32 *)(r1 + 4)",
        "*(u64 *)(r10 - 8) = r1",
        "*(u32 *)(r10 - 4) = 7",
        "if r0 == 0 goto +2",
        "if r1 != r2 goto -3",
        "call get_current_pid_tgid#14",
        "lock *(u64 *)(r1 + 0) += r2 fetch",
        "r3 = be16 r3",
        "exit",
    ]
    lines = binary.disassemble(prog, 20)
    assert lines[5].startswith("   6: 1802000001000000")  # indices count slots, not lines


def test_disassembly_stops_at_the_limit_and_shows_what_is_bad() -> None:
    assert len(binary.disassemble(insn(0x95) * 40)) == 16
    assert texts(insn(0xFF) + insn(0x18) + b"\x95\x00") == [
        "(invalid)",
        "(truncated 64-bit load)",
        "(partial instruction)",
    ]


def test_prog_type_names() -> None:
    assert binary.prog_type_name(1) == "socket_filter"
    assert binary.prog_type_name(29) == "lsm"
    assert binary.prog_type_name(999) == "type 999"
    assert binary.prog_type_name("x") == "type x"
