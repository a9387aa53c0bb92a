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
#define TC_ENOENT 2                 /* bpf_find_vma: no mapping there (a macro, not in BTF) */
#define NR_MUNMAP 11                /* x86-64 */

/* Per process in scope: each shared writable file mapping it made (start 0: a free slot), to
 * find them at its exit and to name the file should its memory map be locked when an msync or
 * munmap comes (tc_map_unwalked). Numbers only, no struct file pointer: a mapping replaced
 * unseen names at worst its old file, never freed memory. Deleted at the exit. */
struct tc_map_slot {
    __u64 start;
    __u64 end;
    __u64 inode;
    __u32 dev;
    __u32 wanted;            /* a write to it passes the write filters (tc_map_wanted) */
};

struct tc_map_slots {
    struct tc_map_slot s[TC_MAP_SLOTS];
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

/* A remembered mapping lost writes of unknown size: noted in file_drops for its file, if the
 * write filters want it. */
static __always_inline void tc_map_lost(const struct tc_map_slot *sl)
{
    if (!sl->wanted)
        return;
    struct tc_drop_key key = {
        .inode = sl->inode, .cgroup_id = bpf_get_current_cgroup_id(), .dev = sl->dev,
        .direction = TC_DIR_WRITE,
    };
    tc_note_drop(&key, false, 0, 0, true);
}

/* [lo, hi) of the current process could not be looked at, so writes through a mapping there
 * may go unsent: bpf_find_vma only trylocks the memory map (-EBUSY while another thread holds
 * it for writing), or the page tables cannot be read (no direct map found). Counted when a
 * file mapping may have been missed (`count`, or the process made one while traced); each
 * remembered mapping of a wanted file it overlaps is noted in file_drops as having lost
 * writes of unknown size, so the collector's notice marks its artifact incomplete
 * (`lost_unsized`) instead of letting it say complete. */
static __always_inline void tc_map_unwalked(__u64 lo, __u64 hi, bool count)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_map_slots *sp = bpf_map_lookup_elem(&map_shared, &tgid);
    if (count || sp)
        tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_MAP_UNWALKED, 1);
    if (!sp)
        return;
    for (int i = 0; i < TC_MAP_SLOTS; i++) {
        struct tc_map_slot *sl = &sp->s[i];
        if (sl->start && sl->end > lo && sl->start < hi)
            tc_map_lost(sl);
    }
}

/* Whether a write through a mapping of `f` passes the write filters that tc_io_transfer
 * applies, as far as they can be told without its bytes: a descriptor filter never (a mapping
 * is written through none), a type filter when it takes regular files or knows `f` as ELF. */
static __always_inline bool tc_map_wanted(struct file *f)
{
    const volatile struct tc_file_filter *ff = &cfg.filters[TC_DIR_WRITE];
    if (ff->fds)
        return false;
    struct tc_event_scratch *s = event_scratch_slot();
    if (!s)
        return false;
    struct tc_file_event *ev = &s->ev;
    ev->flags = 0;
    ev->path_len = 0;
    ev->path[0] = 0;
    ev->inode = BPF_CORE_READ(f, f_inode, i_ino);
    ev->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
    if (ff->types && !(ff->types & TC_TYPE_REGULAR)) {
        struct tc_dev_ino key = { .inode = ev->inode, .dev = ev->dev };
        if (!(ff->types & TC_TYPE_ELF) || !bpf_map_lookup_elem(&elf_files, &key))
            return false;
    }
    tc_build_path(s, f);
    return tc_path_allowed(ev, TC_DIR_WRITE);
}

enum { TC_MAP_UNKNOWN = -2, TC_MAP_NONE = -1, TC_MAP_OTHER = 0, TC_MAP_FILE = 1 };

/* The current process's mapping at `addr` in `v`: TC_MAP_FILE if it is one whose writes reach
 * a regular file (shared, writable now or after an mprotect: VM_MAYWRITE), TC_MAP_OTHER for
 * any other, TC_MAP_NONE if nothing is mapped there, TC_MAP_UNKNOWN if it could not be
 * looked up (the caller counts it where a file mapping may have been missed). */
