/* Memory made executable (--capture mem): Tracee's mem_prot_alert on every protection change
 * that makes writable memory executable or executable memory writable and executable, and the
 * bytes of a region when it stops being writable and becomes executable (Tracee's dump rule)
 * or, for a region mapped or made writable-and-executable, once it holds code: when it is
 * changed again, unmapped, or its process exits (never at mmap time, when it holds zeros).
 *
 * JITs change protections thousands of times a second (LuaJIT compiling small functions:
 * 44,000-51,000 changes to executable a second), so the work is bounded per process: an event
 * allowance and a byte allowance (tc_config.mem_*_per_s), refilled continuously up to one
 * second's worth. What they skip is counted, per process and globally, and reported on the
 * process's next event, at its exit, or by the collector at a stop. A dump whose content
 * equals the region's previous dump (a keyed 64-bit hash over every page) is sent as a REPEAT
 * of it, without its bytes.
 *
 * Pages that were never touched cannot be read here (no faults in these programs, and
 * sleepable tracepoint programs are refused: "Only fentry/fexit/fmod_ret, lsm, iter, uprobe,
 * and struct_ops programs can be sleepable"). In an anonymous private mapping such a page has
 * no page table entry and reads as zeros: the page walk below tells it apart from a page that
 * is swapped out or otherwise unknown (bpf/pagewalk.bpf.h), and sends it as a TC_DATA_ZERO
 * chunk. */
#ifndef TRACECAP_MEM_BPF_H
#define TRACECAP_MEM_BPF_H

#define TC_PAGE_SIZE 4096ull
#define TC_PAGE_WORDS 512
#define TC_PROT_MASK 7             /* PROT_READ|PROT_WRITE|PROT_EXEC; VM_READ.. are the same bits */
#define TC_NS 1000000000ll
#define TC_MAX_REGION (1ull << 47) /* larger lengths fail (ENOMEM) */
#define TC_HASH_MUL 0x9e3779b97f4a7c15ull
#define TC_EXIT_REGIONS 16         /* regions dumped at a process's exit; more are counted */
#define NR_MMAP 9
#define NR_PKEY_MPROTECT 329

/* Internal result of tc_mem_decide beside enum tc_mem_dump: nothing written in the region. */
#define TC_DUMP_EMPTY 16

struct tc_mem_region_key {
    __u32 tgid;
    __u32 _pad;
    __u64 addr;
};

/* A region mapped or made writable and executable, to dump once it holds code. `mm` and
 * `exec_id` tell an entry of an earlier program of the same tgid (after an exec). */
struct tc_mem_region {
    __u64 len;
    __u64 mm;
    __u64 exec_id;
};

struct tc_mem_seen_key {
    __u32 tgid;
    __u32 _pad;
    __u64 addr;
    __u64 size;
};

/* The region's last dump that arrived whole: its content hash and obj_id. */
struct tc_mem_seen {
    __u64 hash;
    __u64 obj_id;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct tc_mem_proc);
} mem_procs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, struct tc_mem_region_key);
    __type(value, struct tc_mem_region);
} mem_rwx SEC(".maps");

/* LRU: a forgotten entry only costs the next identical content a dump (the writer, hashing
 * what arrives, still counts it as an occurrence of the earlier artifact). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, struct tc_mem_seen_key);
    __type(value, struct tc_mem_seen);
} mem_seen SEC(".maps");

/* One slot per CPU holding every counter: one lookup however many are counted. */
struct tc_mem_counters {
    __u64 n[TC_MEM_NUM_COUNTERS];
};

TC_SLOT(mem_counters, struct tc_mem_counters)


static __always_inline void tc_mem_count(__u32 idx, __u64 n)
{
    struct tc_mem_counters *c = mem_counters_slot();
    if (c && idx < TC_MEM_NUM_COUNTERS)
        c->n[idx] += n;
}

/* ---- allowances ------------------------------------------------------------------------- */

