/* Written and read file contents (--capture write / read).
 *
 * sys_enter_* saves the arguments per thread; sys_exit_* keeps only successful calls and copies
 * exactly the bytes transferred (the return value), walking iovecs for the vector calls. Each
 * syscall gives one tc_file_event (who, which file, where) and then tc_file_data chunks with
 * the bytes, so a lost chunk is a known hole rather than a silent one. */
#ifndef TRACECAP_FILE_IO_BPF_H
#define TRACECAP_FILE_IO_BPF_H

#define TC_MAX_DEPTH 32          /* dentry levels walked to build a path */
#define TC_PATH_MASK (TC_PATH_BUF - 1)

struct tc_io_args {
    __u64 buf;                   /* user buffer, or the iovec array */
    __u64 count;                 /* bytes asked, or the iovec count */
    __s64 pos;                   /* explicit offset (p* calls), -1 for the file position */
    __s32 fd;
    __u16 syscall;
    __u8 direction;
    __u8 is_vec;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct tc_io_args);
} io_pending SEC(".maps");

struct tc_event_scratch {
    struct tc_file_event ev;
    struct tc_xfer x;            /* right after ev: a transfer's record is ev and x, sent as one */
    const unsigned char *names[TC_MAX_DEPTH];
    /* names[] filled by tc_walk_step. Kept here rather than in the walk's context on the
     * stack: a stack value indexing names[] is tracked exactly, so the verifier walked the
     * callback once per depth (134 times, 10,000 of tc_exit_io's 44,107 processed
     * instructions); read from a map value it is any number, and one pass proves the step. */
    __u32 depth;
};
_Static_assert(__builtin_offsetof(struct tc_event_scratch, x) ==
                   __builtin_offsetof(struct tc_file_xfer, x),
               "a transfer is sent from the event scratch as one tc_file_xfer");

TC_SLOT(event_scratch, struct tc_event_scratch)

struct tc_dev_ino { __u64 inode; __u32 dev; __u32 _pad; };

#define TC_CONT_REFRESH_NS 1000000000ULL  /* a full event at least this often per stream */

/* Per thread: its last syscall whose record reached the ring buffer, so that the next one on
 * the same open file can be sent as a short tc_file_cont. LRU: exited threads age out. */
struct tc_io_stream {
    __u64 file;              /* the struct file */
    __u64 end;               /* file offset after the last syscall */
    __u64 io_id;             /* the last syscall's */
    __u64 full_ts;           /* when this stream's last full event was sent */
    __u64 inode;
    __u64 cgroup_id;
    __u64 comm[2];
    __u32 pid;
    __u32 uid;
    __u32 dev;
    __u32 generation;
    __s32 fd;
    __u16 syscall;
    __u8 direction;
    __u8 _pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct tc_io_stream);
} io_streams SEC(".maps");

/* Two halves of 16,384 entries (tc_drop_key.side): the collector drains, every second, the
 * half that stopped taking losses a second before, then makes it the one that takes them. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 32768);
    __type(key, struct tc_drop_key);
    __type(value, struct tc_drop_val);
} file_drops SEC(".maps");

/* Which half of file_drops takes new losses (0 or 1), set by the collector. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} drop_side SEC(".maps");

/* `key`'s entry in file_drops, made if need be; NULL when the table is full (counted). */
static __always_inline struct tc_drop_val *tc_drop_entry(struct tc_drop_key *key, bool append)
{
    __u32 zero = 0;
    __u32 *side = bpf_map_lookup_elem(&drop_side, &zero);
    key->side = side ? *side & 1 : 0;
    struct tc_drop_val *v = bpf_map_lookup_elem(&file_drops, key);
    if (v)
        return v;
    struct tc_drop_val init = { .lo = ~0ull, .append = append };
    if (bpf_map_update_elem(&file_drops, key, &init, BPF_NOEXIST) &&
        bpf_map_update_elem(&file_drops, key, &init, BPF_EXIST)) {
        tc_count(key->direction * TC_CNT_PER_KIND + TC_CNT_DROP_TABLE_FULL, 1);
        return NULL;
    }
    return bpf_map_lookup_elem(&file_drops, key);
}

/* Remember that `key`'s file lost a syscall's bytes: `ret` bytes at `pos`, or with `unsized`
 * a transfer whose byte count is unknown (only its file is known). */
static __always_inline void tc_note_drop(struct tc_drop_key *key, bool append, __u64 pos,
                                         __u64 ret, bool unsized)
{
    struct tc_drop_val *v = tc_drop_entry(key, append);
    if (!v)
        return;
    __sync_fetch_and_add(&v->ios, 1);
    if (unsized) {
        __sync_fetch_and_add(&v->unsized, 1);
        return;
    }
    __sync_fetch_and_add(&v->bytes, ret);
    if (pos < v->lo)
        v->lo = pos;
    if (pos + ret > v->hi)
        v->hi = pos + ret;
}

/* Remember what a syscall whose event was dropped did to its file: `ret` bytes at ev->pos,
 * or with `unsized` a transfer whose byte count could not be read (only its file is known). */
static __always_inline void tc_note_dropped_io(struct tc_file_event *ev, __u64 ret, bool unsized)
{
    struct tc_drop_key key = {
        .inode = ev->inode, .cgroup_id = ev->h.cgroup_id, .dev = ev->dev,
        .direction = ev->direction,
    };
    tc_note_drop(&key, !!(ev->flags & TC_EV_APPEND), ev->pos, ret, unsized);
}

