"""Which hook each capture kind uses on the running kernel, or why it cannot run there.

A table from capture kind to the hooks it can use, in order of preference, each with what the
kernel must offer; the chooser takes per kind the first hook whose needs the kernel's features
meet (collector/kernel_features.py probes them), or refuses the kind with the reason. Pure: the
features come in as the set of tokens the probe found, so tests pass any kernel they like.

Module takes its images from the kernel's own buffer where fentry loads on the LSM's post-read
hooks ("kernel_read_file_fentry", "kernel_read_file": the attempt from fentry on the module
syscalls or from their tracepoints), and from the syscalls' arguments otherwise.
Write, read, mem, module and bpf run on fentry/fexit on their syscalls' functions where the
kernel offers them, before the syscall tracepoints: measured in the 6.1 guest on a quiet host
(NOTES.md, "State (session 12)"), 300,000 writes and reads out of scope ran at 1.97x their
untraced time with the fentry hooks and 2.31x with the tracepoints. Any program on a syscall
tracepoint sets TIF_SYSCALL_TRACEPOINT on every task, so a kind on fentry attaches none
(write's shared mappings follow its hook), and a run on such a kernel attaches no syscall
tracepoint at all (NOTES.md "Issue 19: no syscall tracepoint left"). Module's last fallback is
the raw syscall tracepoints, on a kernel built without module support; exec and network have
one hook each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    """Something a hook needs of the kernel: what to call it in a refusal, and the oldest
    Linux that offers it (from the feature's introduction upstream, not measured; "" when it
    is a matter of configuration rather than version)."""

    what: str
    since: str = ""

    def describe(self) -> str:
        return f"{self.what} (Linux {self.since})" if self.since else self.what


#: Every need, by the token collector/kernel_features.py reports when the kernel offers it.
NEEDS: dict[str, Need] = {
    "btf": Need("kernel BTF (/sys/kernel/btf/vmlinux)", "5.4"),
    "map:ringbuf": Need("BPF ring buffers", "5.8"),
    "prog:tracepoint": Need("tracepoint programs", "4.7"),
    "prog:raw_tp": Need("raw tracepoint programs", "4.17"),
    "prog:tp_btf": Need("BTF tracepoint programs (tp_btf)", "5.5"),
    "prog:cgroup_skb": Need("cgroup_skb programs", "4.10"),
    "prog:cgroup_sock": Need("cgroup/sock_create programs", "4.10"),
    "prog:syscall": Need("syscall programs", "5.14"),
    "prog:fentry": Need("fentry/fexit programs", "5.5"),
    "fentry:syscalls": Need("fentry/fexit on the x86-64 file syscalls' functions", "5.5"),
    "fentry:mapping_syscalls": Need("fentry/fexit on __x64_sys_msync, munmap and mmap", "5.5"),
    "fentry:mem_syscalls": Need(
        "fentry/fexit on __x64_sys_mprotect, pkey_mprotect, mmap and munmap", "5.5"
    ),
    "fentry:module_syscalls": Need("fentry/fexit on __x64_sys_init_module/finit_module", "5.5"),
    "fentry:bpf_syscall": Need("fentry/fexit on __x64_sys_bpf", "5.5"),
    "fentry:kernel_read_file": Need(
        "fentry on security_kernel_post_read_file and security_kernel_post_load_data", "5.10"
    ),
    "prog:kprobe": Need("kprobes (perf kprobe PMU or tracefs kprobe_events)", "4.1"),
    "prog:lsm": Need("BPF LSM programs", "5.7"),
    "lsm:bpf": Need("the BPF LSM active (`bpf` in /sys/kernel/security/lsm)", "5.7"),
    "helper:bpf_get_current_task_btf": Need("bpf_get_current_task_btf", "5.11"),
    "helper:bpf_for_each_map_elem": Need("bpf_for_each_map_elem", "5.13"),
    "helper:bpf_find_vma": Need("bpf_find_vma", "5.17"),
    "helper:bpf_loop": Need("bpf_loop", "5.17"),
    "kfunc:bpf_task_from_pid": Need("the kfunc bpf_task_from_pid", "6.2"),
    "kfunc:bpf_task_release": Need("the kfunc bpf_task_release", "6.2"),
    "btf_tp:sock_send_length": Need("the sock_send_length tracepoint", "6.3"),
    "btf_tp:sock_recv_length": Need("the sock_recv_length tracepoint", "6.3"),
    "tracefs:syscalls": Need("syscall tracepoints (tracefs mounted, CONFIG_FTRACE_SYSCALLS)"),
    "tracefs:module_syscalls": Need("tracepoints of init_module/finit_module (CONFIG_MODULES)"),
}


@dataclass(frozen=True)
class Hook:
    """One way to capture a kind: its name (reported in ``stats.``) and what it needs."""

    name: str
    needs: tuple[str, ...]


#: What the programs loaded for every kind need (process fork and exit, cgroup mkdir and rmdir,
#: bpf/scope.bpf.h and bpf/containers.bpf.h: tp_btf, bpf_loop over the naming rules), and the
#: object itself (BTF for CO-RE, ring buffer maps, created whatever the kinds).
BASE_NEEDS = ("btf", "map:ringbuf", "prog:tp_btf", "helper:bpf_loop")
#: Syscall tracepoints, and the chunk emitter every capture of bytes runs (bpf/chunks.bpf.h).
_SYSCALL_TP = ("prog:tracepoint", "tracefs:syscalls", "helper:bpf_loop")
#: The syscalls whose bytes the write and read captures take ("both": transfers, whose two ends
#: are both files, and vmsplice, whose direction the kernel tells), by their tracepoints'
#: names: each has a pair of programs at its tracepoints (bpf/file_io.bpf.h, pipes.bpf.h) and
#: one at fentry/fexit on __x64_sys_<name> (bpf/file_io_fentry.bpf.h; the plain reads and
#: writes, collector/probes.py FEXIT_ONLY, an fexit program alone).
FILE_SYSCALLS: dict[str, tuple[str, ...]] = {
    "write": ("write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg",
              "sendmmsg"),
    "read": ("read", "pread64", "readv", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg"),
    "both": ("copy_file_range", "sendfile64", "splice", "tee", "vmsplice"),
}  # fmt: skip
#: Per token of NEEDS, the syscalls whose __x64_sys_<name> functions its fentry programs attach
#: to (bpf/file_io_fentry.bpf.h, mappings_fentry.bpf.h, mem_fentry.bpf.h, objects_fentry.bpf.h):
#: the probe loads fentry on the first and finds the others in vmlinux BTF (all five of the
#: mapping and mem tokens are in the BTF of Debian's 6.1.0-50 and 6.12.95 and this host's 6.18).
FENTRY_SYSCALLS: dict[str, tuple[str, ...]] = {
    "fentry:syscalls": tuple(sc for group in FILE_SYSCALLS.values() for sc in group),
    # write's shared mappings (bpf/mappings.bpf.h): their dirty pages at msync and munmap,
    # mmap's exit remembers them
    "fentry:mapping_syscalls": ("msync", "munmap", "mmap"),
    "fentry:mem_syscalls": ("mprotect", "pkey_mprotect", "mmap", "munmap"),
    "fentry:module_syscalls": ("init_module", "finit_module"),
    "fentry:bpf_syscall": ("bpf",),
}
#: Per token of NEEDS, the kernel functions (not syscalls) its fentry programs attach to: the
#: probe loads fentry on the first and finds the others in vmlinux BTF. The LSM's post-read
#: hooks see a module image in the kernel's buffer whichever syscall carried it
#: (bpf/module_kread.bpf.h); their (file, buf, size, id) and (buf, size, id, description) are
#: the same in the BTF of 5.10, 6.1, 6.12 and 6.18, and since 5.10 (post_load_data is new there).
FENTRY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "fentry:kernel_read_file": ("security_kernel_post_read_file", "security_kernel_post_load_data"),
}
#: fentry/fexit on every file syscall's function, io_uring_complete (tp_btf), bpf_loop as above
_FILE_FENTRY = ("prog:fentry", "fentry:syscalls", "prog:tp_btf", "helper:bpf_loop")
#: mem's programs beyond their syscall hooks: the vma by bpf_find_vma, page walks by bpf_loop,
#: the task by bpf_get_current_task_btf, regions at exit by bpf_for_each_map_elem (tp_btf)
_MEM = (
    "prog:tp_btf",
    "helper:bpf_find_vma",
    "helper:bpf_get_current_task_btf",
    "helper:bpf_for_each_map_elem",
    "helper:bpf_loop",
)
#: The module image: bpf_find_vma names its file mapping, the current task's mm (BTF) is read.
_MODULE = ("helper:bpf_find_vma", "helper:bpf_get_current_task_btf", "helper:bpf_loop")
#: Each kind's hooks, best first, as read from bpf/*.h: which programs attach where, and the
#: helpers newer than 5.8 that they call (collector/probes.py HOOK_PROGRAMS lists the programs).
HOOKS: dict[str, tuple[Hook, ...]] = {
    # fentry/fexit (see above), else syscall tracepoints; io_uring_complete (tp_btf), path
    # walks and chunks by bpf_loop
    # write's shared mappings on the same hook as its syscalls: msync, munmap, mmap's exit
    "write": (
        Hook("fentry_syscalls", (*_FILE_FENTRY, "fentry:mapping_syscalls")),
        Hook("syscall_tracepoints", (*_SYSCALL_TP, "prog:tp_btf")),
    ),
    "read": (
        Hook("fentry_syscalls", _FILE_FENTRY),
        Hook("syscall_tracepoints", (*_SYSCALL_TP, "prog:tp_btf")),
    ),
    # sched_process_exec (tp_btf); page-cache copy, script lookup and chunks by bpf_loop
    "exec": (Hook("tp_btf_sched_process_exec", ("prog:tp_btf", "helper:bpf_loop")),),
    # fentry/fexit on the mprotect/pkey_mprotect/mmap/munmap functions, else their tracepoints
    "mem": (
        Hook("fentry_syscalls", ("prog:fentry", "fentry:mem_syscalls", *_MEM)),
        Hook("syscall_tracepoints", (*_SYSCALL_TP, *_MEM)),
    ),
    "module": (
        # the image from the kernel's buffer (fentry on the LSM's post-read hooks), the attempt
        # and its return value from fentry/fexit on the module syscalls' functions
        Hook(
            "kernel_read_file_fentry",
            ("prog:fentry", "fentry:kernel_read_file", "fentry:module_syscalls", *_MODULE),
        ),
        # the same, the attempt from the syscall tracepoints
        Hook(
            "kernel_read_file",
            (
                "prog:fentry",
                "fentry:kernel_read_file",
                *_SYSCALL_TP,
                "tracefs:module_syscalls",
                *_MODULE,
            ),
        ),
        # fentry/fexit on the module syscalls' functions (see above)
        Hook("fentry_syscalls", ("prog:fentry", "fentry:module_syscalls", *_MODULE)),
        Hook("syscall_tracepoints", (*_SYSCALL_TP, "tracefs:module_syscalls", *_MODULE)),
        # a kernel without module support: the raw syscall tracepoints see the attempt
        Hook("raw_syscalls", ("prog:raw_tp", *_MODULE)),
    ),
    "bpf": (
        Hook("fentry_syscalls", ("prog:fentry", "fentry:bpf_syscall", "helper:bpf_loop")),
        Hook("syscall_tracepoints", _SYSCALL_TP),
    ),
    # cgroup_skb and cgroup/sock_create on the cgroup2 root, the sockets' owners at
    # sock_send_length/sock_recv_length (tp_btf), owners of older sockets by a syscall program
    "network": (
        Hook(
            "cgroup_skb",
            (
                "prog:cgroup_skb",
                "prog:cgroup_sock",
                "prog:tp_btf",
                "btf_tp:sock_send_length",
                "btf_tp:sock_recv_length",
                "prog:syscall",
                "kfunc:bpf_task_from_pid",
                "kfunc:bpf_task_release",
            ),
        ),
    ),
}


@dataclass(frozen=True)
class Choice:
    """What one kind gets on this kernel: a hook, or none and the reason."""

    kind: str
    hook: str | None
    reason: str = ""

    def report(self) -> dict[str, str]:
        """The kind's entry in ``stats.`` ``hooks``."""
        return {"hook": self.hook} if self.hook else {"refused": self.reason}