static __always_inline void tc_mem_refill(struct tc_mem_proc *p)
{
    __u64 now = bpf_ktime_get_ns();
    if (now <= p->refill_ns)
        return;
    __u64 elapsed = now - p->refill_ns;
    if (elapsed > TC_NS)
        elapsed = TC_NS;   /* at most one second's worth is banked */
    p->refill_ns = now;
    __s64 ev_cap = (__s64)cfg.mem_events_per_s * TC_NS;
    __s64 byte_cap = (__s64)cfg.mem_bytes_per_s * TC_NS;
    __s64 events = p->events + (__s64)elapsed * cfg.mem_events_per_s;
    __s64 bytes = p->bytes + (__s64)elapsed * cfg.mem_bytes_per_s;
    p->events = events > ev_cap ? ev_cap : events;
    p->bytes = bytes > byte_cap ? byte_cap : bytes;
}

/* The process's state, its allowances topped up for the time since the last call. NULL when
 * the table is full: the event then goes unmetered. */
static __always_inline struct tc_mem_proc *tc_mem_proc(__u32 tgid)
{
    struct tc_mem_proc *p = bpf_map_lookup_elem(&mem_procs, &tgid);
    if (!p) {
        struct tc_mem_proc fresh = {
            .refill_ns = bpf_ktime_get_ns(),
            .events = (__s64)cfg.mem_events_per_s * TC_NS,
            .bytes = (__s64)cfg.mem_bytes_per_s * TC_NS,
            .cgroup_id = bpf_get_current_cgroup_id(),
            .exec_id = bpf_get_current_task_btf()->self_exec_id,
            .uid = (__u32)bpf_get_current_uid_gid(),
        };
        bpf_map_update_elem(&mem_procs, &tgid, &fresh, BPF_NOEXIST);
        p = bpf_map_lookup_elem(&mem_procs, &tgid);
        if (!p)
            tc_mem_count(TC_MEMC_TABLE_FULL, 1);
        return p;
    }
    p->exec_id = bpf_get_current_task_btf()->self_exec_id;
    tc_mem_refill(p);
    return p;
}

static __always_inline bool tc_mem_take_event(struct tc_mem_proc *p)
{
    if (!p)
        return true;
    if (p->events < TC_NS)
        return false;
    __sync_fetch_and_add(&p->events, -TC_NS);
    return true;
}

/* Bytes of the region are read (hashed or sent) when the allowance covers them, or when it is
 * full: a region larger than a second's allowance is still read whole, and the process then
 * waits for the allowance to come back from below zero. */
static __always_inline bool tc_mem_take_bytes(struct tc_mem_proc *p, __u64 bytes)
{
    if (!p)
        return true;
    __s64 cost = (__s64)bytes * TC_NS;
    if (p->bytes < cost && p->bytes < (__s64)cfg.mem_bytes_per_s * TC_NS)
        return false;
    __sync_fetch_and_add(&p->bytes, -cost);
    return true;
}

/* Count what the allowances skipped: globally, and on the process for its next event.
 * `unexamined`: a change not even looked at (past the event allowance). */
static __always_inline void tc_mem_skip(struct tc_mem_proc *p, __u64 events, __u64 dumps,
                                        __u64 bytes, __u64 unexamined)
{
    struct tc_mem_counters *c = mem_counters_slot();
    if (c) {
        c->n[TC_MEMC_UNEXAMINED] += unexamined;
        c->n[TC_MEMC_SKIPPED_EVENTS] += events;
        c->n[TC_MEMC_SKIPPED_DUMPS] += dumps;
        c->n[TC_MEMC_SKIPPED_BYTES] += bytes;
    }
    if (!p)
        return;
    __sync_fetch_and_add(&p->skipped_events, events);
    __sync_fetch_and_add(&p->skipped_dumps, dumps);
    __sync_fetch_and_add(&p->skipped_bytes, bytes);
}

/* Send the event with what the allowances skipped since the process's previous one. */
static __always_inline bool tc_mem_send_event(struct tc_mem_event *ev, struct tc_mem_proc *p)
{
    __u64 events = 0, dumps = 0, bytes = 0;
    if (p) {
        events = p->skipped_events;
        dumps = p->skipped_dumps;
        bytes = p->skipped_bytes;
    }
    ev->skipped_events = events;
    ev->skipped_dumps = dumps;
    ev->skipped_bytes = bytes;
    if (!tc_emit_event(TC_KIND_MEM, ev, sizeof(*ev)))
        return false;
    if (p) {   /* subtract rather than zero: others may have been counted meanwhile */
        __sync_fetch_and_add(&p->skipped_events, -events);
        __sync_fetch_and_add(&p->skipped_dumps, -dumps);
        __sync_fetch_and_add(&p->skipped_bytes, -bytes);
    }
    return true;
}

