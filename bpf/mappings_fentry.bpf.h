/* The write capture's shared-mapping programs (mappings.bpf.h) at fentry/fexit on the
 * syscalls' own functions, loaded with write's "fentry_syscalls" hook (collector/probes.py):
 * the same bodies as the tracepoint programs, given the same arguments and return value
 * (file_io_fentry.bpf.h), so that a write capture on fentry attaches no syscall tracepoint.
 * With the tracepoint programs attached, every syscall of every task takes the slow path
 * (TIF_SYSCALL_TRACEPOINT): measured on 6.1 under TCG, 2.07x against 1.11x without them on a
 * loop of syscalls no kind hooks (NOTES.md "Issue 19: what fentry saves"). */
#ifndef TRACECAP_MAPPINGS_FENTRY_BPF_H
#define TRACECAP_MAPPINGS_FENTRY_BPF_H

/* munmap: its dirty pages, then its remembered mappings forgotten (tc_map_msync_munmap). */
static __always_inline int tc_map_fenter_unmap(__u64 addr, __u64 len)
{
    tc_map_range(addr, len, TC_SYS_MUNMAP);
    tc_map_forget(addr, len);
    return 0;
}

TC_FENTRY_ARGS(tc_map_fenter_msync, msync,
               tc_map_range(tc_sysarg(regs, 0), tc_sysarg(regs, 1), TC_SYS_MSYNC))
TC_FENTRY_ARGS(tc_map_fenter_munmap, munmap, tc_map_fenter_unmap(tc_sysarg(regs, 0),
                                                                   tc_sysarg(regs, 1)))
TC_FEXIT_RET(tc_map_fexit_mmap, mmap, tc_map_mapped(ret))

#endif
