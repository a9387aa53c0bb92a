/* The write and read captures through fentry/fexit on the syscalls' own functions
 * (collector/hooks.py "fentry_syscalls"), where the kernel offers tracing programs.
 *
 * A syscall tracepoint, once any program is attached to one, sends every syscall of every task
 * down the slow path (TIF_SYSCALL_TRACEPOINT): processes out of scope pay on each syscall. A
 * trampoline on __x64_sys_write costs only the writes. Each program here is the twin of a
 * tracepoint program of file_io.bpf.h or pipes.bpf.h: the same body, given the arguments the
 * tracepoint would give (the user registers the x86-64 syscall function receives) and, at
 * exit, its return value, so the records are the same. The two sets are never loaded together
 * (they share io_pending and xfer_pending).
 *
 * The plain reads and writes (read, write, their p*, *v, p*v and p*v2 forms, sendto and
 * recvfrom) have an fexit program only, tc_fexit_<name> (TC_IO_FEXIT): their enter program
 * would only check the scope (and recvfrom's MSG_PEEK) and save the arguments, and at fexit
 * the arguments are still in the user registers and the position is f_pos less the bytes
 * moved (tc_io_transfer), as at sys_exit. So a syscall out of scope, or one that moved
 * nothing, runs one trampoline and one program instead of two of each, and no io_pending
 * update and lookup; the scope is evaluated once, at exit. Measured on Debian 12's 6.1 under
 * TCG (scripts/bench_kernels.py 6.1, fentry session: 300,000 out-of-scope 64-byte writes to
 * /dev/null and reads of /dev/zero, over the untraced median), three runs alternating with
 * the two-program version: 1.41x, 2.04x, 1.25x against 1.80x, 2.20x, 1.90x (the session's
 * median round 2.58, 2.80, 1.49 s against 3.45, 3.44, 3.16 s): lower in each pair, but the
 * spread between runs of the same code under TCG (1.25x-2.04x) is wider than the gain, and
 * the 1.10x is not reached there.
 *
 * The others keep their enter program: the transfers record the offsets the call starts from
 * before the kernel advances them; sendmsg/recvmsg read the user msghdr, sendmmsg/recvmmsg
 * check MSG_PEEK and vmsplice finds its direction from the file there, which fexit could do as
 * well (untried: not in the measured loop). */
#ifndef TRACECAP_FILE_IO_FENTRY_BPF_H
#define TRACECAP_FILE_IO_FENTRY_BPF_H

/* The syscall's argument `n` (a constant 0-5) as sys_enter gives it in args[n] (x86-64
 * syscall convention). */
static __always_inline __u64 tc_sysarg(const struct pt_regs *regs, int n)
{
    switch (n) {
    case 0: return regs->di;
    case 1: return regs->si;
    case 2: return regs->dx;
    case 3: return regs->r10;
    case 4: return regs->r8;
    default: return regs->r9;
    }
}

/* The syscall's arguments as sys_enter gives them. */
static __always_inline void tc_regs_args(const struct pt_regs *regs,
                                         struct trace_event_raw_sys_enter *e)
{
    e->args[0] = tc_sysarg(regs, 0);
    e->args[1] = tc_sysarg(regs, 1);
    e->args[2] = tc_sysarg(regs, 2);
    e->args[3] = tc_sysarg(regs, 3);
    e->args[4] = tc_sysarg(regs, 4);
    e->args[5] = tc_sysarg(regs, 5);
}

/* Program `prog` at fentry on __x64_sys_`name`: `body` sees `ctx` as the tracepoint program
 * does (a tracepoint-shaped copy on the stack). */
