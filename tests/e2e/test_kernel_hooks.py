"""The feature probe and the hook chosen per kind, through the real pipeline on this kernel:
`tracecap status` (the collector's ``stats.``) says which hook each kind runs on; a kind the
kernel cannot run is refused before anything attaches, with its reason, and the others run.

This machine's 6.18 lacks no feature a kind needs, so the refusal is shown by withholding one
(``TRACECAP_WITHHOLD_FEATURES`` in the collector's environment, which `tracecap run` passes on
through supervisord); the decision itself on other kernels is tested in
tests/unit/collector/test_hooks.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.pipeline import Run, artifact_name
from tests.support.workloads import sh

pytestmark = pytest.mark.ebpf

WITHHOLD = "TRACECAP_WITHHOLD_FEATURES"


def _status(run: Run) -> dict:
    done = subprocess.run(
        ["tracecap", "status", "--run-dir", str(run.run_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["collector"]


def _write_captured(run: Run, workdir: Path) -> None:
    target = workdir / "hooks.txt"
    sh(f"echo hooks in use > {target}")
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.artifact(artifact_name("write", target)) == b"hooks in use\n"


def test_status_says_which_hook_each_kind_runs_on(tracecap, workdir: Path) -> None:
    kinds = ("read", "exec", "mem", "module", "bpf", "network")
    run = tracecap(*[a for k in kinds for a in ("--capture", k)], "--capture", f"write={workdir}/*")
    stats = _status(run)
    assert stats["hooks"] == {
        "write": {"hook": "syscall_tracepoints"},
        "read": {"hook": "syscall_tracepoints"},
        "exec": {"hook": "tp_btf_sched_process_exec"},
        "mem": {"hook": "syscall_tracepoints"},
        # no CONFIG_MODULES here: no module syscall tracepoints, the raw ones instead
        "module": {"hook": "raw_syscalls"},
        "bpf": {"hook": "syscall_tracepoints"},
        "network": {"hook": "cgroup_skb"},
    }
    # what this kernel is known to offer and to lack (the brief of this machine)
    features = set(stats["kernel_features"])
    assert {"btf", "map:ringbuf", "prog:tp_btf", "prog:raw_tp", "helper:bpf_loop",
            "helper:bpf_find_vma", "prog:cgroup_skb"} <= features  # fmt: skip
    assert not {"prog:fentry", "prog:kprobe", "prog:lsm", "tracefs:module_syscalls"} & features
    assert "tc_module_raw_enter" in stats["programs"]
    assert "tc_init_module_enter" not in stats["programs"]
    assert "not capturing" not in run.stderr
    _write_captured(run, workdir)


def test_a_kind_the_kernel_lacks_a_helper_for_is_refused_and_the_others_run(
    tracecap, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WITHHOLD, "helper:bpf_find_vma")
    run = tracecap("--capture", "mem", "--capture", "exec", "--capture", f"write={workdir}/*")
    reason = "mem: needs bpf_find_vma (Linux 5.17); this kernel lacks it"
    stats = _status(run)
    assert stats["hooks"] == {
        "write": {"hook": "syscall_tracepoints"},
        "exec": {"hook": "tp_btf_sched_process_exec"},
        "mem": {"refused": reason},
    }
    assert "helper:bpf_find_vma" not in stats["kernel_features"]
    # the refused kind's programs were never loaded; the others' were
    assert not {"tc_mprotect_enter", "tc_mmap_enter", "tc_mem_exit"} & set(stats["programs"])
    assert {"tc_enter_write", "tc_exec"} <= set(stats["programs"])
    _write_captured(run, workdir)
    # said before anything attached (the collector's log, relayed in order; the front end's
    # own "ready" may come before the relay copies it)
    said = run.stderr.index(f"tracecap collector: not capturing {reason}")
    assert said < run.stderr.index("tracecap collector: attached")


def test_no_kind_that_can_run_is_a_clear_error(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to load eBPF programs")
    env = dict(os.environ, **{WITHHOLD: "helper:bpf_loop"})
    run_dir = Path(tempfile.mkdtemp(prefix="tcr-", dir="/run"))
    done = subprocess.run(
        ["tracecap", "run", "--run-dir", str(run_dir), "--capture", f"dir:{workdir}/cap",
         "--capture", "exec", "--capture", "bpf"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        "no capture kind asked for can run on this kernel: exec: needs bpf_loop (Linux 5.17); "
        "this kernel lacks it; bpf: needs bpf_loop (Linux 5.17); this kernel lacks it"
    ) in done.stderr
    assert "tracecap: ready" not in done.stderr
    shutil.rmtree(run_dir, ignore_errors=True)
