/* The mem capture's syscall programs (mem.bpf.h) at fentry/fexit on the syscalls' own
 * functions (collector/hooks.py "fentry_syscalls" of mem), as file_io_fentry.bpf.h does for
 * files: the same bodies, given the same arguments and return value, so the records are the
 * same and no syscall tracepoint sends every syscall of every task down the slow path. The
 * twins of tc_mprotect_enter, tc_pkey_mprotect_enter, tc_mmap_enter, tc_mmap_exit and
 * tc_munmap_enter; the kind's exit program is on sched_process_exit (tp_btf) either way. */
#ifndef TRACECAP_MEM_FENTRY_BPF_H
#define TRACECAP_MEM_FENTRY_BPF_H

#define TC_MEM_FENTRY_PROT(name, syscall)                                              \
    TC_FENTRY_ARGS(tc_fenter_##name, name,                                             \
                   tc_mem_mprotect(tc_sysarg(regs, 0), tc_sysarg(regs, 1),             \
                                   tc_sysarg(regs, 2), syscall))

TC_MEM_FENTRY_PROT(mprotect, TC_MEM_MPROTECT)
TC_MEM_FENTRY_PROT(pkey_mprotect, TC_MEM_PKEY_MPROTECT)
TC_FENTRY_ARGS(tc_fenter_mmap, mmap,
               tc_mem_mmap(tc_sysarg(regs, 0), tc_sysarg(regs, 1), tc_sysarg(regs, 2)))
TC_FEXIT_RET(tc_fexit_mmap, mmap, tc_mem_mmap_done(ret))
TC_FENTRY_ARGS(tc_fenter_munmap, munmap, tc_mem_munmap(tc_sysarg(regs, 0)))

#endif