#define TC_FENTRY_AS(prog, name, body)                                                 \
    SEC("fentry/__x64_sys_" #name)                                                     \
    int BPF_PROG(prog, const struct pt_regs *regs)                                     \
    {                                                                                  \
        struct trace_event_raw_sys_enter tc_e = {};                                    \
        tc_regs_args(regs, &tc_e);                                                     \
        {                                                                              \
            struct trace_event_raw_sys_enter *ctx = &tc_e;                             \
            return body;                                                               \
        }                                                                              \
    }

/* Program `prog` at fexit: `body` sees `ctx` as the sys_exit program does, the return value
 * in ctx->ret. */
#define TC_FEXIT_AS(prog, name, body)                                                  \
    SEC("fexit/__x64_sys_" #name)                                                      \
    int BPF_PROG(prog, const struct pt_regs *regs, long ret)                           \
    {                                                                                  \
        struct trace_event_raw_sys_exit tc_x = { .ret = ret };                         \
        {                                                                              \
            struct trace_event_raw_sys_exit *ctx = &tc_x;                              \
            return body;                                                               \
        }                                                                              \
    }

/* The same without the tracepoint-shaped copy, for bodies that take the arguments as values:
 * `body` sees tc_sysarg(regs, n) and, at exit, `ret`. The copy stays in memory (its fields are
 * CO-RE accesses, which the compiler does not split into registers): 64 bytes more of the
 * program's frame at entry, more than mem's and the shared mappings' call chains have left
 * under the 512 bytes kernels before 6.13 allow (tests/e2e/test_bpf_stack.py). */
#define TC_FENTRY_ARGS(prog, name, body)                                               \
    SEC("fentry/__x64_sys_" #name)                                                     \
    int BPF_PROG(prog, const struct pt_regs *regs)                                     \
    {                                                                                  \
        return body;                                                                   \
    }

#define TC_FEXIT_RET(prog, name, body)                                                 \
    SEC("fexit/__x64_sys_" #name)                                                      \
    int BPF_PROG(prog, const struct pt_regs *regs, long ret)                           \
    {                                                                                  \
        return body;                                                                   \
    }

/* The twins of the syscall `name`'s enter and exit programs: tc_fenter_`name`, tc_fexit_`name`
 * (collector/probes.py names them so). */
#define TC_FENTRY(name, body) TC_FENTRY_AS(tc_fenter_##name, name, body)
#define TC_FEXIT(name, body) TC_FEXIT_AS(tc_fexit_##name, name, body)

/* A plain read or write, whole at its exit: tc_io_enter's scope check and arguments (fd, buf,
 * count and, with `has_pos`, the p* calls' offset, the syscall's argument 3) and tc_io_exit's
 * transfer, with nothing kept between the two. */
static __always_inline int tc_io_fexit(const struct pt_regs *regs, long ret, __u16 sc, __u8 dir,
                                       __u8 is_vec, bool has_pos)
{
    if (ret <= 0 || (sc == TC_SYS_RECVFROM && tc_peeks(dir, tc_sysarg(regs, 3))) ||
        !tc_in_scope())
        return 0;
    struct tc_io_args a = {
        .buf = tc_sysarg(regs, 1), .count = tc_sysarg(regs, 2),
        .pos = has_pos ? (__s64)tc_sysarg(regs, 3) : -1, .fd = (__s32)tc_sysarg(regs, 0),
        .syscall = sc, .direction = dir, .is_vec = is_vec,
    };
    struct file *f = tc_fd_file(a.fd);
    if (!f)
        return 0;
    return tc_io_done(&a, f, ret, (__u32)bpf_get_current_pid_tgid());
}

#define TC_IO_FEXIT(name, sc, dir, is_vec, has_pos)                                    \
    TC_FEXIT_RET(tc_fexit_##name, name, tc_io_fexit(regs, ret, sc, dir, is_vec, has_pos))

TC_IO_FEXIT(write, TC_SYS_WRITE, TC_DIR_WRITE, 0, false)
TC_IO_FEXIT(pwrite64, TC_SYS_PWRITE64, TC_DIR_WRITE, 0, true)
TC_IO_FEXIT(writev, TC_SYS_WRITEV, TC_DIR_WRITE, 1, false)
TC_IO_FEXIT(pwritev, TC_SYS_PWRITEV, TC_DIR_WRITE, 1, true)
TC_IO_FEXIT(pwritev2, TC_SYS_PWRITEV2, TC_DIR_WRITE, 1, true)
TC_IO_FEXIT(read, TC_SYS_READ, TC_DIR_READ, 0, false)
TC_IO_FEXIT(pread64, TC_SYS_PREAD64, TC_DIR_READ, 0, true)
TC_IO_FEXIT(readv, TC_SYS_READV, TC_DIR_READ, 1, false)
TC_IO_FEXIT(preadv, TC_SYS_PREADV, TC_DIR_READ, 1, true)
TC_IO_FEXIT(preadv2, TC_SYS_PREADV2, TC_DIR_READ, 1, true)
TC_IO_FEXIT(sendto, TC_SYS_SENDTO, TC_DIR_WRITE, 0, false)
/* recv(2) with MSG_PEEK (flags, argument 3) leaves the bytes queued: not captured */
TC_IO_FEXIT(recvfrom, TC_SYS_RECVFROM, TC_DIR_READ, 0, false)

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