/* Files whose content starts with an ELF header, for write:type=elf / read:type=elf. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, struct tc_dev_ino);
    __type(value, __u8);
} elf_files SEC(".maps");


static __always_inline int tc_io_enter(struct trace_event_raw_sys_enter *ctx, __u16 sc,
                                       __u8 dir, __u8 is_vec, __s64 pos)
{
    if (!tc_in_scope())
        return 0;
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_io_args a = {
        .buf = ctx->args[1], .count = ctx->args[2], .pos = pos,
        .fd = (__s32)ctx->args[0], .syscall = sc, .direction = dir, .is_vec = is_vec,
    };
    if (bpf_map_update_elem(&io_pending, &tid, &a, BPF_ANY))
        tc_count(dir * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
    return 0;
}

static __always_inline struct file *tc_fd_file(__s32 fd)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
    struct file **fds = BPF_CORE_READ(fdt, fd);
    struct file *f = NULL;
    if (fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
        return NULL;
    bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xfffff]);
    return f;
}

/* Is `f` installed as fd 0, 1 or 2 (per the `fds` bits) of the current task? */
static __always_inline bool tc_is_std_fd(struct file *f, __u32 fds)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct file **arr = BPF_CORE_READ(t, files, fdt, fd);
    for (int i = 0; i < 3; i++) {
        struct file *g = NULL;
        if (!(fds & (1u << i)))
            continue;
        bpf_probe_read_kernel(&g, sizeof(g), &arr[i]);
        if (g == f)
            return true;
    }
    return false;
}

struct tc_walk_ctx {
    struct dentry *d;
    struct mount *mnt;
};

/* One step up the dentry tree; at a mount's root, continue from its mount point. */
static long tc_walk_step(__u32 i, struct tc_walk_ctx *w)
{
    struct tc_event_scratch *s = event_scratch_slot();
    if (!s)
        return 1;
    struct mount *mnt = w->mnt;
    struct dentry *d = w->d;
    struct dentry *root = BPF_CORE_READ(mnt, mnt.mnt_root);
    if (d == root) {
        struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
        if (parent == mnt)
            return 1;
        w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
        w->mnt = parent;
        return 0;
    }
    struct dentry *up = BPF_CORE_READ(d, d_parent);
    if (up == d)
        return 1;
    __u32 n = s->depth;
    if (n >= TC_MAX_DEPTH) {
        s->ev.flags |= TC_EV_PATH_TRUNCATED;
        return 1;
    }
    s->names[tc_bound(n, TC_MAX_DEPTH - 1)] = BPF_CORE_READ(d, d_name.name);
    s->depth = n + 1;
    w->d = up;
    return 0;
}

struct tc_path_ctx {
    __u32 n;
    __u32 pos;
};

/* Append the i-th component from the top: "/" + name. */
static long tc_path_step(__u32 i, struct tc_path_ctx *p)
{
    struct tc_event_scratch *s = event_scratch_slot();
    if (!s || i >= p->n)
        return 1;
    if (p->pos >= TC_PATH_BUF - 1) {
        s->ev.flags |= TC_EV_PATH_TRUNCATED;
        return 1;
    }
    s->ev.path[tc_bound(p->pos, TC_PATH_MASK)] = '/';
    p->pos++;
    const unsigned char *name = s->names[tc_bound(p->n - 1 - i, TC_MAX_DEPTH - 1)];
    long r = bpf_probe_read_kernel_str(&s->ev.path[tc_bound(p->pos, TC_PATH_MASK)],
                                       TC_NAME_SLACK, name);
    if (r > 1)
        p->pos += r - 1;
    return 0;
}

/* Full path by walking dentries up to the root, crossing mount points (bpf_d_path is not
 * available to tracepoints). Paths longer than TC_PATH_BUF are cut and flagged. */
static __always_inline void tc_build_path(struct tc_event_scratch *s, struct file *f)
{
    struct tc_file_event *ev = &s->ev;
    struct vfsmount *vm = BPF_CORE_READ(f, f_path.mnt);
    struct tc_walk_ctx w = {
        .d = BPF_CORE_READ(f, f_path.dentry),
        .mnt = container_of(vm, struct mount, mnt),
    };
    s->depth = 0;
    bpf_loop(TC_MAX_DEPTH + 16, tc_walk_step, &w, 0);
    __u32 n = s->depth;
    if (n == 0) {
        /* pseudo files (pipes, sockets) and the root itself: the dentry's own name */
        long r = bpf_probe_read_kernel_str(ev->path, TC_NAME_SLACK,
                                           BPF_CORE_READ(f, f_path.dentry, d_name.name));
        ev->path_len = r > 0 ? r - 1 : 0;
        return;
    }
    struct tc_path_ctx p = { .n = n };
    bpf_loop(TC_MAX_DEPTH, tc_path_step, &p, 0);
    if (p.pos > TC_PATH_BUF) {
        p.pos = TC_PATH_BUF;
        ev->flags |= TC_EV_PATH_TRUNCATED;
    }
    ev->path_len = p.pos;
}

struct tc_prefix_ctx {
    __u32 dir;                   /* whose filter: cfg.filters[dir] */
    __u32 k;                     /* which of its prefixes */
    __u32 differs;
};

/* Compare the i-th byte of the event's path with the prefix's. A callback rather than a loop:
 * the exits serve both directions, so the verifier knows neither the filter nor its prefix
 * lengths, and walked a loop's 64 bytes for each prefix on each path (386 times an
 * instruction in tc_exit_io); the callback is proved once for any i. */