/* ---- regions ------------------------------------------------------------------------------ */

struct tc_mem_vma {
    __u64 flags;
    __u64 end;
    __u64 anon;              /* private anonymous, no userfaultfd: a page without an entry is 0 */
};

static long tc_mem_vma_cb(struct task_struct *task, struct vm_area_struct *vma,
                          struct tc_mem_vma *c)
{
    c->flags = vma->vm_flags;
    c->end = vma->vm_end;
    c->anon = !vma->vm_ops && !vma->vm_file && !vma->vm_userfaultfd_ctx.ctx;
    return 0;
}

static __always_inline __u64 tc_page_up(__u64 len)
{
    return (len + TC_PAGE_SIZE - 1) & ~(TC_PAGE_SIZE - 1);
}

/* One pass over a region, page by page: hash it, or send it (and hash what was sent). */
struct tc_mem_pass {
    __u64 addr;
    __u64 size;
    __u64 done;
    __u64 obj_id;
    __u64 anon_end;          /* pages below it may be known zero (0: none may) */
    __u64 pgd;
    __u64 dmap;
    __u64 hash;
    __u64 nonzero;           /* OR of every word read */
    __u32 send;
    __u32 slot;
    __u32 unknown;           /* pages neither readable nor known zero */
    __u32 failed;            /* chunks the ring had no room for */
};

/* How much to dump: 0 none, 1 the region, 2 the region if anything in it was written. */
enum { TC_WANT_NONE = 0, TC_WANT_DUMP, TC_WANT_CONTENT };

/* One event about [addr, addr + len): an alert, a dump, or both. */
struct tc_mem_req {
    __u64 addr;
    __u64 len;
    __u64 vma_end;
    __u32 vma_anon;
    __u32 tgid;
    __u32 syscall;
    __u32 alert;
    __u32 before;
    __u32 after;
    __u32 want;              /* TC_WANT_* */
    __u32 metered;           /* takes from the event allowance (an exit's dumps do not: there
                              * are at most TC_EXIT_REGIONS) */
};

/* tc_mem_report's large locals and its request, one slot per CPU: before 6.13 the verifier
 * limits a call chain's combined stack to 512 bytes (frames rounded up to 32), and with them
 * on the stack the chain tc_mem_exit -> tc_mem_exit_region -> tc_mem_report -> tc_mem_page ->
 * tc_mem_hash_page took 896 (measured at log level 4; Debian's 6.1 refused it). The pass is
 * not bpf_loop's context (that must be stack memory): tc_mem_page finds it here. Only one
 * tc_mem_report runs at a time on a CPU, and tc_mem_exit builds its own event here only after
 * its regions are reported. */
struct tc_mem_scratch {
    struct tc_mem_req req;
    struct tc_mem_event ev;
    struct tc_mem_pass c;
};

TC_SLOT(mem_scratch, struct tc_mem_scratch)


static __always_inline bool tc_mem_zero_page(struct tc_mem_pass *c, __u64 va)
{
    __u64 phys = 0;
    return c->dmap && va < c->anon_end &&
           tc_walk(c->dmap, c->pgd, va, tc_dmap_levels, &phys) == TC_WALK_NONE;
}

struct tc_page {
    __u64 w[TC_PAGE_WORDS];
};

struct tc_page_hash {
    __u64 hash;
    __u64 nonzero;
};

/* A global function: the verifier checks it once, not at every place a page is hashed. */
__noinline int tc_mem_hash_page(struct tc_page_hash *ph, struct tc_page *pg)
{
    if (!ph || !pg)
        return 0;
    __u64 h = ph->hash, nz = ph->nonzero;
    for (int j = 0; j < TC_PAGE_WORDS; j++) {
        h = (h ^ pg->w[j]) * TC_HASH_MUL;
        nz |= pg->w[j];
    }
    ph->hash = h;
    ph->nonzero = nz;
    return 0;
}

