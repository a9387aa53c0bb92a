"""Every program of bpf/tracecap.bpf.o fits the 512-byte stack that kernels before 6.13 allow a
whole call chain (the program, its bpf-to-bpf calls and bpf_loop callbacks, each frame rounded
up to 32). This machine's 6.18 gives tracing programs a private stack and loads larger chains,
so it would hide a chain Debian's 6.1 refuses ("combined stack size of 3 calls is 736. Too
large"): the figure is computed (tests/support/bpf_stack.py) from the verifier's per-function
depths and the call graph of each program as this kernel loaded it, with every capture kind
configured so that no configuration-gated path is pruned.

An e2e test because it loads the whole object as root (a few seconds). The fentry/fexit
programs, which this kernel cannot load, are the twins of tracepoint programs (the same bodies
and calls, bpf/file_io_fentry.bpf.h, mappings_fentry.bpf.h, mem_fentry.bpf.h): their chains are
the twins' with the program's own frame grown by what the compiler gave it more (a
tracepoint-shaped copy of the arguments, where the twin has one).
"""

from __future__ import annotations

import os
import re

import pytest

from collector import libbpf, probes
from tests.support.bpf_object import built_object
from tests.support.bpf_stack import (
    MAX_STACK,
    Chain,
    compiled_frames,
    deepest_chains,
    frame_size,
    twin_chain,
)
from tracecap.options import parse_args

pytestmark = pytest.mark.ebpf

#: Every kind that loads programs, with filters, so that the .rodata the collector would write
#: enables every path the programs have.
EVERY_KIND = ("--capture", "write=/tmp/x*", "--capture", "read=/tmp/x*", "--capture", "mem",
              "--capture", "exec", "--capture", "module", "--capture", "bpf")  # fmt: skip

#: Section prefixes of programs this kernel cannot load (no trampolines here).
UNLOADABLE = ("fentry/", "fexit/")
#: The fentry programs on kernel functions (bpf/module_kread.bpf.h) have no tracepoint twin:
#: each is bounded by the module exit program whose calls include its own (tc_module_start, the
#: file's path walk by tc_module_file: tc_kread_data has no file, so its bound is generous), or
#: by its own chunk loop, tc_kread_chunk (a bpf_loop callback, its compiled frame), whichever
#: is deeper.
KREAD_TWINS = {"tc_kread_file": "tc_finit_module_exit", "tc_kread_data": "tc_init_module_exit"}
KREAD_CHUNK = "tc_kread_chunk"


#: A file syscall's exit at its tracepoint: the program shared by its group.
SHARED_EXIT = {sc: prog for prog, syscalls in probes.SHARED_EXITS.items() for sc in syscalls}
#: The fentry twins of the enters shared at the tracepoints (probes.SHARED_ENTERS): a
#: trampoline is per function, so each syscall has its own.
SHARED_ENTER_TWINS = {
    "tc_fenter_mprotect": "tc_mprotect_enter",
    "tc_fenter_pkey_mprotect": "tc_mprotect_enter",
    "tc_map_fenter_msync": "tc_map_msync_munmap",
    "tc_map_fenter_munmap": "tc_map_msync_munmap",
}


#: tc_<pre>f<enter|exit>_<syscall>: the fentry/fexit twins (bpf/*_fentry.bpf.h), <pre> the
#: tracepoint program's own prefix ("map_" for the shared mappings').
FENTRY_NAME = re.compile(r"tc_(\w*?)f(enter|exit)_(\w+)")


def twin(program: str, loaded: dict[str, Chain]) -> str:
    """The tracepoint program an fentry/fexit one is the twin of: tc_fexit_write: tc_exit_io
    (the shared exit), tc_fenter_write: tc_enter_write, tc_fexit_bpf: tc_bpf_exit,
    tc_map_fexit_mmap: tc_map_mmap_exit; KREAD_TWINS, SHARED_ENTER_TWINS."""
    if program in KREAD_TWINS:
        return KREAD_TWINS[program]
    if program in SHARED_ENTER_TWINS:
        return SHARED_ENTER_TWINS[program]
    if m := FENTRY_NAME.fullmatch(program):
        pre, where, rest = m.groups()
        shared = SHARED_EXIT.get(rest, "") if where == "exit" and not pre else ""
        own = f"tc_{pre}{rest}" if pre else ""
        for name in (shared, f"tc_{pre}{where}_{rest}", f"tc_{pre}{rest}_{where}", own):
            if name in loaded:
                return name
    raise AssertionError(f"{program}: no loaded twin")