static __always_inline int tc_map_find(__u64 addr, struct tc_map_vma *v)
{
    long err = bpf_find_vma(bpf_get_current_task_btf(), addr, tc_map_vma_cb, v, 0);
    if (err)
        return err == -TC_ENOENT ? TC_MAP_NONE : TC_MAP_UNKNOWN;
    if (!v->file ||
        (v->flags & (TC_VM_SHARED | TC_VM_MAYWRITE)) != (TC_VM_SHARED | TC_VM_MAYWRITE))
        return TC_MAP_OTHER;
    struct file *f = (struct file *)v->file;
    __u32 mode = BPF_CORE_READ(f, f_inode, i_mode);
    return (mode & S_IFMT) == S_IFREG ? TC_MAP_FILE : TC_MAP_OTHER;
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

/* One msync, munmap or exit: the mapping being walked and where the next one is. One per CPU,
 * and one bpf_loop whose step either starts the next mapping or looks at one page: before 6.13
 * the verifier limits a call chain's stack to 512 bytes (frames rounded up to 32), and with a
 * loop over mappings around a loop over pages, their contexts on the stack, the chain
 * tc_map_exit -> tc_map_exit_step -> tc_map_page -> tc_emit_chunk took 704 (measured on 6.18 at
 * log level 4; tc_io_done's frame alone is about 300). bpf_loop's context must be stack
 * memory, so the step finds the state here instead. tc_io_done stays in a callback, verified
 * once per program (unrolled loops over the mappings took 2.3-2.8 s of the collector's 4.1-4.6 s
 * load on 6.18 with the write filters on). */
struct tc_map_state {
    struct tc_map_walk w;
    struct tc_io_args a;     /* tc_map_send's request */
    struct tc_map_slots slots;   /* the exit's remembered mappings */
    __u64 at;                /* msync/munmap: the next address; the exit: the next slot */
    __u64 end;
    __u64 pgd;
    __u32 mappings;          /* mappings looked at */
    __u32 walking;           /* 1: `w` is a mapping not walked to its end yet */
    __u16 syscall;
    __u8 exit;               /* 1: the exit's slots, 0: msync/munmap's range [at, end) */
};

TC_SLOT(map_scratch, struct tc_map_state)


static __always_inline void tc_map_send(struct tc_map_state *m, __u64 run_end)
{
    struct tc_map_walk *w = &m->w;
    struct file *f = (struct file *)w->file;
    __u64 pos = w->file_base + (w->run - w->vm_start);
    __s64 size = BPF_CORE_READ(f, f_inode, i_size);
    __u64 len = run_end - w->run;
    if ((__s64)pos >= size)  /* a page past the end is never written back */
        return;
    if (pos + len > (__u64)size)
        len = size - pos;
    m->a = (struct tc_io_args){
        .buf = w->run, .count = len, .pos = pos, .fd = -1, .syscall = w->syscall,
        .direction = TC_DIR_WRITE,
    };
    tc_io_done(&m->a, f, len, w->tid);
}

/* One page of the mapping being walked; a run of dirty ones is sent when it ends. True once
 * the mapping is done. */
static __always_inline bool tc_map_page(struct tc_map_state *m)
{
    struct tc_map_walk *w = &m->w;
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
        tc_map_send(m, w->va);
        w->run = 0;
    }
    if (w->va >= w->end)
        return true;
    w->va += TC_MAP_PAGE;
    return false;
}

/* Start walking [lo, hi) of mapping `v` (at most TC_MAP_MAX_PAGES of it); false if its page
 * table cannot be read. */
