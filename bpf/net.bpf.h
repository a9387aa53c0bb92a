/* Packets (--capture network): cgroup_skb ingress and egress on the cgroup2 root see every
 * packet of every socket with its bytes (including non-linear TCP payload) and the socket's
 * cookie. The thread that owns a socket is learnt in process context (socket creation, every
 * send and receive) and joined on the cookie, here when already known, else in user space. */
#ifndef TRACECAP_NET_BPF_H
#define TRACECAP_NET_BPF_H

#define TC_PKT_MAX 65535

struct tc_owner {
    __u64 start_time;
    __u64 cgroup_id;
    __u32 pid, tid, ppid, uid;
    __u32 in_scope;
    __u32 _pad;
    char comm[TC_COMM_LEN];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct tc_owner);
} sock_owner SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 << 20);
} pkt_rb SEC(".maps");

struct tc_pkt_scratch {
    struct tc_packet hdr;
    __u8 data[TC_PKT_MAX + 1];
};

/* One slot per CPU (sized by the collector): too big for a per-CPU map. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tc_pkt_scratch);
} pkt_scratch SEC(".maps");

/* Record the current thread as the socket's owner; tell user space when that is news. */
static __always_inline void tc_own_socket(__u64 cookie)
{
    if (!cookie)
        return;
    __u64 pt = bpf_get_current_pid_tgid();
    struct tc_owner *o = bpf_map_lookup_elem(&sock_owner, &cookie);
    if (o && o->tid == (__u32)pt)
        return;   /* the common case: the same thread again */
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct tc_owner n = {
        .start_time = BPF_CORE_READ(t, start_boottime),
        .cgroup_id = bpf_get_current_cgroup_id(),
        .pid = pt >> 32, .tid = (__u32)pt,
        .ppid = BPF_CORE_READ(t, real_parent, tgid),
        .uid = (__u32)bpf_get_current_uid_gid(),
        .in_scope = tc_in_scope(),
    };
    bpf_get_current_comm(n.comm, sizeof(n.comm));
    bpf_map_update_elem(&sock_owner, &cookie, &n, BPF_ANY);

    struct tc_sock_owner ev = {};
    tc_fill_hdr(&ev.h, TC_REC_SOCK_OWNER);
    ev.cookie = cookie;
    ev.start_time = n.start_time;
    ev.in_scope = n.in_scope;
    if (bpf_ringbuf_output(&pkt_rb, &ev, sizeof(ev), 0))
        tc_count(TC_KIND_NET * TC_CNT_PER_KIND + TC_CNT_EVENT_DROPS, 1);
}

SEC("cgroup/sock_create")
int tc_sock_create(struct bpf_sock *sk)
{
    tc_own_socket(bpf_get_socket_cookie(sk));
    return 1;   /* never refuse a socket */
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tc_sock_send, struct sock *sk, int ret, int flags)
{
    tc_own_socket(bpf_get_socket_cookie(sk));
    return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tc_sock_recv, struct sock *sk, int ret, int flags)
{
    tc_own_socket(bpf_get_socket_cookie(sk));
    return 0;
}

/* ---- sockets that existed before the capture ------------------------------------------- */

/* Weak: libbpf resolves every extern of the object, loaded or not, and fails on a kernel
 * without these kfuncs (6.2); weak, the object loads there with network refused
 * (collector/hooks.py), this program not loaded. */
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;

/* tc_in_scope's rules (scope.bpf.h) for a task other than the current one: its tgid, real
 * uid, comm and cgroup stand where tc_in_scope reads the current task's. Follow does not add
 * the task (only a fork after the start does). */
static __always_inline bool tc_task_in_scope(struct task_struct *t)
{
    __u32 tgid = t->tgid;
    __u32 uid = t->cred->uid.val;
    if (uid == cfg.excluded_uid || bpf_map_lookup_elem(&excluded, &tgid))
        return false;
    __u32 flags = cfg.scope_flags;
    if (!(flags & ~TC_SCOPE_FOLLOW))
        return true;
    if ((flags & TC_SCOPE_FOLLOW) && bpf_map_lookup_elem(&followed, &tgid))
        return true;
    if (flags & (TC_SCOPE_COMM | TC_SCOPE_COMM_NOT)) {
        struct tc_comm_key key = {};
        bpf_probe_read_kernel(key.comm, sizeof(key.comm), t->comm);
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
        __u64 cgid = t->cgroups->dfl_cgrp->kn->id;
        bool contained = bpf_map_lookup_elem(&scope_cgroups, &cgid) != NULL;
        if ((flags & TC_SCOPE_CONTAINER) && !contained)
            return false;
        if ((flags & TC_SCOPE_HOST) && contained)
            return false;
    }
    return true;
}

/* The owner of a socket that was open before the capture started: a listening socket never
 * sends or receives, so its handshakes (SYN in, SYN-ACK out, ACK in, all carrying the
 * listener's cookie) would have no owner. The collector finds such sockets in /proc/PID/fd
 * and runs this program for each (BPF_PROG_TEST_RUN; see struct tc_sock_adopt). The process's
 * main thread becomes the owner unless the kernel already learnt one. */
