/* Who is captured: scope filters (comm, pid, uid, follow) and the exclusion of tracecap's own
 * processes, evaluated in the kernel so that out-of-scope work costs a few map lookups.
 * Shared by every capture kind. */
#ifndef TRACECAP_SCOPE_BPF_H
#define TRACECAP_SCOPE_BPF_H

const volatile struct tc_config cfg = {};

/* tgids of tracecap's root processes (collector, supervisord, `tracecap run`), set by the
 * collector before attach; children they fork are added by the fork hook below. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u8);
} excluded SEC(".maps");

/* tgids followed because an ancestor matched the scope (--scope follow). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} followed SEC(".maps");

struct tc_comm_key { char comm[TC_COMM_LEN]; };

/* value 1: comm=NAME (include), value 2: comm!=NAME (exclude) */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, struct tc_comm_key);
    __type(value, __u8);
} scope_comm SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u8);
} scope_pid SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u8);
} scope_uid SEC(".maps");

/* Cgroups of containers (or of the selected containers): those that exist at start from the
 * collector, those made later from cgroup_mkdir (containers.bpf.h). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u8);
} scope_cgroups SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TC_NUM_COUNTERS);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static __always_inline void tc_count(__u32 idx, __u64 n)
{
    __u64 *c = bpf_map_lookup_elem(&counters, &idx);
    if (c)
        *c += n;   /* per-CPU slot: no atomics needed */
}

/* Does the current task match every --scope filter (ignoring follow)? */
static __always_inline bool tc_matches_filters(__u32 tgid, __u32 uid)
{
    __u32 flags = cfg.scope_flags;
    if (flags & (TC_SCOPE_COMM | TC_SCOPE_COMM_NOT)) {
        struct tc_comm_key key = {};
        bpf_get_current_comm(key.comm, sizeof(key.comm));
        __u8 *v = bpf_map_lookup_elem(&scope_comm, &key);
        if ((flags & TC_SCOPE_COMM) && !(v && *v == 1))
            return false;
        if ((flags & TC_SCOPE_COMM_NOT) && v && *v == 2)
            return false;
    }
    if ((flags & TC_SCOPE_PID) && !bpf_map_lookup_elem(&scope_pid, &tgid))
        return false;
    if ((flags & TC_SCOPE_UID) && !bpf_map_lookup_elem(&scope_uid, &uid))
        return false;
    if (flags & (TC_SCOPE_CONTAINER | TC_SCOPE_HOST)) {
        __u64 cgid = bpf_get_current_cgroup_id();
        bool contained = bpf_map_lookup_elem(&scope_cgroups, &cgid) != NULL;
        if ((flags & TC_SCOPE_CONTAINER) && !contained)
            return false;
        if ((flags & TC_SCOPE_HOST) && contained)
            return false;
    }
    return true;
}

static __always_inline bool tc_in_scope(void)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    __u32 uid = (__u32)bpf_get_current_uid_gid();
    if (uid == cfg.excluded_uid || bpf_map_lookup_elem(&excluded, &tgid))
        return false;
    if (!(cfg.scope_flags & ~TC_SCOPE_FOLLOW))
        return true;
    if ((cfg.scope_flags & TC_SCOPE_FOLLOW) && bpf_map_lookup_elem(&followed, &tgid))
        return true;
    if (!tc_matches_filters(tgid, uid))
        return false;
    if (cfg.scope_flags & TC_SCOPE_FOLLOW) {
        __u8 one = 1;
        bpf_map_update_elem(&followed, &tgid, &one, BPF_ANY);
    }
    return true;
}

/* A fork's effect on scope: the child inherits exclusion (a restarted writer) and, with
 * follow, being in scope. Runs in the parent's context. True when the fork is in scope (to be
 * reported, bpf/procs.bpf.h); a new thread (same tgid) is never reported. */
static __always_inline bool tc_scope_fork(struct task_struct *parent, struct task_struct *child)
{
    __u32 ptgid = parent->tgid, ctgid = child->tgid;
    __u8 one = 1;
    if (ptgid == ctgid)
        return false;   /* a new thread: same tgid, nothing to inherit */
    if (bpf_map_lookup_elem(&excluded, &ptgid)) {
        bpf_map_update_elem(&excluded, &ctgid, &one, BPF_ANY);
        return false;
    }
    /* the fork hook runs in the parent's context, so the filters see the parent */
    bool in = tc_in_scope();
    if (in && (cfg.scope_flags & TC_SCOPE_FOLLOW))
        bpf_map_update_elem(&followed, &ctgid, &one, BPF_ANY);
    return in;
}

/* A process's end: its last thread is exiting (signal->live has dropped to 0), so its tgid
 * leaves the scope maps. Runs in the exiting thread's context. True when the exit is in scope
 * (to be reported); false for every other thread's exit. */
static __always_inline bool tc_scope_exit(struct task_struct *p)
{
    __u32 tgid = p->tgid;
    if (BPF_CORE_READ(p, signal, live.counter))
        return false;   /* not the process's last thread */
    bool in = tc_in_scope();
    bpf_map_delete_elem(&followed, &tgid);
    bpf_map_delete_elem(&excluded, &tgid);
    return in;
}

/* A task's id as its own pid namespace numbers it (what `ps` in a container shows). */
static __always_inline __u32 tc_ns_id(struct pid *p)
{
    unsigned int level = BPF_CORE_READ(p, level);
    struct upid up = {};
    bpf_core_read(&up, sizeof(up), &p->numbers[level & 31]);
    return up.nr;
}

/* The inode number of the pid namespace that numbers `p` last (the task's own), as Tracee's
 * get_task_pid_ns_id reads it. */
static __always_inline __u32 tc_pid_ns(struct pid *p)
{
    unsigned int level = BPF_CORE_READ(p, level);
    struct upid up = {};
    bpf_core_read(&up, sizeof(up), &p->numbers[level & 31]);
    return BPF_CORE_READ(up.ns, ns.inum);
}

static __always_inline void tc_fill_hdr(struct tc_hdr *h, __u32 kind)
{
    __u64 pt = bpf_get_current_pid_tgid();
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    h->kind = kind;
    h->cpu = bpf_get_smp_processor_id();
    h->ts = bpf_ktime_get_boot_ns();
    h->pid = pt >> 32;
    h->tid = (__u32)pt;
    h->ppid = BPF_CORE_READ(t, real_parent, tgid);
    h->uid = (__u32)bpf_get_current_uid_gid();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->ns_tid = tc_ns_id(BPF_CORE_READ(t, thread_pid));
    h->ns_pid = tc_ns_id(BPF_CORE_READ(t, group_leader, thread_pid));
    h->ns_ppid = tc_ns_id(BPF_CORE_READ(t, real_parent, group_leader, thread_pid));
    h->mnt_ns = BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
    h->thread_start = BPF_CORE_READ(t, start_boottime);
    h->pid_ns = tc_pid_ns(BPF_CORE_READ(t, thread_pid));
    h->_pad = 0;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

#endif