static __always_inline bool tc_map_start(struct tc_map_state *m, const struct tc_map_vma *v,
                                         __u64 lo, __u64 hi)
{
    __u64 dmap = tc_dmap(m->pgd);
    if (!dmap) {
        tc_map_unwalked(lo, hi, true);
        return false;
    }
    __u64 va = (lo > v->start ? lo : v->start) & ~(TC_MAP_PAGE - 1);
    __u64 end = hi < v->end ? hi : v->end;
    if (end > va && end - va > TC_MAP_MAX_PAGES * TC_MAP_PAGE)
        end = va + TC_MAP_MAX_PAGES * TC_MAP_PAGE;
    m->w = (struct tc_map_walk){
        .va = va, .end = end, .vm_start = v->start, .file_base = v->pgoff * TC_MAP_PAGE,
        .file = v->file, .pgd = m->pgd, .dmap = dmap, .tid = (__u32)bpf_get_current_pid_tgid(),
        .syscall = m->syscall,
    };
    return true;
}

/* The next mapping to walk: msync and munmap take the mappings of [at, end) in order, stopping
 * at a hole (the syscall would fail with ENOMEM) or the end; the exit its remembered ones that
 * are still shared writable file mappings. False when there are no more. */
static __always_inline bool tc_map_next(struct tc_map_state *m)
{
    struct tc_map_vma v = {};
    if (m->exit) {
        if (m->at >= TC_MAP_SLOTS)
            return false;
        struct tc_map_slot *sl = &m->slots.s[m->at & (TC_MAP_SLOTS - 1)];
        m->at++;
        int found = sl->start ? tc_map_find(sl->start, &v) : TC_MAP_NONE;
        if (found == TC_MAP_FILE)
            m->walking = tc_map_start(m, &v, v.start, v.end);
        else if (found == TC_MAP_UNKNOWN) {   /* a mapping it made; its entry is gone already */
            tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_MAP_UNWALKED, 1);
            tc_map_lost(sl);
        }
        return true;
    }
    if (m->at >= m->end || m->mappings >= TC_MAP_VMAS)
        return false;
    m->mappings++;
    int found = tc_map_find(m->at, &v);
    if (found == TC_MAP_UNKNOWN) {
        /* msync is only ever about file mappings; a munmap counts only when the process made
         * a shared writable one while traced (else every busy anonymous munmap of a
         * multithreaded program would, and never a file write missed) */
        tc_map_unwalked(m->at, m->end, m->syscall == TC_SYS_MSYNC);
        return false;
    }
    if (found == TC_MAP_NONE)
        return false;
    if (found == TC_MAP_FILE)
        m->walking = tc_map_start(m, &v, m->at, m->end);
    m->at = v.end;
    return true;
}

static long tc_map_step(__u32 i, void *unused)
{
    struct tc_map_state *m = map_scratch_slot();
    if (!m)
        return 1;
    if (m->walking) {
        if (tc_map_page(m))
            m->walking = 0;
        return 0;
    }
    return !tc_map_next(m);
}

/* Steps: per mapping one to find it and one per page plus one to send the last run. The exit's
 * worst case (TC_MAP_SLOTS mappings of TC_MAP_MAX_PAGES) is 16 over bpf_loop's limit of 1 << 23:
 * the last of 8 mappings of 4 GiB each would lose its last 16 pages. */
#define TC_MAP_STEPS(mappings) \
    ((mappings) * (TC_MAP_MAX_PAGES + 2) > (1u << 23) ? (1u << 23) \
                                                      : (mappings) * (TC_MAP_MAX_PAGES + 2))

/* msync and munmap: the shared file mappings in [addr, addr + len), while they are mapped. */
static __always_inline int tc_map_range(__u64 addr, __u64 len, __u16 syscall)
{
    if (!cfg.filters[TC_DIR_WRITE].enabled || !tc_in_scope())
        return 0;
    struct tc_map_state *m = map_scratch_slot();
    if (!m)
        return 0;
    m->at = addr;
    m->end = addr + len;
    m->syscall = syscall;
    m->pgd = (__u64)BPF_CORE_READ(bpf_get_current_task_btf(), mm, pgd);
    m->mappings = 0;
    m->walking = 0;
    m->exit = 0;
    bpf_loop(TC_MAP_STEPS(TC_MAP_VMAS), tc_map_step, NULL, 0);
    return 0;
}

