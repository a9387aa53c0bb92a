"""Kernel symbol addresses found in /proc/kallsyms text (collector/kernel_symbols.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.kernel_symbols import KernelSymbols, find_symbols

KALLSYMS = (
    b"ffffffff81000000 T _text\n"
    b"ffffffff8143a0b0 t __fput\n"
    b"ffffffff8143a2f0 t ____fput\n"
    b"ffffffff8143a300 T fput\n"
    b"ffffffffc0a01000 t ____fput_helper\t[somemod]\n"
)


def test_a_local_text_symbol_is_found_by_its_whole_name() -> None:
    assert find_symbols(KALLSYMS, ["____fput", "fput", "_text"]) == {
        "____fput": 0xFFFFFFFF8143A2F0,
        "fput": 0xFFFFFFFF8143A300,
        "_text": 0xFFFFFFFF81000000,
    }


def test_a_missing_symbol_is_left_out() -> None:
    assert find_symbols(KALLSYMS, ["nosuch", "____fput_help"]) == {}


def test_kptr_restrict_zeros_read_as_zero() -> None:
    hidden = KALLSYMS.replace(b"ffffffff8143a2f0", b"0000000000000000")
    assert find_symbols(hidden, ["____fput"]) == {"____fput": 0}


def test_the_lookup_reads_the_file_on_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_bytes(KALLSYMS)
    symbols = KernelSymbols(["____fput", "nosuch"], str(path))
    assert symbols.get("____fput") == 0xFFFFFFFF8143A2F0
    assert symbols.get("nosuch") == 0


def test_an_unreadable_file_is_an_error_when_asked(tmp_path: Path) -> None:
    symbols = KernelSymbols(["____fput"], str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError):
        symbols.get("____fput")
