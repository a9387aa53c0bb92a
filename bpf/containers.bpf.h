/* Containers, decided in the kernel when their cgroup is made: at `cgroup_mkdir` on the cgroup2
 * hierarchy, a new cgroup is classified from its parent's state and its own name by the naming
 * rules of collector/cgroup_rules.py (the same table, written into `cgroup_rules` before
 * attach), and its state (the container id, or none for the host) is kept in `cgroup_states`.
 * So a container's first instruction is already in or out of scope (`scope_cgroups`), and its
 * events are attributed after its cgroup is gone: removal leaves the state in the LRU map.
 * Cgroups that exist at start are classified by the collector, with the same rules. */
#ifndef TRACECAP_CONTAINERS_BPF_H
#define TRACECAP_CONTAINERS_BPF_H

#define TC_CGR_MAX_RULES 32
#define TC_CGR_PREFIX 32
#define TC_CGR_SUFFIX 16
#define TC_CGR_NAME 128          /* a name of 127 bytes or more matches no rule */
#define TC_CGR_ID 64
#define TC_CGR_MAX_SCOPE_IDS 16

enum tc_cgr_kind {
    TC_CGR_CONTAINER = 1,    /* a container, wherever it is */
    TC_CGR_BARE = 2,         /* a container, only in a cgroupfs tree */
    TC_CGR_BARE_IDS = 3,     /* starts a cgroupfs tree */
    TC_CGR_NO_BARE_IDS = 4,  /* ends it */
};
enum tc_cgr_wildcard { TC_CGR_WILD_NONE = 0, TC_CGR_WILD_ID = 1, TC_CGR_WILD_ANY = 2 };
#define TC_CGR_STATE_CGROUPFS 1

struct tc_cgroup_rule {
    __u8 kind;
    __u8 wildcard;
    __u8 plen;
    __u8 slen;
    char prefix[TC_CGR_PREFIX];
    char suffix[TC_CGR_SUFFIX];
};

struct tc_cgroup_state {
    char cid[TC_CGR_ID];     /* lowercase hex, all zero for the host */
    __u8 flags;
    __u8 _pad[7];
};

/* `container=ID[,ID]`: the id prefixes (len 0 ends the list; an empty list is every container) */
struct tc_cid_prefix {
    __u8 len;
    char id[TC_CGR_ID];
    __u8 _pad[7];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TC_CGR_MAX_RULES);
    __type(key, __u32);
    __type(value, struct tc_cgroup_rule);
} cgroup_rules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct tc_cgroup_state);
} cgroup_states SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TC_CGR_MAX_SCOPE_IDS);
    __type(key, __u32);
    __type(value, struct tc_cid_prefix);
} scope_cids SEC(".maps");

struct tc_cgr_ctx {
    char name[TC_CGR_NAME];
    __u32 len;
    __u8 parent_cgroupfs;
    __u8 bare_ids;       /* a bare-ids rule matched */
    __u8 no_bare_ids;    /* a no-bare-ids rule matched */
    __u8 found;          /* a container rule matched: its id is in cid */
    char cid[TC_CGR_ID];
    __u8 hexrun[TC_CGR_NAME];  /* how many hex digits start at each offset (max 255) */
};

TC_SLOT(cgr_scratch, struct tc_cgr_ctx)

/* 1 unless c is a lowercase hex digit, without a branch: a range [lo, hi] test is the sign of
 * (c - lo) | (hi - c). Measured on 6.18 (log level 4): testing the 64 id bytes with branches
 * inside the per-rule bpf_loop callback made the verifier process 758,965 instructions of the
 * 1,000,000 allowed (6 s at every start, ~8x that under TCG); the run lengths below, computed
 * once per name outside the callback, brought tc_cgroup_mkdir to 63,411 (tc_cgr_byte: 7,839). */
static __always_inline __u64 tc_cgr_not_hex(char c)
{
    __s64 v = (__u8)c;
    __u64 not_digit = (__u64)((v - '0') | ('9' - v)) >> 63;
    __u64 not_lower = (__u64)((v - 'a') | ('f' - v)) >> 63;
    return not_digit & not_lower;
}

struct tc_cgr_cmp {
    __u32 idx;                   /* the rule's */
    __u32 differs;
};

/* Byte i of rule idx's prefix, then of its suffix, against the name's (a bpf_loop callback in
 * the per-rule one). With a loop per part the verifier followed every length a rule might
 * have: the per-rule callback took 49,096 of tc_cgroup_mkdir's 63,411 processed instructions
 * (a branchless compare of every byte, 85,502 in all, was worse). */
static long tc_cgr_byte(__u32 i, struct tc_cgr_cmp *p)
{
    struct tc_cgr_ctx *c = cgr_scratch_slot();
    __u32 idx = p->idx;
    struct tc_cgroup_rule *r = bpf_map_lookup_elem(&cgroup_rules, &idx);
    if (!c || !r)
        return 1;
    __u32 pl = r->plen, sl = r->slen;
    char want, have;
    if (i < pl) {
        want = r->prefix[i & (TC_CGR_PREFIX - 1)];
        have = c->name[i & (TC_CGR_NAME - 1)];
    } else {
        __u32 j = i - pl;
        want = r->suffix[j & (TC_CGR_SUFFIX - 1)];
        have = c->name[(c->len - sl + j) & (TC_CGR_NAME - 1)];
    }
    if (want != have) {
        p->differs = 1;
        return 1;
    }
    return 0;
}