static long tc_mem_page(__u32 i, void *unused)
{
    struct tc_mem_scratch *m = mem_scratch_slot();
    if (!m)
        return 1;
    struct tc_mem_pass *c = &m->c;
    if (c->done >= c->size)
        return 1;
    struct tc_data_scratch *s = bpf_map_lookup_elem(&data_scratch, &c->slot);
    if (!s)
        return 1;
    __u64 va = c->addr + c->done;
    __u32 len = TC_PAGE_SIZE, flags = 0;
    struct tc_page_hash ph = { .hash = c->hash, .nonzero = c->nonzero };
    if (bpf_probe_read_user(s->data, TC_PAGE_SIZE, (void *)va)) {
        flags = tc_mem_zero_page(c, va) ? TC_DATA_ZERO : TC_DATA_UNREADABLE;
        if (flags == TC_DATA_UNREADABLE)
            c->unknown++;
        ph.hash = (ph.hash ^ (flags + 1)) * TC_HASH_MUL;
        len = 0;
    } else {
        tc_mem_hash_page(&ph, (struct tc_page *)s->data);
    }
    c->hash = ph.hash;
    c->nonzero = ph.nonzero;
    if (c->send) {
        __u32 base = TC_KIND_MEM * TC_CNT_PER_KIND;
        s->hdr.kind = TC_REC_OBJ_DATA;
        s->hdr.len = len;
        s->hdr.io_id = c->obj_id;
        s->hdr.io_off = c->done;
        s->hdr.want = TC_PAGE_SIZE;
        s->hdr.flags = flags;
        if (tc_output(1, &s->hdr, sizeof(s->hdr) + (len ? TC_PAGE_SIZE : 0))) {
            c->failed++;
            tc_count(base + TC_CNT_CHUNK_DROPS, 1);
            tc_count(base + TC_CNT_DROPPED_BYTES, TC_PAGE_SIZE);
        } else {
            tc_count(base + TC_CNT_CHUNKS, 1);
            tc_count(base + TC_CNT_BYTES, len);
            if (flags == TC_DATA_ZERO)
                tc_mem_count(TC_MEMC_ZERO_BYTES, TC_PAGE_SIZE);
            else if (flags)
                tc_count(base + TC_CNT_DROPPED_BYTES, TC_PAGE_SIZE);
        }
    }
    c->done += TC_PAGE_SIZE;
    return 0;
}

static __always_inline void tc_mem_run(struct tc_mem_pass *c, __u32 send)
{
    /* tc_opaque_zero: counters the verifier cannot know, or it walks every iteration */
    c->send = send;
    c->done = tc_opaque_zero;
    c->hash = (cfg.mem_hash_seed ^ c->size) + tc_opaque_zero;   /* cfg is known to the verifier */
    c->nonzero = tc_opaque_zero;
    c->unknown = tc_opaque_zero;
    c->failed = tc_opaque_zero;
    bpf_loop(TC_MAX_STEPS, tc_mem_page, NULL, 0);
}

/* What to do with the region's bytes: SENT (the caller sends them after the event), REPEAT
 * (ev->same_as set), BUDGET, or TC_DUMP_EMPTY when `need_content` and nothing in it was ever
 * written. A hashing pass runs first when it can spare a dump: a previous dump of the region
 * exists, or the region may be empty. */
static __always_inline __u32 tc_mem_decide(struct tc_mem_pass *c, struct tc_mem_proc *p,
                                           struct tc_mem_seen_key *key, bool need_content,
                                           struct tc_mem_event *ev, bool *hashed)
{
    struct tc_mem_seen *seen = bpf_map_lookup_elem(&mem_seen, key);
    *hashed = false;
    if (seen || need_content) {
        __u64 prev_hash = seen ? seen->hash : 0, prev_id = seen ? seen->obj_id : 0;
        if (!tc_mem_take_bytes(p, c->size))
            return TC_DUMP_BUDGET;
        tc_mem_run(c, 0);
        *hashed = true;
        if (need_content && !c->nonzero && !c->unknown)
            return TC_DUMP_EMPTY;
        if (seen && prev_hash == c->hash && !c->unknown) {
            ev->same_as = prev_id;
            return TC_DUMP_REPEAT;
        }
    }
    if (!tc_mem_take_bytes(p, c->size))
        return TC_DUMP_BUDGET;
    return TC_DUMP_SENT;
}

/* A global function, checked once by the verifier (inlined at every caller, the hashing and
 * sending loops in it made the checks of tc_mem_exit run out of memory). */
