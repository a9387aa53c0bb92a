/* Writes through shared file mappings (--capture write): no syscall carries these bytes, the
 * process stores them into page-cache pages mapped into its memory. The hardware sets the
 * dirty bit of a page's entry at the first store; writeback (msync, the flusher) clears it
 * when it writes the page to the file. So at the moments a mapping's writes leave the
 * process's view (msync, munmap, the last thread's exit) its dirty pages are exactly what it
 * wrote since the last writeback: each run of them goes out as an ordinary file write of the
 * mapped file (tc_io_done) at the run's file offset, its bytes copied from the mapping itself
 * (which are the page cache's), its syscall saying which moment it was (msync, munmap, exit).
 *
 * What is not seen: pages the flusher wrote back before the moment (dirty_expire_centisecs,
 * 30 s by default, or memory pressure) lost their dirty bit and are not sent; mappings a
 * child inherited across fork are sent at its msync and munmap but not at its exit; a
 * mapping dropped by execve is not sent. Without the direct map (pagewalk.bpf.h: another
 * layout or architecture) no dirty bit can be read and nothing is sent. */
#ifndef TRACECAP_MAPPINGS_BPF_H
#define TRACECAP_MAPPINGS_BPF_H

#define TC_VM_SHARED 0x08ull        /* include/linux/mm.h: macros, so not in BTF */
#define TC_VM_MAYWRITE 0x20ull
#define TC_PTE_DIRTY (1ull << 6)
#define TC_PTE_SAVED_DIRTY (1ull << 57)  /* a write-protected dirty entry, with user shadow stacks */
#define TC_MAP_PAGE 4096ull
#define TC_MAP_SLOTS 8              /* mappings remembered per process for its exit */
#define TC_MAP_VMAS 4               /* mappings an msync or munmap range may span */
#define TC_MAP_MAX_PAGES (1u << 20) /* pages looked at per mapping: 4 GiB */

/* Per process in scope: the start of each shared writable file mapping it made, to find them
 * at its exit (0: a free slot). Deleted at the exit. */
struct tc_map_slots {
    __u64 addr[TC_MAP_SLOTS];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct tc_map_slots);
} map_shared SEC(".maps");

struct tc_map_vma {
    __u64 start;
    __u64 end;
    __u64 pgoff;
    __u64 flags;
    __u64 file;
};

static long tc_map_vma_cb(struct task_struct *task, struct vm_area_struct *vma,
                          struct tc_map_vma *c)
{
    c->start = vma->vm_start;
    c->end = vma->vm_end;
    c->pgoff = vma->vm_pgoff;
    c->flags = vma->vm_flags;
    c->file = (__u64)vma->vm_file;
    return 0;
}

/* The current process's mapping at `addr` in `v`: -1 if there is none, 1 if it is one whose
 * writes reach a regular file (shared, writable now or after an mprotect: VM_MAYWRITE), 0 for
 * any other. */
static __always_inline int tc_map_find(__u64 addr, struct tc_map_vma *v)
{
    if (bpf_find_vma(bpf_get_current_task_btf(), addr, tc_map_vma_cb, v, 0))
        return -1;
    if (!v->file ||
        (v->flags & (TC_VM_SHARED | TC_VM_MAYWRITE)) != (TC_VM_SHARED | TC_VM_MAYWRITE))
        return 0;
    struct file *f = (struct file *)v->file;
    __u32 mode = BPF_CORE_READ(f, f_inode, i_mode);
    return (mode & S_IFMT) == S_IFREG;
}

/* One mapping's pages, one a step; a run of dirty ones is sent when it ends. */
struct tc_map_walk {
    __u64 va;                /* the page looked at */
    __u64 end;
    __u64 run;               /* the first page of the current run of dirty pages, 0: none */
    __u64 vm_start;
    __u64 file_base;         /* the file offset of vm_start */
    __u64 file;
    __u64 pgd;
    __u64 dmap;
    __u32 tid;
    __u16 syscall;
};

static __always_inline void tc_map_send(struct tc_map_walk *w, __u64 run_end)
{
    struct file *f = (struct file *)w->file;
    __u64 pos = w->file_base + (w->run - w->vm_start);
    __s64 size = BPF_CORE_READ(f, f_inode, i_size);
    __u64 len = run_end - w->run;
    if ((__s64)pos >= size)  /* a page past the end is never written back */
        return;
    if (pos + len > (__u64)size)
        len = size - pos;
    struct tc_io_args a = {
        .buf = w->run, .count = len, .pos = pos, .fd = -1, .syscall = w->syscall,
        .direction = TC_DIR_WRITE,
    };
    tc_io_done(&a, f, len, w->tid);
}

static long tc_map_page(__u32 i, struct tc_map_walk *w)
{
    bool dirty = false;
    if (w->va < w->end) {
        __u64 e = 0;
        __u32 shift = 12;
        dirty = tc_walk_leaf(w->dmap, w->pgd, w->va, tc_dmap_levels, &e, &shift) ==
                    TC_WALK_PRESENT &&
                (e & (TC_PTE_DIRTY | TC_PTE_SAVED_DIRTY));
    }
    if (dirty && !w->run)
        w->run = w->va;
    if (!dirty && w->run) {
        tc_map_send(w, w->va);
        w->run = 0;
    }
    if (w->va >= w->end)
        return 1;
    w->va += TC_MAP_PAGE;
    return 0;
}

