"""The choice of hook per capture kind (collector/hooks.py), on kernels described by what a
feature probe would find on them (collector/kernel_features.py tokens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector import hooks, probes
from collector.kernel_features import WITHHOLD_ENV, KernelFeatures, withheld
from collector.probes import ProbeError, choose_hooks
from tests.support.bpf_object import built_object, program_sections
from tracecap import options

ALL_KINDS = tuple(hooks.HOOKS)
#: What collector/kernel_features.py found on this machine's 6.18 (kprobes, fentry and the BPF
#: LSM do not work here, and there are no module syscalls: CONFIG_MODULES is unset).
HOST_6_18 = frozenset(hooks.NEEDS) - {
    "prog:fentry", "fentry:syscalls", "fentry:mapping_syscalls", "fentry:mem_syscalls",
    "fentry:module_syscalls", "fentry:bpf_syscall",
    "fentry:kernel_read_file", "prog:kprobe", "prog:lsm", "lsm:bpf", "tracefs:module_syscalls",
}  # fmt: skip
#: Debian 12's 6.1: modules, kprobes, fentry and the BPF LSM, but not what came in 6.2 and 6.3.
DEBIAN_6_1 = frozenset(hooks.NEEDS) - {
    "kfunc:bpf_task_from_pid", "kfunc:bpf_task_release",
    "btf_tp:sock_send_length", "btf_tp:sock_recv_length",
}  # fmt: skip
#: Debian 11's 5.10: everything the needs date before 5.11.
DEBIAN_5_10 = frozenset(
    token
    for token, need in hooks.NEEDS.items()
    if not need.since or tuple(map(int, need.since.split("."))) <= (5, 10)
)


def _config(*kinds: str) -> options.Config:
    return options.parse_args([arg for kind in kinds for arg in ("--capture", kind)])


def test_this_host_runs_every_kind_module_through_the_raw_syscall_tracepoints():
    choices = hooks.choose(ALL_KINDS, HOST_6_18)
    assert {kind: c.hook for kind, c in choices.items()} == {
        "write": "syscall_tracepoints",
        "read": "syscall_tracepoints",
        "exec": "tp_btf_sched_process_exec",
        "mem": "syscall_tracepoints",
        "module": "raw_syscalls",
        "bpf": "syscall_tracepoints",
        "network": "cgroup_skb",
    }


def test_a_kernel_with_fentry_and_modules_takes_the_image_from_the_kernels_buffer():
    """The attempt from fentry on the module syscalls, else from their tracepoints."""
    assert hooks.choose_kind("module", DEBIAN_6_1).report() == {"hook": "kernel_read_file_fentry"}
    kernel = DEBIAN_6_1 - {"fentry:module_syscalls"}
    assert hooks.choose_kind("module", kernel).hook == "kernel_read_file"


@pytest.mark.parametrize(
    ("lacking", "hook"),
    [("prog:fentry", "syscall_tracepoints"), ("fentry:kernel_read_file", "fentry_syscalls")],
)
def test_without_fentry_on_the_post_read_hooks_module_uses_the_syscalls_hooks(lacking, hook):
    assert hooks.choose_kind("module", DEBIAN_6_1 - {lacking}).hook == hook


def test_the_kernel_read_file_rows_need_the_module_syscalls_exits_for_the_attempt():
    """Its ret comes from the syscall's exit: without fentry on the syscalls' functions and
    their tracepoints (no CONFIG_MODULES, or withheld) the kind falls back to the raw
    tracepoints."""
    kernel = DEBIAN_6_1 - {"fentry:module_syscalls"}
    assert hooks.choose_kind("module", kernel).hook == "kernel_read_file"
    kernel -= {"tracefs:module_syscalls"}
    assert hooks.choose_kind("module", kernel).hook == "raw_syscalls"
    assert (
        hooks.choose_kind("module", HOST_6_18 | {"prog:fentry", "fentry:kernel_read_file"}).hook
        == "raw_syscalls"
    )


def test_the_fentry_functions_token_names_the_functions_of_its_programs():
    """The probe checks the functions bpf/module_kread.bpf.h's programs attach to."""
    source = (Path(__file__).parents[3] / "bpf" / "module_kread.bpf.h").read_text()
    attached = re.findall(r'SEC\("fentry/(\w+)"\)\s*int BPF_PROG\((\w+)', source)
    assert {fn for fn, _ in attached} == set(hooks.FENTRY_FUNCTIONS["fentry:kernel_read_file"])
    programs = {prog for _, prog in attached}
    assert programs <= probes.HOOK_PROGRAMS["module", "kernel_read_file"]
    assert probes.HOOK_PROGRAMS["module", "kernel_read_file"] - programs == probes._MODULE_TP
    fentry = probes.HOOK_PROGRAMS["module", "kernel_read_file_fentry"]
    assert fentry - programs == probes.HOOK_PROGRAMS["module", "fentry_syscalls"]