/* munmap: the mappings remembered in [addr, addr + len) are forgotten (after its dirty pages). */
static __always_inline void tc_map_forget(__u64 addr, __u64 len)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_map_slots *s = bpf_map_lookup_elem(&map_shared, &tgid);
    if (!s)
        return;
    for (int i = 0; i < TC_MAP_SLOTS; i++)
        if (s->s[i].start >= addr && s->s[i].start < addr + len)
            s->s[i].start = 0;
}

/* msync and munmap (the range's dirty pages, and for munmap its mappings forgotten): one
 * program, which the collector attaches to both sys_enter tracepoints (collector/probes.py
 * SHARED_ENTERS); the syscall number tells them apart (as an int: see tc_mprotect_enter), and
 * the range walk is inlined once. As two programs they took 37 ms of verification each on
 * 6.18. */
SEC("tp")
int tc_map_msync_munmap(struct trace_event_raw_sys_enter *ctx)
{
    bool unmap = (int)ctx->id == NR_MUNMAP;
    tc_map_range(ctx->args[0], ctx->args[1], unmap ? TC_SYS_MUNMAP : TC_SYS_MSYNC);
    if (unmap)
        tc_map_forget(ctx->args[0], ctx->args[1]);
    return 0;
}

/* A new mapping of a process in scope: remembered mappings it replaced (MAP_FIXED) are
 * forgotten, and a shared writable file mapping is remembered. One that could not be looked up
 * is neither (nothing tells whether it was a file mapping): not counted. */
static __always_inline int tc_map_mapped(long ret)
{
    __u64 addr = ret;
    if ((__s64)addr < 0 || !cfg.filters[TC_DIR_WRITE].enabled || !tc_in_scope())
        return 0;
    struct tc_map_vma v = {};
    int found = tc_map_find(addr, &v);
    if (found < TC_MAP_OTHER)
        return 0;
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tc_map_slots *s = bpf_map_lookup_elem(&map_shared, &tgid);
    if (s)
        for (int i = 0; i < TC_MAP_SLOTS; i++)
            if (s->s[i].start && s->s[i].start < v.end && s->s[i].end > v.start)
                s->s[i].start = 0;
    if (found != TC_MAP_FILE)
        return 0;
    struct file *f = (struct file *)v.file;
    struct tc_map_slot slot = {
        .start = v.start, .end = v.end, .inode = BPF_CORE_READ(f, f_inode, i_ino),
        .dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev), .wanted = tc_map_wanted(f),
    };
    if (!s) {
        struct tc_map_state *m = map_scratch_slot();   /* the new entry, built off the stack */
        if (!m)
            return 0;
        __builtin_memset(&m->slots, 0, sizeof(m->slots));
        m->slots.s[0] = slot;
        if (bpf_map_update_elem(&map_shared, &tgid, &m->slots, BPF_NOEXIST))
            tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
        return 0;
    }
    for (int i = 0; i < TC_MAP_SLOTS; i++) {
        if (!s->s[i].start) {
            s->s[i] = slot;
            return 0;
        }
    }
    tc_count(TC_DIR_WRITE * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
    return 0;
}

SEC("tp/syscalls/sys_exit_mmap")
int tc_map_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    return tc_map_mapped(ctx->ret);
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
    struct tc_map_state *m = map_scratch_slot();
    if (!m) {
        bpf_map_delete_elem(&map_shared, &tgid);
        return 0;
    }
    m->slots = *sp;
    bpf_map_delete_elem(&map_shared, &tgid);
    if (!task->mm)
        return 0;
    m->at = 0;
    m->syscall = TC_SYS_EXIT;
    m->pgd = (__u64)BPF_CORE_READ(task, mm, pgd);
    m->walking = 0;
    m->exit = 1;
    bpf_loop(TC_MAP_STEPS(TC_MAP_SLOTS), tc_map_step, NULL, 0);
    return 0;
}

#endif