__noinline int tc_mem_report(struct tc_mem_req *r)
{
    struct tc_mem_scratch *s = mem_scratch_slot();
    if (!r || !s)
        return 0;
    /* a key on the stack: 6.1's verifier takes no map key from a global function's argument
     * memory ("R2 type=mem expected=fp, ..."; tc_mem_exit did not load on Debian's 6.1) */
    __u32 tgid = r->tgid;
    struct tc_mem_proc *p = bpf_map_lookup_elem(&mem_procs, &tgid);
    __u64 size = tc_page_up(r->len);
    __u32 want = r->want;
    if (r->alert)
        tc_mem_count(TC_MEMC_ALERTS, 1);
    if (r->metered && !tc_mem_take_event(p)) {
        tc_mem_skip(p, 1, want ? 1 : 0, want ? size : 0, 0);
        return 0;
    }
    struct tc_mem_event *ev = &s->ev;
    struct tc_mem_pass *c = &s->c;
    __builtin_memset(ev, 0, sizeof(*ev));
    __builtin_memset(c, 0, sizeof(*c));
    __u32 dump = TC_DUMP_NONE;
    bool hashed = false;
    if (want) {
        c->addr = r->addr;
        c->size = size > TC_OBJ_MAX ? TC_OBJ_MAX : size;
        c->slot = bpf_get_smp_processor_id();
        if (r->vma_anon) {
            c->pgd = (__u64)BPF_CORE_READ(bpf_get_current_task_btf(), mm, pgd);
            c->dmap = tc_dmap(c->pgd);
            c->anon_end = r->vma_end;
        }
        struct tc_mem_seen_key key = { .tgid = r->tgid, .addr = r->addr, .size = size };
        dump = tc_mem_decide(c, p, &key, want == TC_WANT_CONTENT, ev, &hashed);
        if (dump == TC_DUMP_EMPTY) {
            tc_mem_count(TC_MEMC_RWX_EMPTY, 1);
            return 0;
        }
        if (dump == TC_DUMP_BUDGET)   /* the event itself says so: counted globally only */
            tc_mem_skip(NULL, 0, 1, size, 0);
        if (dump == TC_DUMP_REPEAT)
            tc_mem_count(TC_MEMC_REPEATS, 1);
    }
    tc_fill_hdr(&ev->h, TC_REC_MEM_EVENT);
    ev->obj_id = __sync_fetch_and_add(&io_seq, 1);
    ev->addr = r->addr;
    ev->len = r->len;
    ev->size = size;
    ev->captured = dump == TC_DUMP_SENT ? c->size : 0;
    ev->prot_before = r->before;
    ev->prot_after = r->after;
    ev->syscall = r->syscall;
    ev->alert = r->alert;
    ev->dump = dump;
    if (!tc_mem_send_event(ev, p) || dump != TC_DUMP_SENT)
        return 0;
    __u64 first_hash = c->hash;
    c->obj_id = ev->obj_id;
    tc_mem_run(c, 1);
    struct tc_mem_seen_key key = { .tgid = r->tgid, .addr = r->addr, .size = size };
    /* Remembered only when every byte left whole and unchanged since the hashing pass. */
    if (!c->failed && !c->unknown && size <= TC_OBJ_MAX && (!hashed || c->hash == first_hash)) {
        struct tc_mem_seen seen = { .hash = c->hash, .obj_id = ev->obj_id };
        bpf_map_update_elem(&mem_seen, &key, &seen, BPF_ANY);
    } else {
        bpf_map_delete_elem(&mem_seen, &key);
    }
    return 0;
}

static __always_inline void tc_mem_event(__u32 tgid, __u64 addr, __u64 len,
                                         struct tc_mem_vma *vma, __u32 syscall, __u32 alert,
                                         __u32 before, __u32 after, __u32 want, bool metered)
{
    struct tc_mem_scratch *s = mem_scratch_slot();
    if (!s)
        return;
    s->req = (struct tc_mem_req){
        .addr = addr, .len = len, .vma_end = vma->end, .vma_anon = vma->anon, .tgid = tgid,
        .syscall = syscall, .alert = alert, .before = before, .after = after, .want = want,
        .metered = metered,
    };
    tc_mem_report(&s->req);
}

static __always_inline bool tc_mem_writable_exec(__u64 flags)
{
    return (flags & (PROT_WRITE | PROT_EXEC)) == (PROT_WRITE | PROT_EXEC);
}

