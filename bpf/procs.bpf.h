/* Process life: a tc_proc_event for each fork of a process and each process exit in scope,
 * from every capture (the programs are always loaded: scope.bpf.h keeps its maps with them).
 * One fixed-size record on the object ring per event, no loop and no string: 112 bytes. */
#ifndef TRACECAP_PROCS_BPF_H
#define TRACECAP_PROCS_BPF_H

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tc_fork, struct task_struct *parent, struct task_struct *child)
{
    if (!tc_scope_fork(parent, child))
        return 0;
    struct tc_proc_event ev = {};
    tc_fill_hdr(&ev.h, TC_REC_FORK);
    ev.child_pid = child->tgid;
    ev.child_ns_pid = tc_ns_id(BPF_CORE_READ(child, thread_pid));
    ev.child_start = child->start_boottime;
    tc_emit_event(TC_KIND_PROC, &ev, sizeof(ev));
    return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tc_proc_exit, struct task_struct *p)
{
    if (!tc_scope_exit(p))
        return 0;
    struct tc_proc_event ev = {};
    tc_fill_hdr(&ev.h, TC_REC_EXIT);
    ev.exit_code = BPF_CORE_READ(p, exit_code);
    tc_emit_event(TC_KIND_PROC, &ev, sizeof(ev));
    return 0;
}

#endif
