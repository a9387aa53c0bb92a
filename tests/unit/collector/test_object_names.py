"""The Python stand-in for libbpf's generated skeleton: every map and program the collector
names from Python exists in the built object.

A skeleton would make a misspelt name fail to compile; through the ctypes binding it would fail
only when the collector loads, as root. Here the names are read from the object's ELF symbol
table (programs: global functions outside .text, as libbpf finds them; maps: the symbols of the
.maps section). ``make -C bpf`` runs first and rebuilds the object only if a source changed.
Without the tools the test skips locally and fails under CI.
"""

from __future__ import annotations

import ast
import re
import subprocess

import pytest

from collector import hooks, probes
from tests.support.bpf_object import OBJECT, ROOT, built_object, need
from tracecap import kinds, options

#: BpfObject's methods that take a map or program name as their first argument.
NAME_TAKING = {
    "set_max_entries", "attach", "attach_tracepoint", "attach_cgroup", "map_fd", "update",
    "delete", "lookup", "drain",
}  # fmt: skip


def _readelf(flag: str) -> str:
    return subprocess.run(
        [need("readelf"), flag, str(OBJECT)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip


def symbols_by_kind(sections: str, symbols: str) -> dict[str, set[str]]:
    """{"programs": ..., "maps": ...} from ``readelf -SW`` and ``readelf -sW`` output."""
    section_of = {m[1]: m[2] for m in re.finditer(r"\[\s*(\d+)\]\s+(\S+)", sections)}
    found: dict[str, set[str]] = {"programs": set(), "maps": set()}
    for line in symbols.splitlines():
        fields = line.split()
        if len(fields) != 8 or fields[4] != "GLOBAL":
            continue
        kind, section, name = fields[3], section_of.get(fields[6]), fields[7]
        if kind == "FUNC" and section != ".text":
            found["programs"].add(name)
        elif kind == "OBJECT" and section == ".maps":
            found["maps"].add(name)
    return found


@pytest.fixture(scope="module")
def in_object() -> dict[str, set[str]]:
    built_object()
    return symbols_by_kind(_readelf("-SW"), _readelf("-sW"))


def test_every_map_the_collector_opens_is_in_the_object(in_object):
    assert {str(m) for m in probes.BpfMap} - in_object["maps"] == set()


def test_every_program_the_collector_may_enable_is_in_the_object(in_object):
    assert probes.PROGRAM_NAMES - in_object["programs"] == set()


def test_the_symbol_reading_finds_both_kinds(in_object):
    """A parse that found nothing would make the two checks above pass vacuously."""
    assert "file_rb" in in_object["maps"]
    assert "tc_fork" in in_object["programs"]
    assert "cfg" not in in_object["maps"]  # a .rodata variable, not a map


def test_programs_for_draws_only_on_the_table():
    first = {
        kind: hooks.Choice(kind, kind_hooks[0].name) for kind, kind_hooks in hooks.HOOKS.items()
    }
    chosen = [
        probes.programs_for(first | {kind: hooks.Choice(kind, hook.name)})
        for kind, kind_hooks in hooks.HOOKS.items()
        for hook in kind_hooks
    ]
    assert all(names <= probes.PROGRAM_NAMES for names in chosen)
    # every kind's hooks load different programs: one set per second hook, and the first's
    alternatives = sum(len(kind_hooks) - 1 for kind_hooks in hooks.HOOKS.values())
    assert len({frozenset(names) for names in chosen}) == 1 + alternatives


def test_a_refused_kind_loads_none_of_its_programs():
    choices = {"write": hooks.Choice("write", "syscall_tracepoints"),
               "mem": hooks.Choice("mem", None, "mem: needs bpf_find_vma")}  # fmt: skip
    names = probes.programs_for(choices)
    assert names & probes.CAPTURE_PROGRAMS["write"]
    assert not names & probes.CAPTURE_PROGRAMS["mem"]


def test_every_hook_has_its_programs():
    """The hooks table (collector/hooks.py) and the programs of each hook name the same."""
    assert set(probes.HOOK_PROGRAMS) == {
        (kind, hook.name) for kind, kind_hooks in hooks.HOOKS.items() for hook in kind_hooks
    }
    assert set(hooks.HOOKS) == set(kinds.CAPTURE_TOKENS)


def test_names_reach_the_object_only_through_the_tables():
    """A string literal handed to the object would escape the checks above."""
    literal = []
    for path in sorted((ROOT / "collector").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in NAME_TAKING
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                literal.append(f"{path.name}:{node.lineno}: {node.args[0].value!r}")
    assert literal == []


def test_every_capture_kind_has_its_collector_facts():
    """A kind added to tracecap/kinds.py without programs or a ring would load nothing."""
    assert set(probes.CAPTURE_PROGRAMS) == set(kinds.CAPTURE_TOKENS)
    assert set(probes.CAPTURE_RING) == set(kinds.CAPTURE_TOKENS)
    assert all(probes.CAPTURE_PROGRAMS.values())


def test_ring_sizes_follow_the_kinds_on():
    only_exec = options.parse_args(["--capture", "exec"])
    sizes = probes.ring_sizes(only_exec.kinds(), 8 << 20)
    assert sizes[probes.BpfMap.OBJ_RB] == probes.OBJECT_RING_BYTES
    assert sizes[probes.BpfMap.FILE_RB] == sizes[probes.BpfMap.PKT_RB] == probes.UNUSED_RING_BYTES
    writes = probes.ring_sizes(options.parse_args(["--capture", "write"]).kinds(), 1 << 20)
    assert writes[probes.BpfMap.FILE_RB] == 1 << 20
    # the object ring carries forks and exits whatever is captured
    assert writes[probes.BpfMap.OBJ_RB] == probes.PROC_RING_BYTES


def test_the_packet_ring_is_as_large_as_the_file_ring_and_never_below_its_floor():
    net = options.parse_args(["--capture", "network"]).kinds()
    assert probes.ring_sizes(net, 128 << 20)[probes.BpfMap.PKT_RB] == 128 << 20
    assert probes.ring_sizes(net, 1 << 20)[probes.BpfMap.PKT_RB] == probes.PACKET_RING_BYTES
    # not captured: one page whatever --ring-mb says
    writes = options.parse_args(["--capture", "write"]).kinds()
    assert probes.ring_sizes(writes, 128 << 20)[probes.BpfMap.PKT_RB] == probes.UNUSED_RING_BYTES


#: write's shared-mapping programs at the tracepoints and their fentry/fexit twins
#: (bpf/mappings_fentry.bpf.h: a trampoline is per function, so msync and munmap, one program
#: at the tracepoints, have one each); the exit (tc_map_exit, tp_btf) is on both hooks.
MAPPING_TWINS = {
    "tc_map_msync_munmap": {"tc_map_fenter_msync", "tc_map_fenter_munmap"},
    "tc_map_mmap_exit": {"tc_map_fexit_mmap"},
}


@pytest.mark.parametrize("kind", ["write", "read"])
def test_the_fentry_hook_loads_a_twin_of_each_tracepoint_program_and_no_tracepoint(kind):
    """bpf/file_io_fentry.bpf.h: tc_fenter_X/tc_fexit_X for each tc_enter_X (whose exit is a
    program shared by its group at the tracepoints), tc_fexit_X alone for the plain reads and
    writes; a single syscall tracepoint left would make every syscall of every process pay
    again."""
    tp = probes.HOOK_PROGRAMS[kind, "syscall_tracepoints"]
    fentry = probes.HOOK_PROGRAMS[kind, "fentry_syscalls"]
    enters = {n for n in tp if n.startswith("tc_enter_")}
    syscalls = {n.removeprefix("tc_enter_") for n in enters}
    twins = {f"tc_fexit_{sc}" for sc in syscalls} | {
        f"tc_fenter_{sc}" for sc in syscalls - probes.FEXIT_ONLY
    }
    others = set().union(
        *(MAPPING_TWINS.get(n, {n}) for n in tp - enters - probes.SHARED_EXITS.keys())
    )
    assert fentry == twins | others
    assert not {n for n in fentry if n.startswith(("tc_enter_", "tc_exit_"))}
    assert {n for n in fentry if n.startswith("tc_fenter_")}
    assert f"tc_fexit_{kind}" in fentry and f"tc_fenter_{kind}" not in fentry


def test_the_fexit_only_syscalls_have_no_fentry_program_in_the_object(in_object):
    """One program a plain read or write on fentry_syscalls (bpf/file_io_fentry.bpf.h
    TC_IO_FEXIT): an fentry left in the object would be a second program nothing loads."""
    assert set(hooks.FILE_SYSCALLS["write"] + hooks.FILE_SYSCALLS["read"]) >= probes.FEXIT_ONLY
    assert {f"tc_fexit_{sc}" for sc in probes.FEXIT_ONLY} <= in_object["programs"]
    assert not {f"tc_fenter_{sc}" for sc in probes.FEXIT_ONLY} & in_object["programs"]


def test_the_mem_fentry_hook_loads_a_twin_of_each_tracepoint_program():
    """bpf/mem_fentry.bpf.h: tc_fenter_X for tc_X_enter, tc_fexit_X for tc_X_exit, and for an
    enter shared by syscalls (SHARED_ENTERS) tc_fenter_X of each; the exit program (tp_btf) is
    on both hooks."""
    tp = probes.HOOK_PROGRAMS["mem", "syscall_tracepoints"]
    fentry = probes.HOOK_PROGRAMS["mem", "fentry_syscalls"]
    syscalls = tp - {"tc_mem_exit"} - probes.SHARED_ENTERS.keys()
    renamed = {
        re.sub(r"^tc_(\w+)_(enter|exit)$", lambda m: f"tc_f{m[2]}_{m[1]}", n) for n in syscalls
    }
    shared = {f"tc_fenter_{sc}" for p in tp & probes.SHARED_ENTERS.keys()
              for sc in probes.SHARED_ENTERS[p]}  # fmt: skip
    assert shared == {"tc_fenter_mprotect", "tc_fenter_pkey_mprotect"}
    assert fentry == renamed | shared | {"tc_mem_exit"}


def test_module_and_bpf_fentry_hooks_pair_each_syscall_and_load_no_tracepoint():
    assert probes.HOOK_PROGRAMS["module", "fentry_syscalls"] == {
        "tc_fenter_init_module", "tc_fexit_init_module",
        "tc_fenter_finit_module", "tc_fexit_finit_module",
    }  # fmt: skip
    assert probes.HOOK_PROGRAMS["bpf", "fentry_syscalls"] == {"tc_fenter_bpf", "tc_fexit_bpf"}


@pytest.mark.parametrize("kinds_on", [("write",), ("read",), ("write", "read")])
def test_each_syscall_tracepoint_captured_gets_one_shared_exit(kinds_on):
    """bpf/shared_exits.bpf.h: every syscall whose enter is loaded has its exit attached to
    exactly one shared program, and no other syscall's exit is."""
    choices = {kind: hooks.Choice(kind, "syscall_tracepoints") for kind in kinds_on}
    loaded = probes.programs_for(choices)
    attached = probes.exit_tracepoints(choices)
    syscalls = [sc for scs in attached.values() for sc in scs]
    assert sorted(syscalls) == sorted(
        n.removeprefix("tc_enter_") for n in loaded if n.startswith("tc_enter_")
    )
    assert attached.keys() == loaded & probes.SHARED_EXITS.keys()


def test_no_shared_exit_is_attached_for_the_fentry_hook():
    assert probes.exit_tracepoints({"write": hooks.Choice("write", "fentry_syscalls")}) == {}