/* Regions noted in `mem_rwx` by every process: while none is, a change to a protection that is
 * not executable concerns no region and costs no map lookup. */
__u64 tc_rwx_noted = 0;

static __always_inline void tc_mem_forget(struct tc_mem_region_key *key, struct tc_mem_proc *p)
{
    if (bpf_map_delete_elem(&mem_rwx, key))
        return;
    __sync_fetch_and_add(&tc_rwx_noted, -1);
    if (p)
        __sync_fetch_and_add(&p->rwx_regions, -1);
}

/* A noted writable-and-executable region, or NULL (an entry of an earlier program of this tgid
 * is dropped). */
static __always_inline struct tc_mem_region *tc_mem_noted(struct tc_mem_region_key *key,
                                                          struct task_struct *task,
                                                          struct tc_mem_proc *p)
{
    struct tc_mem_region *r = bpf_map_lookup_elem(&mem_rwx, key);
    if (!r)
        return NULL;
    if (r->mm == (__u64)task->mm && r->exec_id == task->self_exec_id)
        return r;
    tc_mem_forget(key, p);
    return NULL;
}

static __always_inline void tc_mem_note(struct tc_mem_region_key *key, __u64 len,
                                        struct task_struct *task, struct tc_mem_proc *p)
{
    if (!p) {
        tc_mem_count(TC_MEMC_TABLE_FULL, 1);
        return;
    }
    struct tc_mem_region v = { .len = len, .mm = (__u64)task->mm, .exec_id = task->self_exec_id };
    bool known = bpf_map_lookup_elem(&mem_rwx, key) != NULL;
    if (bpf_map_update_elem(&mem_rwx, key, &v, BPF_ANY)) {
        tc_mem_count(TC_MEMC_TABLE_FULL, 1);
        return;
    }
    if (!known) {
        __sync_fetch_and_add(&p->rwx_regions, 1);
        __sync_fetch_and_add(&tc_rwx_noted, 1);
        tc_mem_count(TC_MEMC_RWX_TRACKED, 1);
    }
}

/* Tracee's rules, in its order (the later one wins). Only W_REM asks for a dump. */
static __always_inline __u32 tc_mem_alert(__u32 before, __u32 after)
{
    __u32 alert = TC_ALERT_NONE;
    if (!(before & PROT_EXEC) && (after & PROT_EXEC))
        alert = TC_ALERT_MPROT_X_ADD;
    if ((before & PROT_EXEC) && !(before & PROT_WRITE) && tc_mem_writable_exec(after))
        alert = TC_ALERT_MPROT_W_ADD;
    if ((before & PROT_WRITE) && (after & PROT_EXEC) && !(after & PROT_WRITE))
        alert = TC_ALERT_MPROT_W_REM;
    return alert;
}

/* At the syscall's entry, before the change: the region still holds what was written. The
 * previous protection comes from the VMA. A call that will fail with EINVAL (unaligned
 * address) changes nothing and is ignored. */
