/* The write and read captures through fentry/fexit on the syscalls' own functions
 * (collector/hooks.py "fentry_syscalls"), where the kernel offers tracing programs.
 *
 * A syscall tracepoint, once any program is attached to one, sends every syscall of every task
 * down the slow path (TIF_SYSCALL_TRACEPOINT): processes out of scope pay on each syscall. A
 * trampoline on __x64_sys_write costs only the writes. Each program here is the twin of a
 * tracepoint program of file_io.bpf.h or pipes.bpf.h: the same body, given the arguments the
 * tracepoint would give (the user registers the x86-64 syscall function receives) and, at
 * exit, its return value, so the records are the same. The two sets are never loaded together
 * (they share io_pending and xfer_pending). */
#ifndef TRACECAP_FILE_IO_FENTRY_BPF_H
#define TRACECAP_FILE_IO_FENTRY_BPF_H

/* The syscall's arguments as sys_enter gives them (x86-64 syscall convention). */
static __always_inline void tc_regs_args(const struct pt_regs *regs,
                                         struct trace_event_raw_sys_enter *e)
{
    e->args[0] = regs->di;
    e->args[1] = regs->si;
    e->args[2] = regs->dx;
    e->args[3] = regs->r10;
    e->args[4] = regs->r8;
    e->args[5] = regs->r9;
}

/* `body` sees `ctx` as the tracepoint program does (a tracepoint-shaped copy on the stack). */
#define TC_FENTRY(name, body)                                                          \
    SEC("fentry/__x64_sys_" #name)                                                     \
    int BPF_PROG(tc_fenter_##name, const struct pt_regs *regs)                         \
    {                                                                                  \
        struct trace_event_raw_sys_enter tc_e = {};                                    \
        tc_regs_args(regs, &tc_e);                                                     \
        {                                                                              \
            struct trace_event_raw_sys_enter *ctx = &tc_e;                             \
            return body;                                                               \
        }                                                                              \
    }

/* `body` sees `ctx` as the sys_exit program does: the return value in ctx->ret. */
#define TC_FEXIT(name, body)                                                           \
    SEC("fexit/__x64_sys_" #name)                                                      \
    int BPF_PROG(tc_fexit_##name, const struct pt_regs *regs, long ret)                \
    {                                                                                  \
        struct trace_event_raw_sys_exit tc_x = { .ret = ret };                         \
        {                                                                              \
            struct trace_event_raw_sys_exit *ctx = &tc_x;                              \
            return body;                                                               \
        }                                                                              \
    }

#define TC_IO_FENTRY(name, sc, dir, is_vec, posarg)                                    \
    TC_FENTRY(name, tc_io_enter(ctx, sc, dir, is_vec, posarg))                         \
    TC_FEXIT(name, tc_io_exit(ctx))

TC_IO_FENTRY(write, TC_SYS_WRITE, TC_DIR_WRITE, 0, -1)
TC_IO_FENTRY(pwrite64, TC_SYS_PWRITE64, TC_DIR_WRITE, 0, (__s64)ctx->args[3])
TC_IO_FENTRY(writev, TC_SYS_WRITEV, TC_DIR_WRITE, 1, -1)
TC_IO_FENTRY(pwritev, TC_SYS_PWRITEV, TC_DIR_WRITE, 1, (__s64)ctx->args[3])
TC_IO_FENTRY(pwritev2, TC_SYS_PWRITEV2, TC_DIR_WRITE, 1, (__s64)ctx->args[3])
TC_IO_FENTRY(read, TC_SYS_READ, TC_DIR_READ, 0, -1)
TC_IO_FENTRY(pread64, TC_SYS_PREAD64, TC_DIR_READ, 0, (__s64)ctx->args[3])
TC_IO_FENTRY(readv, TC_SYS_READV, TC_DIR_READ, 1, -1)
TC_IO_FENTRY(preadv, TC_SYS_PREADV, TC_DIR_READ, 1, (__s64)ctx->args[3])
TC_IO_FENTRY(preadv2, TC_SYS_PREADV2, TC_DIR_READ, 1, (__s64)ctx->args[3])
TC_IO_FENTRY(sendto, TC_SYS_SENDTO, TC_DIR_WRITE, 0, -1)

TC_FENTRY(recvfrom, tc_peeks(TC_DIR_READ, ctx->args[3])
                        ? 0 : tc_io_enter(ctx, TC_SYS_RECVFROM, TC_DIR_READ, 0, -1))
TC_FEXIT(recvfrom, tc_io_exit(ctx))

TC_FENTRY(sendmsg, tc_msg_enter(ctx, TC_SYS_SENDMSG, TC_DIR_WRITE))
TC_FEXIT(sendmsg, tc_io_exit(ctx))
TC_FENTRY(recvmsg, tc_msg_enter(ctx, TC_SYS_RECVMSG, TC_DIR_READ))
TC_FEXIT(recvmsg, tc_io_exit(ctx))

TC_FENTRY(sendmmsg, tc_peeks(TC_DIR_WRITE, ctx->args[3])
                        ? 0 : tc_io_enter(ctx, TC_SYS_SENDMMSG, TC_DIR_WRITE, 1, -1))
TC_FEXIT(sendmmsg, tc_mmsg_exit(ctx))
TC_FENTRY(recvmmsg, tc_peeks(TC_DIR_READ, ctx->args[3])
                        ? 0 : tc_io_enter(ctx, TC_SYS_RECVMMSG, TC_DIR_READ, 1, -1))
TC_FEXIT(recvmmsg, tc_mmsg_exit(ctx))

TC_FENTRY(vmsplice, tc_vmsplice_enter(ctx))
TC_FEXIT(vmsplice, tc_io_exit(ctx))

/* the argument orders as at the tracepoints of file_io.bpf.h and pipes.bpf.h */
TC_FENTRY(copy_file_range, tc_xfer_enter(TC_SYS_COPY_FILE_RANGE, ctx->args[0], ctx->args[1],
                                         ctx->args[2], ctx->args[3]))
TC_FEXIT(copy_file_range, tc_xfer_exit(ctx))
TC_FENTRY(sendfile64, tc_xfer_enter(TC_SYS_SENDFILE, ctx->args[1], ctx->args[2], ctx->args[0], 0))
TC_FEXIT(sendfile64, tc_xfer_exit(ctx))
TC_FENTRY(splice, tc_xfer_enter(TC_SYS_SPLICE, ctx->args[0], ctx->args[1], ctx->args[2],
                                ctx->args[3]))
TC_FEXIT(splice, tc_xfer_exit(ctx))
TC_FENTRY(tee, tc_xfer_enter(TC_SYS_TEE, ctx->args[0], 0, ctx->args[1], 0))
TC_FEXIT(tee, tc_xfer_exit(ctx))

#endif