/* Send the dirty pages of [lo, hi) in mapping `v`. */
static __always_inline void tc_map_walk(const struct tc_map_vma *v, __u64 lo, __u64 hi,
                                        __u16 syscall, __u64 pgd)
{
    __u64 dmap = tc_dmap(pgd);
    if (!dmap)
        return;
    struct tc_map_walk w = {
        .va = (lo > v->start ? lo : v->start) & ~(TC_MAP_PAGE - 1),
        .end = hi < v->end ? hi : v->end,
        .vm_start = v->start, .file_base = v->pgoff * TC_MAP_PAGE, .file = v->file,
        .pgd = pgd, .dmap = dmap, .tid = (__u32)bpf_get_current_pid_tgid(), .syscall = syscall,
    };
    bpf_loop(TC_MAP_MAX_PAGES + 1, tc_map_page, &w, 0);
}

/* The mappings to look at, one a step of bpf_loop: tc_map_walk's callback (tc_io_done) is then
 * verified once per program, not once per unrolled step (measured on 6.18 with the write
 * filters on: the four mapping programs took 2.3-2.8 s of the collector's 4.1-4.6 s load when
 * msync/munmap walked 4 mappings and the exit 8 in unrolled loops). */
struct tc_map_each {
    __u64 at;                /* msync/munmap: the next address; the exit: unused */
    __u64 end;
    __u64 pgd;
    __u16 syscall;
    struct tc_map_slots slots;   /* the exit's remembered mappings */
};

/* msync and munmap: the next mapping of [at, end); stop at a hole (munmap and msync would
 * fail with ENOMEM) or the end. */
static long tc_map_range_step(__u32 i, struct tc_map_each *e)
{
    struct tc_map_vma v = {};
    if (e->at >= e->end)
        return 1;
    int found = tc_map_find(e->at, &v);
    if (found < 0)
        return 1;
    if (found)
        tc_map_walk(&v, e->at, e->end, e->syscall, e->pgd);
    e->at = v.end;
    return 0;
}

/* msync and munmap: the shared file mappings in [addr, addr + len), while they are mapped. */
static __always_inline int tc_map_range(__u64 addr, __u64 len, __u16 syscall)
{
    if (!cfg.filters[TC_DIR_WRITE].enabled || !tc_in_scope())
        return 0;
    struct tc_map_each e = {
        .at = addr, .end = addr + len, .syscall = syscall,
        .pgd = (__u64)BPF_CORE_READ(bpf_get_current_task_btf(), mm, pgd),
    };
    bpf_loop(TC_MAP_VMAS, tc_map_range_step, &e, 0);
    return 0;
}

SEC("tp/syscalls/sys_enter_msync")
int tc_map_msync(struct trace_event_raw_sys_enter *ctx)
{
    return tc_map_range(ctx->args[0], ctx->args[1], TC_SYS_MSYNC);
}

SEC("tp/syscalls/sys_enter_munmap")
int tc_map_munmap(struct trace_event_raw_sys_enter *ctx)
{
    __u64 addr = ctx->args[0], len = ctx->args[1];
    tc_map_range(addr, len, TC_SYS_MUNMAP);
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_map_slots *s = bpf_map_lookup_elem(&map_shared, &tgid);
    if (!s)
        return 0;
    for (int i = 0; i < TC_MAP_SLOTS; i++)
        if (s->addr[i] >= addr && s->addr[i] < addr + len)
            s->addr[i] = 0;
    return 0;
}

/* A new shared writable file mapping of a process in scope: remembered for its exit. */
SEC("tp/syscalls/sys_exit_mmap")
int tc_map_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u64 addr = ctx->ret;
    if ((__s64)addr < 0 || !cfg.filters[TC_DIR_WRITE].enabled || !tc_in_scope())
        return 0;
    struct tc_map_vma v = {};
    if (tc_map_find(addr, &v) != 1)
        return 0;
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_map_slots *s = bpf_map_lookup_elem(&map_shared, &tgid);
    if (!s) {
        struct tc_map_slots init = { .addr = { addr } };
        if (bpf_map_update_elem(&map_shared, &tgid, &init, BPF_NOEXIST))
            tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
        return 0;
    }
    for (int i = 0; i < TC_MAP_SLOTS; i++) {
        if (!s->addr[i] || s->addr[i] == addr) {
            s->addr[i] = addr;
            return 0;
        }
    }
    tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
    return 0;
}

/* The exit: remembered mapping `i`, if it is still a shared writable file mapping. */
static long tc_map_exit_step(__u32 i, struct tc_map_each *e)
{
    struct tc_map_vma v = {};
    __u64 addr = e->slots.addr[i & (TC_MAP_SLOTS - 1)];
    if (addr && tc_map_find(addr, &v) == 1)
        tc_map_walk(&v, v.start, v.end, e->syscall, e->pgd);
    return 0;
}

/* The last thread of a process exits: its remembered mappings are still mapped here (the
 * tracepoint fires before exit_mm() on this kernel, see mem.bpf.h), and their dirty pages are
 * sent before the unmapping writes them back. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tc_map_exit, struct task_struct *task)
{
    if (BPF_CORE_READ(task, signal, live.counter))
        return 0;   /* not the process's last thread */
    __u32 tgid = task->tgid;
    struct tc_map_slots *sp = bpf_map_lookup_elem(&map_shared, &tgid);
    if (!sp)
        return 0;
    struct tc_map_each e = { .slots = *sp, .syscall = TC_SYS_EXIT };
    bpf_map_delete_elem(&map_shared, &tgid);
    if (!task->mm)
        return 0;
    e.pgd = (__u64)BPF_CORE_READ(task, mm, pgd);
    bpf_loop(TC_MAP_SLOTS, tc_map_exit_step, &e, 0);
    return 0;
}

#endif
