/* Empty programs on the syscall tracepoints that `tracecap --capture write` attaches.
 *
 * scripts/bench.py runs its out-of-scope workload with these attached, beside the untraced and
 * the traced runs: what remains is the cost of the hook itself (enabled syscall tracepoints put
 * every task on the slow syscall path and run a perf trace handler per call), which no program
 * we write can remove. Not part of tracecap. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define TC_EMPTY(name)                                                                     \
    SEC("tp/syscalls/sys_enter_" #name) int enter_##name(void *ctx) { return 0; }         \
    SEC("tp/syscalls/sys_exit_" #name) int exit_##name(void *ctx) { return 0; }

TC_EMPTY(write)
TC_EMPTY(pwrite64)
TC_EMPTY(writev)
TC_EMPTY(pwritev)
TC_EMPTY(pwritev2)

char LICENSE[] SEC("license") = "GPL";