static __always_inline bool tc_cgr_match(const struct tc_cgroup_rule *r, __u32 idx, __u32 n,
                                         const __u8 *hexrun)
{
    __u32 pl = r->plen, sl = r->slen, fixed;
    if (pl >= TC_CGR_PREFIX || sl >= TC_CGR_SUFFIX)
        return false;
    fixed = pl + sl + (r->wildcard == TC_CGR_WILD_ID ? TC_CGR_ID : 0);
    if (r->wildcard == TC_CGR_WILD_ANY ? n < fixed : n != fixed)
        return false;
    struct tc_cgr_cmp cmp = { .idx = idx };
    bpf_loop(pl + sl, tc_cgr_byte, &cmp, 0);
    if (cmp.differs)
        return false;
    if (r->wildcard == TC_CGR_WILD_ID) {
        if (hexrun[pl & (TC_CGR_PREFIX - 1)] < TC_CGR_ID)
            return false;
    }
    return true;
}

/* One rule (bpf_loop callback, verified once whatever the number of rules). The name and the
 * result are in this CPU's scratch (bpf_loop's context must be on the stack, which is too
 * small for them). */
static long tc_cgr_rule(__u32 idx, void *unused)
{
    struct tc_cgr_ctx *c = cgr_scratch_slot();
    struct tc_cgroup_rule *r = bpf_map_lookup_elem(&cgroup_rules, &idx);
    if (!c || !r || !r->kind)
        return 1;   /* end of the table */
    if (!tc_cgr_match(r, idx, c->len, c->hexrun))
        return 0;
    switch (r->kind) {
    case TC_CGR_BARE:
        if (!c->parent_cgroupfs)
            break;
        /* fall through */
    case TC_CGR_CONTAINER:
        if (!c->found) {
            __u32 pl = r->plen;
            c->found = 1;
            bpf_probe_read_kernel(c->cid, TC_CGR_ID, &c->name[pl & (TC_CGR_PREFIX - 1)]);
        }
        break;
    case TC_CGR_BARE_IDS:
        c->bare_ids = 1;
        break;
    case TC_CGR_NO_BARE_IDS:
        c->no_bare_ids = 1;
        break;
    }
    return 0;
}

static __always_inline bool tc_cgr_wanted(const char *cid)
{
    for (__u32 i = 0; i < TC_CGR_MAX_SCOPE_IDS; i++) {
        struct tc_cid_prefix *p = bpf_map_lookup_elem(&scope_cids, &i);
        if (!p || !p->len)
            return i == 0;   /* no prefixes: every container */
        __u32 n = p->len, j;
        bool same = true;
        for (j = 0; j < TC_CGR_ID; j++) {
            if (j >= n)
                break;
            if (p->id[j] != cid[j]) {
                same = false;
                break;
            }
        }
        if (same)
            return true;
    }
    return false;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tc_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
    struct tc_cgroup_state st = {};
    struct tc_cgr_ctx *c;
    struct cgroup *parent;
    __u64 id, parent_id;
    bool parent_root;
    long n;

    if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
        return 0;   /* a cgroup v1 hierarchy: its ids are not the ones events carry */
    c = cgr_scratch_slot();
    if (!c)
        return 0;
    __builtin_memset(c, 0, sizeof(*c));
    id = BPF_CORE_READ(cgrp, kn, id);
    parent_root = BPF_CORE_READ(cgrp, level) <= 1;
    /* `self` is struct cgroup's first member: its css parent is the parent cgroup */
    parent = (struct cgroup *)BPF_CORE_READ(cgrp, self.parent);
    parent_id = BPF_CORE_READ(parent, kn, id);
    if (!parent_root) {
        struct tc_cgroup_state *ps = bpf_map_lookup_elem(&cgroup_states, &parent_id);
        if (ps) {
            __builtin_memcpy(st.cid, ps->cid, TC_CGR_ID);
            c->parent_cgroupfs = ps->flags & TC_CGR_STATE_CGROUPFS;
        }
    }
    n = bpf_probe_read_kernel_str(c->name, TC_CGR_NAME, BPF_CORE_READ(cgrp, kn, name));
    if (n > 1 && n < TC_CGR_NAME) {
        c->len = n - 1;
        __u64 run = 0;
        for (int k = TC_CGR_NAME - 1; k >= 0; k--) {
            run = (run + 1) * (1 - tc_cgr_not_hex(c->name[k]));
            c->hexrun[k] = run > 255 ? 255 : run;
        }
        bpf_loop(TC_CGR_MAX_RULES, tc_cgr_rule, NULL, 0);
        if (c->found)
            __builtin_memcpy(st.cid, c->cid, TC_CGR_ID);
        if (c->bare_ids || (!c->no_bare_ids && (parent_root || c->parent_cgroupfs)))
            st.flags = TC_CGR_STATE_CGROUPFS;
    }
    bpf_map_update_elem(&cgroup_states, &id, &st, BPF_ANY);
    if (st.cid[0] && (cfg.scope_flags & (TC_SCOPE_CONTAINER | TC_SCOPE_HOST)) &&
        tc_cgr_wanted(st.cid)) {
        __u8 one = 1;
        bpf_map_update_elem(&scope_cgroups, &id, &one, BPF_ANY);
    }
    return 0;
}

/* An empty cgroup is removed: nothing runs in it any more, so it leaves the scope set; its
 * state stays for the events still in the rings. */
SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tc_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
    __u64 id;
    if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
        return 0;
    id = BPF_CORE_READ(cgrp, kn, id);
    bpf_map_delete_elem(&scope_cgroups, &id);
    return 0;
}

#endif