SEC("syscall")
int tc_sock_adopt(struct tc_sock_adopt *a)
{
    __u64 cookie = a->cookie;
    if (bpf_map_lookup_elem(&sock_owner, &cookie)) {
        a->result = TC_ADOPT_KNOWN;
        return 0;
    }
    struct task_struct *t = bpf_task_from_pid(a->pid);
    if (!t) {
        a->result = TC_ADOPT_NO_TASK;
        return 0;
    }
    struct tc_owner n = {
        .start_time = t->start_boottime,
        .cgroup_id = t->cgroups->dfl_cgrp->kn->id,
        .pid = t->tgid, .tid = t->pid,
        .ppid = t->real_parent->tgid,
        .uid = t->cred->uid.val,
        .in_scope = tc_task_in_scope(t),
    };
    bpf_probe_read_kernel(n.comm, sizeof(n.comm), t->comm);
    bpf_task_release(t);
    if (bpf_map_update_elem(&sock_owner, &cookie, &n, BPF_NOEXIST)) {
        a->result = bpf_map_lookup_elem(&sock_owner, &cookie) ? TC_ADOPT_KNOWN : TC_ADOPT_FULL;
        return 0;
    }
    a->start_time = n.start_time;
    a->cgroup_id = n.cgroup_id;
    a->pid = n.pid;
    a->ppid = n.ppid;
    a->uid = n.uid;
    a->in_scope = n.in_scope;
    __builtin_memcpy(a->comm, n.comm, TC_COMM_LEN);
    a->result = TC_ADOPT_OWNED;
    return 0;
}

/* Bytes up to the end of the L4 header (IPv4/IPv6; TCP, UDP, ICMP, ICMPv6). */
static __always_inline __u32 tc_headers_len(struct __sk_buff *skb)
{
    __u8 b = 0, proto = 0;
    __u32 l3;
    if (bpf_skb_load_bytes(skb, 0, &b, 1))
        return 0;
    if ((b >> 4) == 4) {
        l3 = (b & 0xf) * 4;
        bpf_skb_load_bytes(skb, 9, &proto, 1);
    } else if ((b >> 4) == 6) {
        l3 = 40;
        bpf_skb_load_bytes(skb, 6, &proto, 1);
    } else {
        return 0;
    }
    if (proto == 6) {
        __u8 off = 0;
        bpf_skb_load_bytes(skb, (l3 + 12) & 0xff, &off, 1);
        return l3 + (off >> 4) * 4;
    }
    if (proto == 17 || proto == 1 || proto == 58)
        return l3 + 8;
    return l3;
}

static __always_inline int tc_packet(struct __sk_buff *skb, __u32 direction)
{
    if (cfg.net_ifindex && skb->ifindex != cfg.net_ifindex)
        return 1;
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct tc_owner *o = cookie ? bpf_map_lookup_elem(&sock_owner, &cookie) : NULL;
    if (o && !o->in_scope)
        return 1;
    if (!o && cfg.scope_flags & ~TC_SCOPE_FOLLOW)
        return 1;   /* with a scope, packets of unknown owners are out of it */

    __u32 slot = bpf_get_smp_processor_id();
    struct tc_pkt_scratch *s = bpf_map_lookup_elem(&pkt_scratch, &slot);
    if (!s)
        return 1;
    __u32 len = skb->len;
    __u32 keep = len;
    if (cfg.snaplen >= 0) {
        __u32 limit = tc_headers_len(skb) + (__u32)cfg.snaplen;
        if (keep > limit)
            keep = limit;
    }
    if (keep > TC_PKT_MAX)
        keep = TC_PKT_MAX;
    if (keep) {
        /* 1..TC_PKT_MAX+1 as the verifier sees it: never zero, never past data[] */
        __u32 n = tc_bound(keep - 1, TC_PKT_MAX) + 1;
        if (bpf_skb_load_bytes(skb, 0, s->data, n))
            keep = 0;
    }

    s->hdr.kind = TC_REC_PACKET;
    s->hdr.len = keep;
    s->hdr.ts = bpf_ktime_get_boot_ns();
    s->hdr.cookie = cookie;
    s->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    s->hdr.orig_len = len;
    s->hdr.ifindex = skb->ifindex;
    s->hdr.direction = direction;
    if (o) {
        s->hdr.owner_start = o->start_time;
        s->hdr.owner_pid = o->pid;
        s->hdr.owner_tid = o->tid;
        s->hdr.owner_ppid = o->ppid;
        s->hdr.owner_uid = o->uid;
        __builtin_memcpy(s->hdr.owner_comm, o->comm, TC_COMM_LEN);
    } else {
        s->hdr.owner_start = 0;
        s->hdr.owner_pid = 0;
        s->hdr.owner_tid = 0;
        s->hdr.owner_ppid = 0;
        s->hdr.owner_uid = 0;
        __builtin_memset(s->hdr.owner_comm, 0, TC_COMM_LEN);
    }
    __u32 base = TC_KIND_NET * TC_CNT_PER_KIND;
    __u64 size = sizeof(s->hdr) + tc_bound(keep, TC_PKT_MAX);
    if (bpf_ringbuf_output(&pkt_rb, s, size, tc_wakeup_flag(&pkt_rb, size))) {
        tc_count(base + TC_CNT_CHUNK_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, keep);
    } else {
        tc_count(base + TC_CNT_CHUNKS, 1);
        tc_count(base + TC_CNT_BYTES, keep);
    }
    return 1;   /* never drop: this program only watches */
}

SEC("cgroup_skb/egress")
int tc_skb_egress(struct __sk_buff *skb)
{
    return tc_packet(skb, TC_PKT_EGRESS);
}

SEC("cgroup_skb/ingress")
int tc_skb_ingress(struct __sk_buff *skb)
{
    return tc_packet(skb, TC_PKT_INGRESS);
}

#endif