static long tc_prefix_step(__u32 i, struct tc_prefix_ctx *p)
{
    struct tc_event_scratch *s = event_scratch_slot();
    __u32 k = p->k;
    if (!s || k >= TC_MAX_PREFIXES)
        return 1;
    const volatile struct tc_file_filter *ff = &cfg.filters[p->dir & 1];
    __u32 at = tc_bound(i, TC_PREFIX_LEN - 1);
    if (s->ev.path[at] != ff->paths[k][at]) {
        p->differs = 1;
        return 1;
    }
    return 0;
}

/* Does the event's path (in this CPU's event scratch) start with prefix k of dir's filter? */
static __always_inline bool tc_has_prefix(const struct tc_file_event *ev, __u32 dir, int k)
{
    const volatile struct tc_file_filter *ff = &cfg.filters[dir & 1];
    __u32 len = ff->path_len[k];
    if (len == 0 || len > ev->path_len || len > TC_PREFIX_LEN)
        return false;
    struct tc_prefix_ctx p = { .dir = dir, .k = k };
    bpf_loop(len, tc_prefix_step, &p, 0);
    return !p.differs;
}

static __always_inline bool tc_path_allowed(const struct tc_file_event *ev, __u32 dir)
{
    const volatile struct tc_file_filter *ff = &cfg.filters[dir & 1];
    if (ff->npaths == 0)
        return true;
    for (int k = 0; k < TC_MAX_PREFIXES; k++) {
        if ((__u32)k < ff->npaths && tc_has_prefix(ev, dir, k))
            return true;
    }
    return false;
}

/* The buffer that holds the first bytes of the transfer, for the ELF check. */
static __always_inline __u64 tc_first_buf(const struct tc_io_args *a)
{
    if (!a->is_vec)
        return a->buf;
    struct iovec iov = {};
    bpf_probe_read_user(&iov, sizeof(iov), (void *)a->buf);
    return (__u64)iov.iov_base;
}

static __always_inline bool tc_type_allowed(const struct tc_io_args *a, struct tc_file_event *ev,
                                            __u32 types)
{
    __u32 fmt = ev->mode & S_IFMT;
    struct tc_dev_ino key = { .inode = ev->inode, .dev = ev->dev };
    bool elf = false;

    if (ev->pos == 0 && ev->io_len >= 4) {
        __u8 magic[4] = {};
        bpf_probe_read_user(magic, sizeof(magic), (void *)tc_first_buf(a));
        if (magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F') {
            __u8 one = 1;
            bpf_map_update_elem(&elf_files, &key, &one, BPF_ANY);
            elf = true;
        } else {
            bpf_map_delete_elem(&elf_files, &key);
        }
    } else if (bpf_map_lookup_elem(&elf_files, &key)) {
        elf = true;
    }
    if (types == 0)
        return true;
    if ((types & TC_TYPE_REGULAR) && fmt == S_IFREG)
        return true;
    if ((types & TC_TYPE_PIPE) && fmt == S_IFIFO)
        return true;
    if ((types & TC_TYPE_SOCKET) && fmt == S_IFSOCK)
        return true;
    if ((types & TC_TYPE_ELF) && elf)
        return true;
    return false;
}

/* Does this syscall continue `st` (same thread, open file and context, no gap)? */
static __always_inline bool tc_continues(const struct tc_io_stream *st, struct file *f,
                                         const struct tc_io_args *a,
                                         const struct tc_file_event *ev, __u64 now)
{
    __u64 comm[2] = {};
    if (st->file != (__u64)f || st->fd != a->fd || st->syscall != a->syscall ||
        st->direction != a->direction || st->inode != ev->inode || st->dev != ev->dev ||
        st->generation != ev->generation || now - st->full_ts >= TC_CONT_REFRESH_NS)
        return false;
    if (!(ev->flags & TC_EV_APPEND) && st->end != ev->pos)
        return false;
    if (st->pid != bpf_get_current_pid_tgid() >> 32 ||
        st->uid != (__u32)bpf_get_current_uid_gid() ||
        st->cgroup_id != bpf_get_current_cgroup_id())
        return false;
    bpf_get_current_comm(comm, sizeof(comm));
    return st->comm[0] == comm[0] && st->comm[1] == comm[1];
}

/* Remember the full event just sent as its thread's stream. */
static __always_inline void tc_start_stream(__u32 tid, struct file *f, const struct tc_io_args *a,
                                            const struct tc_file_event *ev)
{
    struct tc_io_stream st = {
        .file = (__u64)f, .end = ev->pos + ev->io_len, .io_id = ev->io_id, .full_ts = ev->h.ts,
        .inode = ev->inode, .cgroup_id = ev->h.cgroup_id, .pid = ev->h.pid, .uid = ev->h.uid,
        .dev = ev->dev, .generation = ev->generation, .fd = a->fd, .syscall = a->syscall,
        .direction = a->direction,
    };
    __builtin_memcpy(st.comm, ev->h.comm, sizeof(st.comm));
    bpf_map_update_elem(&io_streams, &tid, &st, BPF_ANY);
}