def _lacking(missing: list[str]) -> str:
    needs = ", ".join(NEEDS[token].describe() for token in missing)
    return f"needs {needs}; this kernel lacks {'it' if len(missing) == 1 else 'them'}"


def choose_kind(kind: str, offered: frozenset[str]) -> Choice:
    """The first hook of ``kind`` whose needs (and the base's) ``offered`` meets; else a
    refusal naming what the nearest hook (fewest needs unmet; the later on a tie: the
    fallback) lacks."""
    best: list[str] | None = None
    for hook in HOOKS[kind]:
        missing = [t for t in dict.fromkeys((*BASE_NEEDS, *hook.needs)) if t not in offered]
        if not missing:
            return Choice(kind, hook.name)
        if best is None or len(missing) <= len(best):
            best = missing
    assert best is not None
    return Choice(kind, None, f"{kind}: {_lacking(best)}")


def choose(kinds: Iterable[str], offered: frozenset[str]) -> dict[str, Choice]:
    """Per requested kind, its hook or its refusal."""
    return {kind: choose_kind(kind, offered) for kind in kinds}


def oldest_kernel(kind: str) -> str:
    """The oldest Linux whose features meet one of the kind's hooks, as implied by the needs'
    introduction versions (not measured): for the README's table."""

    def version(token: str) -> tuple[int, ...]:
        since = NEEDS[token].since
        return tuple(int(p) for p in since.split(".")) if since else (0,)

    per_hook = [max(version(t) for t in (*BASE_NEEDS, *hook.needs)) for hook in HOOKS[kind]]
    return ".".join(str(p) for p in min(per_hook))