static __always_inline int tc_mem_mprotect(__u64 addr, __u64 len, __u64 prot, __u32 syscall)
{
    __u32 after = prot & TC_PROT_MASK;
    if ((addr & (TC_PAGE_SIZE - 1)) || len > TC_MAX_REGION)
        return 0;
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_mem_proc *q;
    if (!(after & PROT_EXEC)) {
        /* only a noted writable-and-executable region can matter: most calls stop here */
        if (!tc_rwx_noted)
            return 0;
        q = bpf_map_lookup_elem(&mem_procs, &tgid);
        if (!q || !q->rwx_regions)
            return 0;
    } else if ((q = bpf_map_lookup_elem(&mem_procs, &tgid)) &&
               q->exec_id == bpf_get_current_task_btf()->self_exec_id) {
        /* A process known to be in scope (its entry is its current program's) whose event
         * allowance is spent: the change is counted, not examined. The scope check and the
         * VMA lookup cost 750 ns of the 1.3 us a change took (bpf_stats, LuaJIT, 100,000
         * traces), and LuaJIT makes 44,000-51,000 of these changes a second. */
        tc_mem_refill(q);
        if (q->events < TC_NS) {
            tc_mem_skip(q, 1, 0, tc_page_up(len ?: TC_PAGE_SIZE), 1);
            return 0;
        }
    }
    if (!tc_in_scope())
        return 0;
    struct task_struct *task = bpf_get_current_task_btf();
    struct tc_mem_vma vma = {};
    if (bpf_find_vma(task, addr, tc_mem_vma_cb, &vma, 0))
        return 0;
    __u32 before = vma.flags & TC_PROT_MASK;
    __u32 alert = tc_mem_alert(before, after);
    struct tc_mem_region_key key = { .tgid = tgid, .addr = addr };
    if (!alert && !bpf_map_lookup_elem(&mem_rwx, &key))
        return 0;
    struct tc_mem_proc *p = tc_mem_proc(tgid);
    struct tc_mem_region *noted = tc_mem_noted(&key, task, p);
    if (noted && !tc_mem_writable_exec(before)) {
        tc_mem_forget(&key, p);   /* changed by a call we did not see as the region's */
        noted = NULL;
    }
    __u64 asked = len ?: TC_PAGE_SIZE;   /* Tracee's reading of len 0 */
    if (alert == TC_ALERT_MPROT_W_REM) {
        tc_mem_event(tgid, addr, asked, &vma, syscall, alert, before, after, TC_WANT_DUMP, true);
        if (noted)
            tc_mem_forget(&key, p);
        return 0;
    }
    if (noted) {
        /* changed again (still writable-and-executable, or no longer executable): its code */
        __u64 noted_len = noted->len;
        tc_mem_event(tgid, addr, noted_len, &vma, syscall, alert, before, after, TC_WANT_CONTENT,
                     true);
        if (!tc_mem_writable_exec(after))
            tc_mem_forget(&key, p);
        return 0;
    }
    if (alert)
        tc_mem_event(tgid, addr, asked, &vma, syscall, alert, before, after, TC_WANT_NONE, true);
    if (tc_mem_writable_exec(after))
        tc_mem_note(&key, asked, task, p);
    return 0;
}

/* mprotect and pkey_mprotect, whose first three arguments are the same: one program, which the
 * collector attaches to both sys_enter tracepoints (collector/probes.py SHARED_ENTERS); the
 * syscall number tells them apart: an int in the record (struct syscall_trace_enter), whose
 * other half of the `long id` BTF declares is padding, not zeroed. As two programs they took
 * 50-52 ms of verification each on 6.18. */
SEC("tp")
int tc_mprotect_enter(struct trace_event_raw_sys_enter *ctx)
{
    __u32 syscall = (int)ctx->id == NR_PKEY_MPROTECT ? TC_MEM_PKEY_MPROTECT : TC_MEM_MPROTECT;
    return tc_mem_mprotect(ctx->args[0], ctx->args[1], ctx->args[2], syscall);
}

/* A mapping writable and executable at once: an alert now, its bytes once written. */
static __always_inline int tc_mem_mmap(__u64 addr, __u64 len, __u64 prot)
{
    if (!tc_mem_writable_exec(prot) || !tc_in_scope())
        return 0;
    tc_obj_save(TC_KIND_MEM, NR_MMAP, addr, len, prot, 0);
    return 0;
}

static __always_inline int tc_mem_mmap_done(long ret)
{
    struct tc_obj_args a;
    if (!tc_obj_take(NR_MMAP, &a))
        return 0;
    if ((unsigned long)ret >= (unsigned long)-4095 || a.a1 > TC_MAX_REGION)
        return 0;   /* failed */
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_mem_proc *p = tc_mem_proc(tgid);
    struct tc_mem_vma vma = {};
    tc_mem_event(tgid, ret, a.a1, &vma, TC_MEM_MMAP, TC_ALERT_MMAP_W_X, 0,
                 a.a2 & TC_PROT_MASK, TC_WANT_NONE, true);
    struct tc_mem_region_key key = { .tgid = tgid, .addr = ret };
    tc_mem_note(&key, a.a1, bpf_get_current_task_btf(), p);
    return 0;
}

