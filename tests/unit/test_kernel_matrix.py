"""The kernel matrix's pure parts (scripts/kernel_smoke.py, scripts/test_kernels.py): reading
the collector's refusals, which rows fail `make test-kernels`, the printed matrix."""

from __future__ import annotations

import hashlib
import importlib.util
import lzma
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


def test_the_image_the_kernel_receives_follows_kmods_version_and_the_kernels_compression():
    image = b"\x7fELF" + bytes(range(256)) * 4
    xz = lzma.compress(image)
    receives = smoke.kernel_receives
    assert receives(image, None, 30, "xz") == image
    # kmod 30 (Debian 12) decompresses itself; kmod 31+ hands the file to a kernel that can
    assert receives(xz, "xz", 30, "xz") == image
    assert receives(xz, "xz", 31, "xz") == xz
    assert receives(xz, "xz", 31, "zstd") == image
    assert receives(xz, "xz", 34, "") == image


def test_the_smoke_runs_the_kinds_asked_for(monkeypatch):
    monkeypatch.setenv("TRACECAP_SMOKE_KINDS", "module,write")
    assert smoke._kinds() == ["module", "write"]
    monkeypatch.setenv("TRACECAP_SMOKE_KINDS", "")
    assert smoke._kinds() == list(smoke.KINDS)
    monkeypatch.setenv("TRACECAP_SMOKE_KINDS", "modules")
    try:
        smoke._kinds()
    except SystemExit as exc:
        assert "unknown kinds ['modules']" in str(exc)
    else:
        raise AssertionError("an unknown kind was accepted")


def _module_record(data: bytes, **fields) -> dict:
    return {"kind": "module", "sha256": hashlib.sha256(data).hexdigest(), "complete": True,
            "path": "host/m", "ret": 0, **fields}  # fmt: skip


def test_the_module_check_wants_a_compressed_file_flagged_as_one():
    data = b"xz file"
    event = {"event": "module_load", "sha256": hashlib.sha256(data).hexdigest(), "ret": 0}
    check = smoke._module_check({"crc8": data}, 0, {}, frozenset({"crc8"}))
    flagged = _module_record(data, syscall="finit_module", load_flags=4)
    assert check([flagged], [event]) == "works"
    assert check([_module_record(data, syscall="finit_module", load_flags=0)], [event]) == (
        "incomplete: crc8: load_flags 0"
    )
    plain = smoke._module_check({"crc8": data}, 0, {})
    assert plain([flagged], [event]) == "incomplete: crc8: load_flags 4"


def test_a_missing_module_says_what_was_recorded_instead():
    check = smoke._module_check({"crc8": b"image"}, 0, {})
    other = {"kind": "module", "sha256": None, "syscall": "finit_module", "ret": 0,
             "source_path": "/lib/m.ko", "error": "gone"}  # fmt: skip
    verdict = check([other], [])
    assert verdict.startswith("missing: no record of crc8")
    assert "('finit_module', 0, '/lib/m.ko', 'gone')" in verdict


def test_guests_that_run_at_once_share_the_cpus():
    assert matrix.guest_cpus(guests=3, jobs=2, cpus=2) == 1
    assert matrix.guest_cpus(guests=1, jobs=2, cpus=2) == 2
    assert matrix.guest_cpus(guests=2, jobs=1, cpus=8) == 8
    assert matrix.guest_cpus(guests=4, jobs=4, cpus=2) == 1


def test_the_newest_kernels_start_first():
    assert matrix.longest_first(["5.10", "6.1", "6.12"]) == ["6.12", "6.1", "5.10"]