/* How a syscall's bytes go out: chunk records tagged `io_id`, from this CPU's scratch. */
static __always_inline struct tc_emit_ctx tc_io_chunks(__u64 io_id, const struct tc_io_args *a,
                                                       __u64 ret, __u32 cpu)
{
    struct tc_emit_ctx c = {
        .id = io_id, .total = ret, .done = tc_opaque_zero, .buf = a->buf, .iovcnt = a->count,
        .is_vec = a->is_vec, .counter_kind = a->direction, .rec_kind = TC_REC_FILE_DATA,
        .ring = 0, .slot = cpu,
    };
    return c;
}

/* Send the syscall's bytes after its full event. */
static __always_inline void tc_send_io(__u64 io_id, const struct tc_io_args *a, __u64 ret,
                                       __u32 cpu)
{
    struct tc_emit_ctx c = tc_io_chunks(io_id, a, ret, cpu);
    bpf_loop(TC_MAX_STEPS, tc_emit_chunk, &c, 0);
    if (c.done < c.total)
        tc_count(a->direction * TC_CNT_PER_KIND + TC_CNT_DROPPED_BYTES, c.total - c.done);
}

/* The short form: a tc_file_cont (with the first chunk) instead of the event. False when it
 * could not be sent; then none of the syscall's bytes were, and the loss is recorded. */
static __always_inline bool tc_continue_stream(struct tc_io_stream *st, struct tc_file_event *ev,
                                               const struct tc_io_args *a, __u64 ret, __u64 now)
{
    __u32 base = a->direction * TC_CNT_PER_KIND;
    struct tc_emit_ctx c =
        tc_io_chunks(__sync_fetch_and_add(&io_seq, 1), a, ret, bpf_get_smp_processor_id());
    c.cont = 1;
    c.cont_ts = now;
    c.cont_prev = st->io_id;
    c.cont_pos = ev->pos;
    bpf_loop(TC_MAX_STEPS, tc_emit_chunk, &c, 0);
    if (c.cont) {
        ev->h.cgroup_id = st->cgroup_id;
        ev->direction = a->direction;
        tc_count(base + TC_CNT_EVENT_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, ret);
        tc_note_dropped_io(ev, ret, false);
        return false;
    }
    tc_count(base + TC_CNT_EVENTS, 1);
    if (c.done < c.total)
        tc_count(base + TC_CNT_DROPPED_BYTES, c.total - c.done);
    st->io_id = c.id;
    st->end = ev->pos + ret;
    return true;
}

/* A transfer through a user buffer that has completed: `ret` bytes of `f` at `a`; with
 * `unsized`, one whose byte count could not be read: no event can place its bytes, so the file
 * (if the filters take it) gets a loss of unknown size in file_drops. */
static __always_inline int tc_io_transfer(const struct tc_io_args *ap, struct file *f, long ret,
                                          __u32 tid, bool unsized)
{
    struct tc_io_args a = *ap;
    const volatile struct tc_file_filter *ff = &cfg.filters[a.direction & 1];
    if (ff->fds && !tc_is_std_fd(f, ff->fds))
        return 0;

    struct tc_event_scratch *s = event_scratch_slot();
    if (!s)
        return 0;
    struct tc_file_event *ev = &s->ev;
    ev->flags = 0;
    ev->path_len = 0;
    ev->path[0] = 0;
    ev->io_len = ret;
    ev->req = a.count;
    ev->inode = BPF_CORE_READ(f, f_inode, i_ino);
    ev->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
    ev->mode = BPF_CORE_READ(f, f_inode, i_mode);
    ev->generation = BPF_CORE_READ(f, f_inode, i_generation);
    __u32 fmt = ev->mode & S_IFMT;
    if (fmt == S_IFIFO || fmt == S_IFSOCK || fmt == S_IFCHR) {
        ev->flags |= TC_EV_APPEND;
        ev->pos = 0;
    } else if (a.pos >= 0) {
        ev->pos = a.pos;
    } else {
        __s64 end = BPF_CORE_READ(f, f_pos);
        ev->pos = end >= ret ? end - ret : 0;
    }
    if (!tc_type_allowed(&a, ev, ff->types))
        return 0;
    __u64 now = bpf_ktime_get_boot_ns();
    struct tc_io_stream *st = bpf_map_lookup_elem(&io_streams, &tid);
    if (!unsized && st && tc_continues(st, f, &a, ev, now)) {
        if (!tc_continue_stream(st, ev, &a, ret, now))
            bpf_map_delete_elem(&io_streams, &tid);  /* the next one needs a full event */
        return 0;
    }
    tc_build_path(s, f);
    if (!tc_path_allowed(ev, a.direction))
        return 0;

    tc_fill_hdr(&ev->h, TC_REC_FILE_EVENT);
    ev->io_id = __sync_fetch_and_add(&io_seq, 1);
    ev->fd = a.fd;
    ev->syscall = a.syscall;
    ev->direction = a.direction;
    __u32 base = a.direction * TC_CNT_PER_KIND;
    if (unsized) {  /* not a ring buffer loss: the collector counts it (lost_unsized) */
        tc_note_dropped_io(ev, 0, true);
        if (st)
            bpf_map_delete_elem(&io_streams, &tid);  /* the next one needs a full event */
        return 0;
    }
    __u64 flags = tc_wakeup_flag(&file_rb, sizeof(*ev));
    if (bpf_ringbuf_output(&file_rb, ev, sizeof(*ev), flags)) {
        /* without its event the data cannot be attributed: do not send it, but remember
         * which file lost which bytes */
        tc_count(base + TC_CNT_EVENT_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, ret);
        tc_note_dropped_io(ev, ret, false);
        if (st)
            bpf_map_delete_elem(&io_streams, &tid);
        return 0;
    }
    tc_count(base + TC_CNT_EVENTS, 1);
    tc_start_stream(tid, f, &a, ev);
    tc_send_io(ev->io_id, &a, ret, ev->h.cpu);
    return 0;
}

