"""The combined-stack arithmetic of tests/support/bpf_stack.py (the e2e test
tests/e2e/test_bpf_stack.py applies it to every program the kernel loads): frames round up to
32 as the verifier before 6.13 rounds them, the costliest chain wins, and the depths are read
from the verifier's level-4 line."""

from __future__ import annotations

import struct

import pytest

from tests.support.bpf_stack import Chain, compiled_frame, deepest, frame_size, stack_depths


@pytest.mark.parametrize(
    ("depth", "size"), [(0, 32), (1, 32), (32, 32), (33, 64), (248, 256), (408, 416)]
)
def test_frames_round_up_to_32_and_an_empty_one_costs_32(depth: int, size: int) -> None:
    assert frame_size(depth) == size


def test_the_costliest_chain_is_chosen_not_the_longest() -> None:
    # 0 calls 1 (which calls 2 and 3) and 4; 4 is deep but alone
    depths = [100, 8, 8, 0, 300]
    calls = {0: {1, 4}, 1: {2, 3}}
    assert deepest(depths, calls) == (0, 4)
    assert sum(frame_size(depths[i]) for i in deepest(depths, calls)) == 128 + 320


def test_a_chain_through_a_callback_adds_every_frame() -> None:
    # Debian 6.1's refusal of tc_mem_exit, figures as this host's verifier printed them
    chain = Chain("tc_mem_exit", (("tc_mem_exit", 248), ("tc_mem_exit_region", 80),
                                  ("tc_mem_report", 408), ("tc_mem_page", 72),
                                  ("tc_mem_hash_page", 0)))  # fmt: skip
    assert chain.combined == 256 + 96 + 416 + 96 + 32 == 896
    assert str(chain).startswith("tc_mem_exit: 896 bytes: tc_mem_exit(248) -> ")


def test_the_depths_come_from_the_last_stack_depth_line() -> None:
    log = "func#0 ...\nprocessed 10 insns\nstack depth 248+80+0+408\nverification time 5 usec\n"
    assert stack_depths(log) == [248, 80, 0, 408]
    assert stack_depths("stack depth 16\n") == [16]
    with pytest.raises(ValueError, match="stack depth"):
        stack_depths("processed 10 insns\n")


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def test_the_compiled_frame_is_the_deepest_offset_touched() -> None:
    code = b"".join([
        _insn(0x7B, dst=10, src=1, off=-16),        # *(u64 *)(r10 - 16) = r1
        _insn(0x79, dst=2, src=10, off=-24),        # r2 = *(u64 *)(r10 - 24)
        _insn(0xBF, dst=3, src=10),                 # r3 = r10
        _insn(0x07, dst=3, imm=-40),                # r3 += -40: a helper's buffer
        _insn(0x18, dst=1, src=1), _insn(0),        # r1 = map (16 bytes)
        _insn(0x95),                                # exit
    ])  # fmt: skip
    assert compiled_frame(code) == 40
    # a register that stopped being a frame pointer does not count
    moved = _insn(0xBF, dst=3, src=10) + _insn(0xB7, dst=3, imm=7) + _insn(0x07, dst=3, imm=-400)
    assert compiled_frame(moved) == 0