SEC("tp/syscalls/sys_enter_mmap")
int tc_mmap_enter(struct trace_event_raw_sys_enter *ctx)
{
    return tc_mem_mmap(ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tp/syscalls/sys_exit_mmap")
int tc_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    return tc_mem_mmap_done(ctx->ret);
}

/* Unmapping a noted region: its code, while it is still mapped. */
static __always_inline int tc_mem_munmap(__u64 addr)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_mem_proc *q = bpf_map_lookup_elem(&mem_procs, &tgid);
    if (!q || !q->rwx_regions)
        return 0;
    struct task_struct *task = bpf_get_current_task_btf();
    struct tc_mem_region_key key = { .tgid = tgid, .addr = addr };
    struct tc_mem_proc *p = tc_mem_proc(tgid);
    struct tc_mem_region *noted = tc_mem_noted(&key, task, p);
    if (!noted)
        return 0;
    __u64 len = noted->len;
    struct tc_mem_vma vma = {};
    if (!bpf_find_vma(task, key.addr, tc_mem_vma_cb, &vma, 0) && tc_mem_writable_exec(vma.flags))
        tc_mem_event(tgid, key.addr, len, &vma, TC_MEM_MUNMAP, TC_ALERT_NONE,
                     vma.flags & TC_PROT_MASK, 0, TC_WANT_CONTENT, true);
    tc_mem_forget(&key, p);
    return 0;
}

SEC("tp/syscalls/sys_enter_munmap")
int tc_munmap_enter(struct trace_event_raw_sys_enter *ctx)
{
    return tc_mem_munmap(ctx->args[0]);
}

struct tc_mem_exit {
    __u32 tgid;
    __u32 n;
    __u64 mm;
    __u64 exec_id;
};

/* Each noted region of the exiting process (at most TC_EXIT_REGIONS dumped, the others
 * counted), dumped here and forgotten. */
static long tc_mem_exit_region(struct bpf_map *map, struct tc_mem_region_key *key,
                               struct tc_mem_region *r, struct tc_mem_exit *c)
{
    if (key->tgid != c->tgid)
        return 0;
    __u64 addr = key->addr, len = r->len;
    bool current = r->mm == c->mm && r->exec_id == c->exec_id;
    if (!bpf_map_delete_elem(map, key))
        __sync_fetch_and_add(&tc_rwx_noted, -1);
    if (!current)
        return 0;
    if (c->n >= TC_EXIT_REGIONS) {
        tc_mem_skip(bpf_map_lookup_elem(&mem_procs, &c->tgid), 0, 1, tc_page_up(len), 0);
        return 0;
    }
    c->n++;
    struct tc_mem_vma vma = {};
    if (bpf_find_vma(bpf_get_current_task_btf(), addr, tc_mem_vma_cb, &vma, 0) ||
        !tc_mem_writable_exec(vma.flags))
        return 0;
    __u32 prot = vma.flags & TC_PROT_MASK;
    tc_mem_event(c->tgid, addr, len, &vma, TC_MEM_EXIT, TC_ALERT_NONE, prot, prot,
                 TC_WANT_CONTENT, false);
    return 0;
}

/* The last thread of a process exits: its noted regions' code, and what its allowances skipped
 * since its last event. On this kernel the tracepoint fires before exit_mm(): the memory is
 * still there (measured: a marker written before exit read back here). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tc_mem_exit, struct task_struct *task)
{
    if (BPF_CORE_READ(task, signal, live.counter))
        return 0;   /* not the process's last thread */
    __u32 tgid = task->tgid;
    struct tc_mem_proc *p = bpf_map_lookup_elem(&mem_procs, &tgid);
    if (!p)
        return 0;
    if (p->rwx_regions && task->mm) {
        struct tc_mem_exit c = {
            .tgid = tgid, .mm = (__u64)task->mm, .exec_id = task->self_exec_id,
        };
        bpf_for_each_map_elem(&mem_rwx, tc_mem_exit_region, &c, 0);
        p = bpf_map_lookup_elem(&mem_procs, &tgid);
        if (!p)
            return 0;
    }
    struct tc_mem_scratch *s;
    if ((p->skipped_events || p->skipped_dumps) && (s = mem_scratch_slot())) {
        __builtin_memset(&s->ev, 0, sizeof(s->ev));
        tc_fill_hdr(&s->ev.h, TC_REC_MEM_EVENT);
        s->ev.obj_id = __sync_fetch_and_add(&io_seq, 1);
        s->ev.syscall = TC_MEM_EXIT;
        tc_mem_send_event(&s->ev, p);
    }
    bpf_map_delete_elem(&mem_procs, &tgid);
    return 0;
}

#endif