static __always_inline int tc_io_done(const struct tc_io_args *ap, struct file *f, long ret,
                                      __u32 tid)
{
    return tc_io_transfer(ap, f, ret, tid, false);
}

static __always_inline int tc_io_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_io_args *ap = bpf_map_lookup_elem(&io_pending, &tid);
    if (!ap)
        return 0;
    struct tc_io_args a = *ap;
    bpf_map_delete_elem(&io_pending, &tid);
    long ret = ctx->ret;
    if (ret <= 0)
        return 0;
    struct file *f = tc_fd_file(a.fd);
    if (!f)
        return 0;
    return tc_io_done(&a, f, ret, tid);
}

/* The exits are tc_exit_io (shared_exits.bpf.h). */
#define TC_IO_PROBES(name, sc, dir, is_vec, posarg)                                   \
    SEC("tp/syscalls/sys_enter_" #name)                                                \
    int tc_enter_##name(struct trace_event_raw_sys_enter *ctx)                         \
    {                                                                                  \
        return tc_io_enter(ctx, sc, dir, is_vec, posarg);                              \
    }

TC_IO_PROBES(write, TC_SYS_WRITE, TC_DIR_WRITE, 0, -1)
TC_IO_PROBES(pwrite64, TC_SYS_PWRITE64, TC_DIR_WRITE, 0, (__s64)ctx->args[3])
TC_IO_PROBES(writev, TC_SYS_WRITEV, TC_DIR_WRITE, 1, -1)
TC_IO_PROBES(pwritev, TC_SYS_PWRITEV, TC_DIR_WRITE, 1, (__s64)ctx->args[3])
TC_IO_PROBES(pwritev2, TC_SYS_PWRITEV2, TC_DIR_WRITE, 1, (__s64)ctx->args[3])
TC_IO_PROBES(read, TC_SYS_READ, TC_DIR_READ, 0, -1)
TC_IO_PROBES(pread64, TC_SYS_PREAD64, TC_DIR_READ, 0, (__s64)ctx->args[3])
TC_IO_PROBES(readv, TC_SYS_READV, TC_DIR_READ, 1, -1)
TC_IO_PROBES(preadv, TC_SYS_PREADV, TC_DIR_READ, 1, (__s64)ctx->args[3])
TC_IO_PROBES(preadv2, TC_SYS_PREADV2, TC_DIR_READ, 1, (__s64)ctx->args[3])
/* send(2) and recv(2) are these two with no address: (fd, buf, len, flags, addr, addrlen).
 * A receive with MSG_PEEK leaves the bytes queued for the next one (dnsmasq peeks at each
 * datagram's size first): only the receive that consumes them is captured. */
#define TC_MSG_PEEK 2

/* A receive that leaves its bytes queued: it moves nothing, and is not captured. */
static __always_inline bool tc_peeks(__u8 dir, __u64 flags)
{
    return dir == TC_DIR_READ && (flags & TC_MSG_PEEK);
}

TC_IO_PROBES(sendto, TC_SYS_SENDTO, TC_DIR_WRITE, 0, -1)

SEC("tp/syscalls/sys_enter_recvfrom")
int tc_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
    if (tc_peeks(TC_DIR_READ, ctx->args[3]))
        return 0;
    return tc_io_enter(ctx, TC_SYS_RECVFROM, TC_DIR_READ, 0, -1);
}

/* The iovec array of a user msghdr (sendmsg/recvmsg, io_uring's SENDMSG/RECVMSG), into `a`.
 * A msghdr that cannot be read gives no iovec: a syscall then fails with EFAULT and moves
 * nothing; a completed request's bytes are sent as missing (tc_io_chunks counts them). */
static __always_inline void tc_msg_iov(struct tc_io_args *a, const void *umsg)
{
    struct user_msghdr m = {};
    bpf_probe_read_user(&m, sizeof(m), umsg);
    a->buf = (__u64)m.msg_iov;
    a->count = m.msg_iovlen;
    a->is_vec = 1;
}

