"""The pure parts of scripts/bench_kernels.py: the syscall tracepoints read from `bpftool perf`,
what they mean for every task, the artifacts' verdicts and the report's ratios."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_kernels as bk  # noqa: E402

#: `bpftool perf show -j` in the 6.1 guest, shortened: tp_btf links show as raw tracepoints.
PERF = [
    {"pid": 9, "fd": 70, "prog_id": 1, "fd_type": "raw_tracepoint", "tracepoint": "cgroup_mkdir"},
    {"pid": 9, "fd": 71, "prog_id": 2, "fd_type": "tracepoint", "tracepoint": "sys_exit_mmap"},
    {"pid": 9, "fd": 72, "prog_id": 3, "fd_type": "tracepoint", "tracepoint": "sys_enter_msync"},
    {"pid": 9, "fd": 73, "prog_id": 4, "fd_type": "tracepoint", "tracepoint": "sys_enter_msync"},
    {"pid": 9, "fd": 74, "prog_id": 5, "fd_type": "kprobe", "func": "sys_enter_x"},
]


def test_syscall_tracepoints_keeps_syscall_ones_once() -> None:
    assert bk.syscall_tracepoints(PERF) == ["sys_enter_msync", "sys_exit_mmap"]


def test_raw_syscalls_count_as_syscall_tracepoints() -> None:
    raw = [{"fd_type": "raw_tracepoint", "tracepoint": "sys_enter"}]
    assert bk.syscall_tracepoints(raw) == ["sys_enter"]


def test_tif_note() -> None:
    assert "no task gets TIF_SYSCALL_TRACEPOINT" in bk.tif_note([])
    note = bk.tif_note(["sys_enter_msync", "sys_exit_mmap"])
    assert note.startswith("2 syscall tracepoints attached (sys_enter_msync, sys_exit_mmap)")
    assert "every task" in note
    many = bk.tif_note([f"sys_enter_{i}" for i in range(40)])
    assert many.startswith("40 syscall tracepoints attached (sys_enter_0, sys_enter_1, ")
    assert bk.tif_note("bpftool perf failed: x") == "bpftool perf failed: x"


def test_spread_is_median_and_range_of_ratios() -> None:
    assert bk.spread([2.0, 4.0, 3.0], 2.0) == "1.50x (1.00-2.00)"


def test_verdict() -> None:
    data = b"bytes"
    sha = hashlib.sha256(data).hexdigest()
    index = [
        {"kind": "write", "complete": True, "sha256": "0" * 64, "source_path": "/a"},
        {"kind": "write", "complete": True, "sha256": sha, "source_path": "/a"},
        {"kind": "read", "complete": False, "missing": [[0, 5]], "source_path": "/a"},
    ]
    on_a = lambda r: r.get("source_path") == "/a"  # noqa: E731
    assert bk.verdict(index, "write", on_a, data) == "byte-exact"
    assert bk.verdict(index, "read", on_a, data) == "incomplete: [[0, 5]]"
    assert bk.verdict(index, "bpf", on_a, data) == "missing"
    assert bk.verdict(index[:1], "write", on_a, data) == "another sha256"


def test_report_has_every_loop_and_variant_side_by_side() -> None:
    loops = {"hooked": "h", "unhooked": "u", "program": "p"}
    session = {
        "kinds": ["read"],
        "hooks": {"read": "fentry_syscalls"},
        "syscall_tracepoints": [],
        "artifacts": {"read": "byte-exact"},
        "out_of_scope_records": 0,
        "rounds": {"hooked": [4.0, 5.0], "unhooked": [2.0, 2.0], "program": [3.0, 3.3]},
    }
    result = {
        "kernel": "6.1.0-50-amd64",
        "loops": loops,
        "untraced": {"hooked": [2.0, 2.0, 3.0], "unhooked": [1.0, 1.0, 1.0], "program": [3.0]},
        "sessions": {"fentry-nowrite": session, "fentry": {"error": "not ready"}},
    }
    lines = bk.report(result)
    assert "fentry: did not start: not ready" in "\n".join(lines)
    assert any("no task gets TIF_SYSCALL_TRACEPOINT" in line for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split()[0] in loops}
    assert rows["hooked"].split()[1:] == ["2.00", "(2.00-3.00)", "1.00x", "(1.00-1.50)", "2.25x",
                                          "(2.00-2.50)"]  # fmt: skip
    assert "2.00x (2.00-2.00)" in rows["unhooked"]
    assert "1.05x (1.00-1.10)" in rows["program"]


def test_a_floor_is_a_column_of_its_own_named_by_its_program() -> None:
    loops = {"hooked": "h"}
    floor = {"floor": "kretfunc:__x64_sys_write {}", "rounds": {"hooked": [3.0, 3.2]}}
    result = {
        "kernel": "6.1.0-50-amd64",
        "loops": loops,
        "untraced": {"hooked": [2.0, 2.0]},
        "sessions": {"floor-fexit": floor},
    }
    lines = bk.report(result)
    assert (
        "  floor-fexit: bpftrace -e 'kretfunc:__x64_sys_write {}' (empty programs, no tracecap)"
        in lines
    )
    row = next(line for line in lines if line.startswith("  hooked "))
    assert row.split()[-2:] == ["1.55x", "(1.50-1.60)"]


def test_floors_hook_the_hooked_loops_syscalls_with_empty_programs() -> None:
    for program in bk.FLOORS.values():
        probes = program.split(" {} ")
        assert [p.strip(" {}").split(":")[1] for p in probes] == [
            "__x64_sys_write",
            "__x64_sys_read",
        ]


def test_every_session_captures_known_kinds_and_loops_are_out_of_scope() -> None:
    for session in bk.SESSIONS.values():
        assert set(session.kinds) <= set(bk.KINDS)
    argv = [a for loop in bk.LOOPS.values() for a in loop.argv(Path("/w"))]
    assert bk.COMM not in argv
