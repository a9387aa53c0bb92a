/* Pipe transfers beyond splice (file_io.bpf.h): vmsplice, tee, and io_uring's SPLICE and TEE.
 *
 * vmsplice moves user memory into a pipe (or a pipe's bytes into user memory): the bytes pass
 * a user buffer, an iovec array, so it is captured as the pipe write (or read) it is, through
 * tc_io_enter/tc_io_exit. tee duplicates one pipe's bytes into another without consuming them:
 * no user buffer and no regular file holds them, so it is recorded as a transfer (tc_xfer_*)
 * whose bytes the collector lists missing; a later splice from the second pipe into a file is
 * read back from that file. io_uring's SPLICE and TEE are the same transfers, recorded when
 * their completion is posted (io_uring_complete), as the other io_uring requests are. */
#ifndef TRACECAP_PIPES_BPF_H
#define TRACECAP_PIPES_BPF_H

#define TC_FMODE_WRITE 0x2          /* FMODE_WRITE: a macro, so not in BTF */
#define TC_SPLICE_F_FD_IN_FIXED (1u << 31)
#define TC_IORING_OP_SPLICE 30      /* UAPI numbers */
#define TC_IORING_OP_TEE 33

/* vmsplice(fd, iov, nr_segs, flags): into the pipe when fd is open for writing (the kernel's
 * own test, do_vmsplice), else out of it into user memory. */
static __always_inline int tc_vmsplice_enter(struct trace_event_raw_sys_enter *ctx)
{
    struct file *f = tc_fd_file((__s32)ctx->args[0]);
    if (!f)
        return 0;
    __u8 dir = BPF_CORE_READ(f, f_mode) & TC_FMODE_WRITE ? TC_DIR_WRITE : TC_DIR_READ;
    if (!cfg.filters[dir].enabled)
        return 0;
    return tc_io_enter(ctx, TC_SYS_VMSPLICE, dir, 1, -1);
}

SEC("tp/syscalls/sys_enter_vmsplice")
int tc_enter_vmsplice(struct trace_event_raw_sys_enter *ctx)
{
    return tc_vmsplice_enter(ctx);
}

/* tee(fd_in, fd_out, len, flags): two pipes, no offsets */
SEC("tp/syscalls/sys_enter_tee")
int tc_enter_tee(struct trace_event_raw_sys_enter *ctx)
{
    return tc_xfer_enter(TC_SYS_TEE, ctx->args[0], 0, ctx->args[1], 0);
}

/* Where a completed request's end started: the offset the request named, which the kernel
 * advanced by the bytes moved, or (-1) the file position, which it advanced likewise. */
static __always_inline __s64 tc_uring_start(struct file *f, __s64 off_after, long res)
{
    __s64 end = off_after;
    if (off_after == -1 || !f)
        end = f ? BPF_CORE_READ(f, f_pos) : 0;
    return end >= res ? end - res : 0;
}

/* IORING_OP_SPLICE and IORING_OP_TEE at completion. The output file is the request's; the
 * input is fd splice_fd_in of the process (the completing thread, an io-wq worker or the
 * SQPOLL thread, shares its fd table). An input among the ring's fixed files is not looked
 * up: the record then has no source (mode 0), so only the destination can be read back. */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(tc_uring_xfer_complete, struct io_ring_ctx *ring, void *reqp,
             struct io_uring_cqe *cqe)
{
    struct io_kiocb *req = reqp;
    __u8 opcode = BPF_CORE_READ(req, opcode);
    long res = BPF_CORE_READ(cqe, res);
    if (res <= 0 || (opcode != TC_IORING_OP_SPLICE && opcode != TC_IORING_OP_TEE))
        return 0;
    if (!tc_in_scope())
        return 0;
    struct io_splice *sp = (void *)&req->cmd;
    struct file *fout = BPF_CORE_READ(sp, file_out);
    __s32 in_fd = BPF_CORE_READ(sp, splice_fd_in);
    bool fixed = BPF_CORE_READ(sp, flags) & TC_SPLICE_F_FD_IN_FIXED;
    struct file *fin = fixed ? NULL : tc_fd_file(in_fd);
    struct tc_event_scratch *s = event_scratch_slot();
    if (!fout || !s)
        return 0;
    struct tc_xfer_args a = { .in_fd = fixed ? -1 : in_fd, .out_fd = -1 };
    a.syscall = opcode == TC_IORING_OP_TEE ? TC_SYS_IO_URING_TEE : TC_SYS_IO_URING_SPLICE;
    if (opcode == TC_IORING_OP_SPLICE) {
        a.in_pos = tc_uring_start(fin, BPF_CORE_READ(sp, off_in), res);
        a.out_pos = tc_uring_start(fout, BPF_CORE_READ(sp, off_out), res);
    }
    if (fin) {
        tc_xfer_end(&s->x.src, fin, a.in_fd, a.in_pos);
    } else {
        __builtin_memset(&s->x.src, 0, sizeof(s->x.src));
        s->x.src.fd = -1;
    }
    tc_xfer_end(&s->x.dst, fout, a.out_fd, a.out_pos);
    tc_xfer_emit(s, &a, TC_DIR_WRITE, fout, fin, res);
    if (fin)
        tc_xfer_emit(s, &a, TC_DIR_READ, fin, fout, res);
    return 0;
}

#endif