static __always_inline int tc_msg_enter(struct trace_event_raw_sys_enter *ctx, __u16 sc,
                                        __u8 dir)
{
    if (tc_peeks(dir, ctx->args[2]) || !tc_in_scope())
        return 0;
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_io_args a = {
        .pos = -1, .fd = (__s32)ctx->args[0], .syscall = sc, .direction = dir,
    };
    tc_msg_iov(&a, (void *)ctx->args[1]);
    if (bpf_map_update_elem(&io_pending, &tid, &a, BPF_ANY))
        tc_count(dir * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
    return 0;
}

#define TC_MSG_PROBES(name, sc, dir)                                                   \
    SEC("tp/syscalls/sys_enter_" #name)                                                \
    int tc_enter_##name(struct trace_event_raw_sys_enter *ctx)                         \
    {                                                                                  \
        return tc_msg_enter(ctx, sc, dir);                                             \
    }

TC_MSG_PROBES(sendmsg, TC_SYS_SENDMSG, TC_DIR_WRITE)
TC_MSG_PROBES(recvmsg, TC_SYS_RECVMSG, TC_DIR_READ)

/* sendmmsg/recvmmsg (fd, struct mmsghdr *vec, vlen, flags): at exit the syscall returns how
 * many messages moved and each message's msg_len says its bytes; each message is one
 * transfer of its own iovec array. At enter `a` keeps the vector in buf and vlen in count. */
/* UIO_MAXIOV: the kernel moves at most this many messages in one call */
#define TC_MMSG_MAX 1024

struct tc_mmsg_walk {
    struct tc_io_args a;
    __u64 vec;
    struct file *f;
    __u32 n;
    __u32 tid;
};

/* The walk's state, one per CPU, and bpf_loop gets no context: before 6.13 the verifier limits
 * a call chain's stack to 512 bytes (frames rounded up to 32), and with the state and a whole
 * mmsghdr on the stack tc_exit_sendmmsg -> tc_mmsg_one -> tc_emit_chunk took 576 (measured on
 * 6.18 at log level 4); tc_io_done's frame alone is about 330. */
TC_SLOT(mmsg_scratch, struct tc_mmsg_walk)

static long tc_mmsg_one(__u32 i, void *unused)
{
    struct tc_mmsg_walk *w = mmsg_scratch_slot();
    if (!w || i >= w->n)
        return 1;
    struct mmsghdr *m = (struct mmsghdr *)(w->vec + (__u64)i * sizeof(*m));
    __u64 iov = 0, iovlen = 0;
    __u32 len = 0;
    /* The kernel just wrote msg_len there: unreadable only if unmapped since. msg_len alone
     * may still be (an entry across a page end): then the iovec is unknown and the bytes go
     * as missing, as a sendmsg whose msghdr is unreadable; if not, their number is unknown. */
    if (bpf_probe_read_user(&iov, sizeof(iov), &m->msg_hdr.msg_iov) ||
        bpf_probe_read_user(&iovlen, sizeof(iovlen), &m->msg_hdr.msg_iovlen)) {
        iov = 0;
        iovlen = 0;
    }
    bool unsized = bpf_probe_read_user(&len, sizeof(len), &m->msg_len) != 0;
    struct tc_io_args a = w->a;
    a.buf = iov;
    a.count = iovlen;
    a.is_vec = 1;
    if (len || unsized)
        tc_io_transfer(&a, w->f, len, w->tid, unsized);
    return 0;
}

static __always_inline int tc_mmsg_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_io_args *ap = bpf_map_lookup_elem(&io_pending, &tid);
    struct tc_mmsg_walk *w = mmsg_scratch_slot();
    if (!ap || !w)
        return 0;
    w->a = *ap;
    bpf_map_delete_elem(&io_pending, &tid);
    long ret = ctx->ret;
    if (ret <= 0)
        return 0;
    w->f = tc_fd_file(w->a.fd);
    if (!w->f)
        return 0;
    w->vec = w->a.buf;
    w->n = ret;
    w->tid = tid;
    bpf_loop(TC_MMSG_MAX, tc_mmsg_one, NULL, 0);
    return 0;
}

#define TC_MMSG_PROBES(name, sc, dir, flagarg)                                        \
    SEC("tp/syscalls/sys_enter_" #name)                                                \
    int tc_enter_##name(struct trace_event_raw_sys_enter *ctx)                         \
    {                                                                                  \
        if (tc_peeks(dir, ctx->args[flagarg]))                                         \
            return 0;                                                                  \
        return tc_io_enter(ctx, sc, dir, 1, -1);                                       \
    }

TC_MMSG_PROBES(sendmmsg, TC_SYS_SENDMMSG, TC_DIR_WRITE, 3)
TC_MMSG_PROBES(recvmmsg, TC_SYS_RECVMMSG, TC_DIR_READ, 3)

/* ---- io_uring: read and write requests, at the posting of their completion ----------------
 *
 * A request's data passes a user buffer as a syscall's does, but no syscall of the process
 * carries it: the request is seen when its completion is posted (io_uring_complete), from the
 * submitting task, an io-wq worker or the SQPOLL thread, all of which share the process's
 * memory, so the buffer (or iovec array) the request named is still there to copy. The file
 * offset is where the kiocb ended less the bytes moved. The fd is -1: a request names its
 * file by an fd of the submitter or an index in the ring's fixed files. */

/* IORING_OP_* (UAPI: stable numbers) -> what it does, for the requests captured. */
enum { TC_URING_RW = 0, TC_URING_SR, TC_URING_SR_MSG };

struct tc_uring_op {
    __u16 syscall;
    __u8 direction;
    __u8 is_vec;
    __u8 layout;                 /* the request's command: io_rw, io_sr_msg with buf or msghdr */
};

static __always_inline bool tc_uring_op(__u8 opcode, struct tc_uring_op *op)
{
    switch (opcode) {
    case 23: /* IORING_OP_WRITE */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_WRITE, TC_DIR_WRITE, 0 };
        return true;
    case 2: /* IORING_OP_WRITEV */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_WRITEV, TC_DIR_WRITE, 1 };
        return true;
    case 5: /* IORING_OP_WRITE_FIXED: inside a registered buffer, still mapped */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_WRITE_FIXED, TC_DIR_WRITE, 0 };
        return true;
    case 22: /* IORING_OP_READ */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_READ, TC_DIR_READ, 0 };
        return true;
    case 1: /* IORING_OP_READV */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_READV, TC_DIR_READ, 1 };
        return true;
    case 4: /* IORING_OP_READ_FIXED */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_READ_FIXED, TC_DIR_READ, 0 };
        return true;
    case 26: /* IORING_OP_SEND */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_SEND, TC_DIR_WRITE, 0, TC_URING_SR };
        return true;
    case 9: /* IORING_OP_SENDMSG */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_SENDMSG, TC_DIR_WRITE, 1, TC_URING_SR_MSG };
        return true;
    case 27: /* IORING_OP_RECV */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_RECV, TC_DIR_READ, 0, TC_URING_SR };
        return true;
    case 10: /* IORING_OP_RECVMSG */
        *op = (struct tc_uring_op){ TC_SYS_IO_URING_RECVMSG, TC_DIR_READ, 1, TC_URING_SR_MSG };
        return true;
    }
    return false;
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(tc_uring_complete, struct io_ring_ctx *ring, void *reqp, struct io_uring_cqe *cqe)
{
    struct io_kiocb *req = reqp;
    struct tc_uring_op op;
    long res = BPF_CORE_READ(cqe, res);
    if (res <= 0 || !tc_uring_op(BPF_CORE_READ(req, opcode), &op))
        return 0;
    if (!cfg.filters[op.direction & 1].enabled || !tc_in_scope())
        return 0;
    struct tc_io_args a = {
        .fd = -1, .syscall = op.syscall, .direction = op.direction, .is_vec = op.is_vec,
    };
    struct file *f;
    if (op.layout == TC_URING_RW) {
        struct io_rw *rw = (void *)&req->cmd;
        __s64 end = BPF_CORE_READ(rw, kiocb.ki_pos);
        f = BPF_CORE_READ(rw, kiocb.ki_filp);
        a.buf = BPF_CORE_READ(rw, addr);
        a.count = BPF_CORE_READ(rw, len);
        a.pos = end >= res ? end - res : 0;
    } else {
        /* a socket: a stream, so no position; the buffer (or the user's msghdr, read now
         * from the submitter's memory, which the completing task shares) is the request's */
        struct io_sr_msg *sr = (void *)&req->cmd;
        if (tc_peeks(op.direction, BPF_CORE_READ(sr, msg_flags)))
            return 0;
        f = BPF_CORE_READ(sr, file);
        a.pos = -1;
        if (op.layout == TC_URING_SR_MSG) {
            tc_msg_iov(&a, BPF_CORE_READ(sr, umsg));
        } else {
            a.buf = (__u64)BPF_CORE_READ(sr, buf);
            a.count = BPF_CORE_READ(sr, len);
        }
    }
    if (!f)
        return 0;
    return tc_io_done(&a, f, res, (__u32)bpf_get_current_pid_tgid());
}