@pytest.mark.parametrize(
    ("kind", "token"), [("module", "fentry:module_syscalls"), ("bpf", "fentry:bpf_syscall")]
)
def test_module_and_bpf_take_fentry_only_where_their_functions_are(kind, token):
    no_tp = DEBIAN_6_1 - {"tracefs:syscalls", "fentry:kernel_read_file"}
    assert hooks.choose_kind(kind, no_tp).hook == "fentry_syscalls"
    assert hooks.choose_kind(kind, no_tp - {token}).hook != "fentry_syscalls"
    assert hooks.choose_kind(kind, HOST_6_18).hook != "fentry_syscalls"


@pytest.fixture(scope="module")
def sections() -> dict[str, str]:
    """Each program of the built object and its section (where libbpf attaches it)."""
    return program_sections(built_object())


def _traced(programs: frozenset[str], sections: dict[str, str]) -> tuple[set[str], set[str]]:
    """The x86-64 syscalls (``__x64_sys_<name>``) and the other kernel functions that the
    fentry/fexit programs among ``programs`` attach to."""
    fns = {sections[p].split("/", 1)[1] for p in programs if sections[p].startswith("f")}
    syscalls = {fn.removeprefix("__x64_sys_") for fn in fns if fn.startswith("__x64_sys_")}
    return syscalls, {fn for fn in fns if not fn.startswith("__x64_sys_")}


def test_each_fentry_token_names_the_functions_of_its_programs(sections):
    """The probe checks exactly the functions the programs attach to (read from the object's
    sections): each hook's fentry programs attach only to functions of its tokens
    (FENTRY_SYSCALLS, FENTRY_FUNCTIONS), and each token's functions are all attached by the
    hooks that need it (write and read share the file syscalls' token)."""
    tables = {**hooks.FENTRY_SYSCALLS, **hooks.FENTRY_FUNCTIONS}
    covered: dict[str, set[str]] = {token: set() for token in tables}
    for kind, kind_hooks in hooks.HOOKS.items():
        for hook in kind_hooks:
            syscalls, functions = _traced(probes.HOOK_PROGRAMS[kind, hook.name], sections)
            tokens = [t for t in hook.needs if t in tables]
            assert bool(syscalls or functions) == ("prog:fentry" in hook.needs), hook
            for token in tokens:
                found = syscalls if token in hooks.FENTRY_SYSCALLS else functions
                covered[token] |= found & set(tables[token])
            assert syscalls <= {sc for t in tokens for sc in hooks.FENTRY_SYSCALLS.get(t, ())}
            assert functions <= {fn for t in tokens for fn in hooks.FENTRY_FUNCTIONS.get(t, ())}
    assert covered == {token: set(names) for token, names in tables.items()}


@pytest.mark.parametrize("kind", ["write", "read", "module", "bpf"])
def test_fentry_comes_first_and_the_syscall_tracepoints_where_it_is_missing_or_withheld(kind):
    """Measured in the 6.1 guest, fentry costs processes out of scope less (collector/hooks.py);
    module's image from the kernel's buffer comes before either (withheld here)."""
    kernel = DEBIAN_6_1 - {"fentry:kernel_read_file"}
    assert hooks.choose_kind(kind, kernel).report() == {"hook": "fentry_syscalls"}
    assert hooks.choose_kind(kind, kernel - {"tracefs:syscalls"}).hook == "fentry_syscalls"
    assert hooks.choose_kind(kind, kernel - {"prog:fentry"}).hook == "syscall_tracepoints"


