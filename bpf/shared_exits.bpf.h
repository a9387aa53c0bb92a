/* The syscall exits of the write and read captures: one program per body, each attached by the
 * collector to the sys_exit tracepoint of every syscall that body serves (collector/probes.py
 * SHARED_EXITS).
 *
 * At exit every syscall of a group does the same: it takes what its enter saved for the thread
 * (io_pending or xfer_pending, which says the syscall, direction and buffers) and the return
 * value, the one field of struct trace_event_raw_sys_exit read, at the same offset in every
 * sys_exit tracepoint. A program per syscall verified that same body once each: 15 copies of
 * tc_io_exit at 44,107 processed instructions each (0.07-0.17 s each on this 6.18) for write
 * and read; one copy now. The fentry hook keeps a program per syscall (file_io_fentry.bpf.h):
 * a trampoline belongs to one function. */
#ifndef TRACECAP_SHARED_EXITS_BPF_H
#define TRACECAP_SHARED_EXITS_BPF_H

/* write, pwrite64, writev, pwritev, pwritev2, sendto, sendmsg, vmsplice and their reads */
SEC("tp")
int tc_exit_io(struct trace_event_raw_sys_exit *ctx) { return tc_io_exit(ctx); }

/* sendmmsg, recvmmsg */
SEC("tp")
int tc_exit_mmsg(struct trace_event_raw_sys_exit *ctx) { return tc_mmsg_exit(ctx); }

/* copy_file_range, sendfile64, splice, tee */
SEC("tp")
int tc_exit_xfer(struct trace_event_raw_sys_exit *ctx) { return tc_xfer_exit(ctx); }

#endif