/* ---- copy_file_range, sendfile, splice: transfers that pass no user buffer ---------------
 *
 * The bytes go from one file to another inside the kernel, so there is nothing to copy here:
 * at exit one tc_file_xfer per captured direction names both ends (identity, offset, and
 * size/mtime/ctime as they are now) and the collector reads the bytes back from the source
 * while they are still the same. The offset of each end is taken at enter, from the user's
 * offset pointer or, when it is NULL, from the file position; the syscall moves it. */

struct tc_xfer_args {
    __s64 in_pos;                /* -1: unknown */
    __s64 out_pos;
    __s32 in_fd;
    __s32 out_fd;
    __u16 syscall;
    __u16 _pad[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct tc_xfer_args);
} xfer_pending SEC(".maps");

static __always_inline __s64 tc_start_pos(__s32 fd, __u64 uptr)
{
    __s64 pos = -1;
    if (uptr) {
        if (bpf_probe_read_user(&pos, sizeof(pos), (void *)uptr))
            return -1;
        return pos;
    }
    struct file *f = tc_fd_file(fd);
    return f ? BPF_CORE_READ(f, f_pos) : -1;
}

static __always_inline int tc_xfer_enter(__u16 sc, __s32 in_fd, __u64 in_ptr, __s32 out_fd,
                                         __u64 out_ptr)
{
    if (!tc_in_scope())
        return 0;
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_xfer_args a = {
        .in_pos = tc_start_pos(in_fd, in_ptr), .out_pos = tc_start_pos(out_fd, out_ptr),
        .in_fd = in_fd, .out_fd = out_fd, .syscall = sc,
    };
    if (bpf_map_update_elem(&xfer_pending, &tid, &a, BPF_ANY)) {
        __u32 dir = cfg.filters[TC_DIR_WRITE].enabled ? TC_DIR_WRITE : TC_DIR_READ;
        tc_count(dir * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
    }
    return 0;
}

static __always_inline bool tc_is_stream(__u32 mode)
{
    __u32 fmt = mode & S_IFMT;
    return fmt == S_IFIFO || fmt == S_IFSOCK || fmt == S_IFCHR;
}

static __always_inline void tc_xfer_end(struct tc_xfer_file *end, struct file *f, __s32 fd,
                                        __s64 pos)
{
    struct inode *inode = BPF_CORE_READ(f, f_inode);
    end->inode = BPF_CORE_READ(inode, i_ino);
    end->dev = BPF_CORE_READ(inode, i_sb, s_dev);
    end->mode = BPF_CORE_READ(inode, i_mode);
    end->generation = BPF_CORE_READ(inode, i_generation);
    end->size = BPF_CORE_READ(inode, i_size);
    end->fd = fd;
    end->pos = tc_is_stream(end->mode) || pos < 0 ? 0 : pos;
    /* 0 on an unknown inode layout: the collector then cannot tell whether the file changed
     * and reads nothing back */
    end->mtime = tc_inode_mtime(inode);
    end->ctime = tc_inode_ctime(inode);
}

/* write:type= / read:type= for a transfer: by the file's type, and ELF only when the file is
 * already known as one (there is no user buffer to look at the first bytes in). */
static __always_inline bool tc_xfer_type_allowed(const struct tc_xfer_file *end, __u32 types)
{
    __u32 fmt = end->mode & S_IFMT;
    struct tc_dev_ino key = { .inode = end->inode, .dev = end->dev };
    if (types == 0)
        return true;
    if ((types & TC_TYPE_REGULAR) && fmt == S_IFREG)
        return true;
    if ((types & TC_TYPE_PIPE) && fmt == S_IFIFO)
        return true;
    if ((types & TC_TYPE_SOCKET) && fmt == S_IFSOCK)
        return true;
    return (types & TC_TYPE_ELF) && bpf_map_lookup_elem(&elf_files, &key);
}

/* The record of one direction: `f` is the artifact's file (the destination for write, the
 * source for read), `other` the other end. */
static __always_inline void tc_xfer_emit(struct tc_event_scratch *s, const struct tc_xfer_args *a,
                                         __u8 dir, struct file *f, struct file *other, __u64 ret)
{
    const volatile struct tc_file_filter *ff = &cfg.filters[dir & 1];
    if (!ff->enabled)
        return;
    if (ff->fds && !tc_is_std_fd(f, ff->fds))
        return;
    struct tc_xfer_file *end = dir == TC_DIR_WRITE ? &s->x.dst : &s->x.src;
    if (!tc_xfer_type_allowed(end, ff->types))
        return;
    struct tc_file_event *ev = &s->ev;
    ev->flags = 0;
    ev->path_len = 0;
    ev->path[0] = 0;
    if (other)  /* NULL: an io_uring input among the ring's fixed files (pipes.bpf.h) */
        tc_build_path(s, other);
    s->x.other_path_len = ev->path_len;
    s->x.other_flags = ev->flags;
    bpf_probe_read_kernel(s->x.other_path, sizeof(s->x.other_path), ev->path);
    ev->flags = 0;
    ev->path_len = 0;
    ev->path[0] = 0;
    tc_build_path(s, f);
    if (!tc_path_allowed(ev, dir))
        return;
    tc_fill_hdr(&ev->h, TC_REC_FILE_XFER);
    ev->io_id = __sync_fetch_and_add(&io_seq, 1);
    ev->io_len = ret;
    ev->req = ret;
    ev->pos = end->pos;
    ev->inode = end->inode;
    ev->dev = end->dev;
    ev->mode = end->mode;
    ev->generation = end->generation;
    ev->fd = end->fd;
    ev->syscall = a->syscall;
    ev->direction = dir;
    if (tc_is_stream(end->mode))
        ev->flags |= TC_EV_APPEND;
    __u32 base = dir * TC_CNT_PER_KIND;
    __u64 size = sizeof(struct tc_file_xfer);
    if (bpf_ringbuf_output(&file_rb, ev, size, tc_wakeup_flag(&file_rb, size))) {
        tc_count(base + TC_CNT_EVENT_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, ret);
        tc_note_dropped_io(ev, ret, false);
        return;
    }
    tc_count(base + TC_CNT_EVENTS, 1);
}

static __always_inline int tc_xfer_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_xfer_args *ap = bpf_map_lookup_elem(&xfer_pending, &tid);
    if (!ap)
        return 0;
    struct tc_xfer_args a = *ap;
    bpf_map_delete_elem(&xfer_pending, &tid);
    long ret = ctx->ret;
    if (ret <= 0)
        return 0;
    struct file *fin = tc_fd_file(a.in_fd);
    struct file *fout = tc_fd_file(a.out_fd);
    struct tc_event_scratch *s = event_scratch_slot();
    if (!fin || !fout || !s)
        return 0;
    tc_xfer_end(&s->x.src, fin, a.in_fd, a.in_pos);
    tc_xfer_end(&s->x.dst, fout, a.out_fd, a.out_pos);
    tc_xfer_emit(s, &a, TC_DIR_WRITE, fout, fin, ret);
    tc_xfer_emit(s, &a, TC_DIR_READ, fin, fout, ret);
    return 0;
}

/* copy_file_range(fd_in, off_in *, fd_out, off_out *, len, flags) */
SEC("tp/syscalls/sys_enter_copy_file_range")
int tc_enter_copy_file_range(struct trace_event_raw_sys_enter *ctx)
{
    return tc_xfer_enter(TC_SYS_COPY_FILE_RANGE, ctx->args[0], ctx->args[1], ctx->args[2],
                         ctx->args[3]);
}

/* sendfile(out_fd, in_fd, offset *, count): the output always at its file position */
SEC("tp/syscalls/sys_enter_sendfile64")
int tc_enter_sendfile64(struct trace_event_raw_sys_enter *ctx)
{
    return tc_xfer_enter(TC_SYS_SENDFILE, ctx->args[1], ctx->args[2], ctx->args[0], 0);
}

/* splice(fd_in, off_in *, fd_out, off_out *, len, flags) */
SEC("tp/syscalls/sys_enter_splice")
int tc_enter_splice(struct trace_event_raw_sys_enter *ctx)
{
    return tc_xfer_enter(TC_SYS_SPLICE, ctx->args[0], ctx->args[1], ctx->args[2],
                         ctx->args[3]);
}

#endif