def test_write_on_fentry_needs_fentry_on_its_shared_mappings_syscalls_too():
    """Its msync, munmap and mmap programs go on the same hook as its syscalls."""
    kernel = DEBIAN_6_1 - {"fentry:mapping_syscalls"}
    assert hooks.choose_kind("write", kernel).hook == "syscall_tracepoints"
    assert hooks.choose_kind("read", kernel).hook == "fentry_syscalls"


def test_mem_takes_fentry_first_and_its_syscall_tracepoints_where_fentry_is_missing():
    assert hooks.choose_kind("mem", DEBIAN_6_1).report() == {"hook": "fentry_syscalls"}
    kernel = DEBIAN_6_1 - {"fentry:mem_syscalls"}
    assert hooks.choose_kind("mem", kernel).hook == "syscall_tracepoints"
    assert hooks.choose_kind("mem", kernel - {"tracefs:syscalls"}).hook is None
    assert hooks.choose_kind("mem", HOST_6_18).hook == "syscall_tracepoints"


#: Sections whose programs libbpf attaches to a syscall tracepoint (any program on one sets
#: TIF_SYSCALL_TRACEPOINT on every task: every syscall of every process takes the slow path).
SYSCALL_TP_SECTIONS = ("tp/syscalls/", "raw_tp/sys_enter", "raw_tp/sys_exit")


def syscall_tracepoints(choices: dict[str, hooks.Choice], sections: dict[str, str]) -> set[str]:
    """The syscall tracepoints KernelProbes.attach would put programs on for ``choices``: each
    loaded program's by its section, the shared ones (section "tp") at
    probes.shared_tracepoints'."""
    loaded = probes.programs_for(choices)
    shared = probes.shared_tracepoints(choices)
    assert {p for p in loaded if sections[p] == "tp"} <= shared.keys()
    by_section = {
        sections[p].split("/", 1)[1] for p in loaded if sections[p].startswith(SYSCALL_TP_SECTIONS)
    }
    return by_section | {f"syscalls/{tp}" for tps in shared.values() for tp in tps}


@pytest.mark.parametrize("kernel", [DEBIAN_6_1, frozenset(hooks.NEEDS)], ids=["6.1", "all"])
def test_a_kernel_with_fentry_gets_no_syscall_tracepoint_at_all(kernel, sections):
    """Every kind on a kernel offering fentry: write's shared mappings, mem's programs,
    module's attempt and the files' exits included."""
    choices = hooks.choose(ALL_KINDS, kernel)
    assert {c.hook for c in choices.values()} >= {"fentry_syscalls", "kernel_read_file_fentry"}
    assert syscall_tracepoints(choices, sections) == set()


def test_mem_on_its_tracepoints_attaches_only_its_own(sections):
    kernel = DEBIAN_6_1 - {"fentry:mem_syscalls"}
    assert syscall_tracepoints(hooks.choose(ALL_KINDS, kernel), sections) == {
        "syscalls/sys_enter_mprotect", "syscalls/sys_enter_pkey_mprotect",
        "syscalls/sys_enter_mmap", "syscalls/sys_exit_mmap", "syscalls/sys_enter_munmap",
    }  # fmt: skip


def test_without_fentry_every_capture_sets_the_flag(sections):
    """This host: the tracepoints of the files' syscalls and exits, the shared mappings', mem's
    and the raw ones of module (no module support)."""
    found = syscall_tracepoints(hooks.choose(ALL_KINDS, HOST_6_18), sections)
    assert {"syscalls/sys_enter_write", "syscalls/sys_exit_write", "syscalls/sys_enter_msync",
            "syscalls/sys_enter_mprotect", "sys_enter", "sys_exit"} <= found  # fmt: skip


@pytest.mark.parametrize("lacking", ["prog:fentry", "fentry:syscalls"])
def test_without_fentry_or_the_syscall_functions_files_have_no_second_hook(lacking):
    """This host (no fentry), another architecture (no __x64_sys_*), or withheld for a test."""
    kernel = DEBIAN_6_1 - {lacking, "tracefs:syscalls"}
    choices = hooks.choose(("write", "read"), kernel)
    assert {c.hook for c in choices.values()} == {None}