@pytest.fixture(scope="module")
def chains() -> dict[str, Chain]:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    path = str(built_object())
    obj = libbpf.BpfObject(path)
    try:
        lib = libbpf.library()
        lib.bpf_program__section_name.restype = libbpf.ct.c_char_p
        lib.bpf_program__section_name.argtypes = [libbpf.ct.c_void_p]
        everything = set(obj.programs)
        programs = {
            name
            for name, prog in obj.programs.items()
            if not lib.bpf_program__section_name(prog).decode().startswith(UNLOADABLE)
        }
    finally:
        obj.close()
    rodata = probes.rodata_for(parse_args(list(EVERY_KIND)), 65534, 0)
    loaded = deepest_chains(path, programs, rodata)
    frames = compiled_frames(path)
    twins = {p: twin_chain(p, loaded[twin(p, loaded)], frames) for p in everything - programs}
    for sc in probes.FEXIT_ONLY:
        # the enter's calls too (the scope check), each bound with the program's own frame
        p = f"tc_fexit_{sc}"
        enter = twin_chain(p, loaded[f"tc_enter_{sc}"], frames)
        twins[p] = max(twins[p], enter, key=lambda c: c.combined)
    for p in KREAD_TWINS:
        own = twins[p].frames[0]
        chunked = Chain(p, (own, (KREAD_CHUNK, frames[KREAD_CHUNK])))
        twins[p] = max(twins[p], chunked, key=lambda c: c.combined)
    return loaded | twins


def test_every_call_chain_fits_512_bytes_of_stack(chains: dict[str, Chain]) -> None:
    assert len(chains) > 90, sorted(chains)  # the whole object (99 programs), not a part of it
    over = [str(c) for c in sorted(chains.values(), key=lambda c: -c.combined)
            if c.combined > MAX_STACK]  # fmt: skip
    assert not over, "call chains over 512 bytes of stack (kernels before 6.13 refuse them):\n" + (
        "\n".join(over)
    )


def test_the_chains_are_seen(chains: dict[str, Chain]) -> None:
    """The figures are the verifier's: a chain through a bpf_loop callback is found (tc_mem_page
    under tc_mem_report, tc_emit_chunk under the syscalls' shared exit); frames round up to 32."""
    names = [name for name, _ in chains["tc_mprotect_enter"].frames]
    assert names[:3] == ["tc_mprotect_enter", "tc_mem_report", "tc_mem_page"], names
    assert [name for name, _ in chains["tc_exit_io"].frames][-1] == "tc_emit_chunk"
    assert chains["tc_exit_io"].combined == sum(
        frame_size(d) for _, d in chains["tc_exit_io"].frames
    )
    assert (frame_size(0), frame_size(1), frame_size(32), frame_size(33)) == (32, 32, 32, 64)


def test_an_fentry_chain_is_its_twins_with_its_own_frame(chains: dict[str, Chain]) -> None:
    fexit, exit_ = chains["tc_fexit_sendmsg"], chains["tc_exit_io"]
    assert fexit.frames[1:] == exit_.frames[1:]
    # the program's own copy of the tracepoint's arguments (struct trace_event_raw_sys_exit)
    assert 0 < fexit.frames[0][1] - exit_.frames[0][1] <= 32


def test_a_fexit_only_chain_is_bound_by_both_twins(chains: dict[str, Chain]) -> None:
    """tc_fexit_write (bpf/file_io_fentry.bpf.h TC_IO_FEXIT) checks the scope as tc_enter_write
    does and sends as tc_exit_io does, with no tracepoint-shaped copy."""
    fexit, exit_ = chains["tc_fexit_write"], chains["tc_exit_io"]
    assert fexit.combined >= max(
        fexit.frames[0][1] + sum(frame_size(d) for _, d in exit_.frames[1:]),
        fexit.frames[0][1] + sum(frame_size(d) for _, d in chains["tc_enter_write"].frames[1:]),
    )
    assert fexit.frames[0][1] <= exit_.frames[0][1]
