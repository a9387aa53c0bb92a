/* Module and BPF program loads through fentry/fexit on the syscalls' own functions
 * (collector/hooks.py "fentry_syscalls" of module and bpf), as file_io_fentry.bpf.h does for
 * files: the same bodies as the tracepoint programs of objects.bpf.h, given the same arguments
 * and return value, so the records are the same, and no syscall tracepoint makes every other
 * syscall of every process take the slow path. */
#ifndef TRACECAP_OBJECTS_FENTRY_BPF_H
#define TRACECAP_OBJECTS_FENTRY_BPF_H

TC_FENTRY(init_module, tc_module_enter(ctx, NR_INIT_MODULE))
TC_FEXIT(init_module, (tc_module_exit(NR_INIT_MODULE, ctx->ret), 0))
TC_FENTRY(finit_module, tc_module_enter(ctx, NR_FINIT_MODULE))
TC_FEXIT(finit_module, (tc_module_exit(NR_FINIT_MODULE, ctx->ret), 0))

TC_FENTRY(bpf, tc_bpf_load_enter(ctx))
TC_FEXIT(bpf, tc_bpf_load_exit(ctx))

#endif