def test_files_without_either_hook_name_what_the_fallback_lacks():
    kernel = HOST_6_18 - {"tracefs:syscalls"}
    assert hooks.choose_kind("write", kernel).reason == (
        "write: needs syscall tracepoints (tracefs mounted, CONFIG_FTRACE_SYSCALLS); "
        "this kernel lacks it"
    )


def test_6_1_refuses_network_for_the_kfunc_and_tracepoints_it_lacks_and_runs_the_rest():
    choices = choose_hooks(_config(*ALL_KINDS), DEBIAN_6_1)
    refused = {kind: c.reason for kind, c in choices.items() if not c.hook}
    assert refused == {
        "network": "network: needs the sock_send_length tracepoint (Linux 6.3), the "
        "sock_recv_length tracepoint (Linux 6.3), the kfunc bpf_task_from_pid (Linux 6.2), the "
        "kfunc bpf_task_release (Linux 6.2); this kernel lacks them"
    }


def test_5_10_refuses_every_kind_for_bpf_loop_and_the_run_fails_with_the_reasons():
    choices = hooks.choose(ALL_KINDS, DEBIAN_5_10)
    assert all(c.hook is None for c in choices.values())
    assert choices["bpf"].reason == "bpf: needs bpf_loop (Linux 5.17); this kernel lacks it"
    assert choices["mem"].reason.startswith("mem: needs bpf_loop (Linux 5.17), bpf_find_vma")
    with pytest.raises(ProbeError, match=r"no capture kind asked for can run.*exec: needs"):
        choose_hooks(_config("exec", "write"), DEBIAN_5_10)


def test_a_missing_helper_refuses_only_the_kinds_that_call_it():
    kernel = HOST_6_18 - {"helper:bpf_find_vma"}
    choices = choose_hooks(_config("write", "mem", "module", "exec"), kernel)
    assert choices["mem"].reason == "mem: needs bpf_find_vma (Linux 5.17); this kernel lacks it"
    assert choices["module"].report() == {
        "refused": "module: needs bpf_find_vma (Linux 5.17); this kernel lacks it"
    }
    assert choices["write"].report() == {"hook": "syscall_tracepoints"}
    assert choices["exec"].hook == "tp_btf_sched_process_exec"


def test_without_btf_nothing_runs():
    choices = hooks.choose(ALL_KINDS, HOST_6_18 - {"btf"})
    assert {c.reason.split(": ", 1)[1] for c in choices.values()} == {
        "needs kernel BTF (/sys/kernel/btf/vmlinux) (Linux 5.4); this kernel lacks it"
    }


def test_a_kind_without_any_hook_names_what_its_nearest_hook_lacks():
    """Module's fallback needs only raw tracepoints beyond the base: that is what is named."""
    kernel = HOST_6_18 - {"prog:raw_tp"}
    assert hooks.choose_kind("module", kernel).reason == (
        "module: needs raw tracepoint programs (Linux 4.17); this kernel lacks it"
    )


def test_no_kinds_asked_no_refusal():
    assert choose_hooks(_config(), frozenset()) == {}


def test_every_need_is_probed_and_every_hook_need_is_declared():
    features = KernelFeatures.__new__(KernelFeatures)  # the table only: no libbpf call
    features._lib = None
    features._btf = None
    assert set(features._probes()) == set(hooks.NEEDS)
    used = {t for hs in hooks.HOOKS.values() for h in hs for t in h.needs} | set(hooks.BASE_NEEDS)
    assert used <= set(hooks.NEEDS)


def test_withheld_features_come_only_from_the_collectors_environment():
    assert withheld({}) == frozenset()
    assert withheld({WITHHOLD_ENV: "helper:bpf_find_vma,,prog:tp_btf"}) == {
        "helper:bpf_find_vma",
        "prog:tp_btf",
    }


def test_the_readme_states_the_oldest_kernel_each_kind_implies():
    """The README's table is derived from the needs' versions; it must say what they say."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| (\d+\.\d+) \|", readme, re.MULTILINE))
    assert rows == {kind: hooks.oldest_kernel(kind) for kind in ALL_KINDS}
