"""The kernel matrix's pure parts (scripts/kernel_smoke.py, scripts/test_kernels.py): reading
the collector's refusals, which rows fail `make test-kernels`, the printed matrix."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from collector.hooks import choose

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _script("kernel_smoke")
matrix = _script("test_kernels")

#: What a 5.10 kernel offers (no bpf_loop, bpf_find_vma, kfuncs or sock_*_length).
KERNEL_5_10 = frozenset(
    {"btf", "map:ringbuf", "prog:tracepoint", "prog:raw_tp", "prog:tp_btf", "prog:cgroup_skb",
     "prog:cgroup_sock", "prog:fentry", "prog:kprobe", "tracefs:syscalls",
     "tracefs:module_syscalls"}
)  # fmt: skip


def test_every_refusal_of_the_collectors_all_refused_error_is_read_back_per_kind():
    choices = choose(["write", "mem", "module", "network"], KERNEL_5_10)
    reasons = "; ".join(c.reason for c in choices.values())
    stderr = f"tracecap collector: no capture kind asked for can run on this kernel: {reasons}\n"
    assert smoke._refusals(stderr) == {kind: c.reason for kind, c in choices.items()}


def test_not_capturing_lines_are_read_back_too():
    (choice,) = choose(["mem"], KERNEL_5_10).values()
    assert smoke._refusals(f"tracecap collector: not capturing {choice.reason}\n") == {
        "mem": choice.reason
    }


def test_missing_incomplete_and_errors_fail_the_run_refusals_and_fallbacks_do_not():
    rows = [
        {"name": "host", "kernel": "6.18", "verdicts": {"write": "works",
                                                        "module": "fallback: raw_syscalls"}},
        {"name": "5.10", "kernel": "5.10.0", "verdicts": {"write": "refused: write: needs x"}},
        {"name": "6.1", "kernel": "6.1.0", "verdicts": {"exec": "incomplete: another file",
                                                       "mem": "missing"}},
        {"name": "6.12", "kernel": "6.12", "error": "no result within 2400 s"},
    ]  # fmt: skip
    assert matrix.failures(rows) == [
        "6.12: no result within 2400 s",
        "6.1 exec: incomplete: another file",
        "6.1 mem: missing",
    ]


def test_the_printed_matrix_has_a_class_per_kind_and_the_times():
    rows = [{"name": "6.1", "kernel": "6.1.0-50-amd64", "boot_s": 95.2, "ready_s": 101.0,
             "smoke_s": 240.4, "seconds": 352, "verdicts": {"net": "refused: network: needs y",
                                                            "write": "works"},
             "hooks": {"write": {"hook": "syscall_tracepoints"}}}]  # fmt: skip
    lines = matrix._table(rows)
    assert lines[0].split() == ["kernel", "boot", "ready", "smoke", "total", "net", "write"]
    assert lines[1].split() == ["6.1", "(6.1.0-50-amd64)", "95s", "101s", "240s", "352s",
                                "refused", "works"]  # fmt: skip
    assert "  6.1 net: refused: network: needs y" in lines
    assert "  6.1 hooks: write syscall_tracepoints" in lines
