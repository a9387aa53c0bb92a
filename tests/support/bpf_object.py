"""The built BPF object for unit tests that read it (its BTF, its symbols): built by
``make -C bpf`` when a source is newer, with the tools found or the test skipped (failed in CI).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BPF_DIR = ROOT / "bpf"
OBJECT = BPF_DIR / "tracecap.bpf.o"


def need(tool: str) -> str:
    """The tool's path; a missing tool skips the test, or fails it when CI is set."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def built_object() -> Path:
    """``bpf/tracecap.bpf.o``, rebuilt first when a source is newer (make decides)."""
    sources = [*BPF_DIR.glob("*.bpf.c"), *BPF_DIR.glob("*.h")]
    if not OBJECT.exists() or any(s.stat().st_mtime > OBJECT.stat().st_mtime for s in sources):
        need("clang")
        subprocess.run([need("make"), "-C", str(BPF_DIR)], check=True, capture_output=True,
                       timeout=600)  # fmt: skip
    assert OBJECT.exists(), f"make -C bpf did not produce {OBJECT}"
    return OBJECT


_SHT_SYMTAB = 2
_STT_FUNC, _STB_GLOBAL = 2, 1
_SYM_SIZE = 24


def program_sections(path: Path) -> dict[str, str]:
    """Each program of the BPF object at ``path`` (a global function outside .text, as libbpf
    finds them) and its ELF section, which says where libbpf attaches it ("tp/syscalls/...",
    "fentry/__x64_sys_write", ...): what the macros of bpf/*.h expand to, read from the object
    rather than the sources."""
    data = path.read_bytes()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]

    def name_at(strtab: tuple, off: int) -> str:
        start = strtab[4] + off
        return data[start : data.index(b"\0", start)].decode()

    names = [name_at(sections[shstrndx], s[0]) for s in sections]
    symtab = next(s for s in sections if s[1] == _SHT_SYMTAB)
    out = {}
    for off in range(symtab[4], symtab[4] + symtab[5], _SYM_SIZE):
        name_off, info, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", data, off)
        if info & 0xF == _STT_FUNC and info >> 4 == _STB_GLOBAL and names[shndx] != ".text":
            out[name_at(sections[symtab[6]], name_off)] = names[shndx]
    return out
