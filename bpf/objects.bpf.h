/* Whole objects: executed binaries (--capture exec), memory made executable (mem), kernel
 * module images (module) and BPF programs (bpf). Each gives one event on obj_rb; mem, module
 * (init_module) and bpf follow it with their bytes as chunks. Executed binaries and
 * finit_module files are read by the collector from the file itself. */
#ifndef TRACECAP_OBJECTS_BPF_H
#define TRACECAP_OBJECTS_BPF_H

#define TC_OBJ_MAX (64ull << 20)   /* bytes of a region or image sent; the rest is counted lost */
#define TC_ARGV_MASK (TC_ARGV_BUF - 1)
#define TC_PARAMS_MASK (TC_PARAMS_BUF - 1)
#define PROT_WRITE 0x2
#define PROT_EXEC 0x4
#define NR_INIT_MODULE 175
#define NR_FINIT_MODULE 313
#define BPF_PROG_LOAD_CMD 5

/* One scratch slot per CPU for the larger events, which do not fit the BPF stack. */
union tc_obj_scratch {
    struct tc_exec_event exec;
    struct tc_module_event module;
};

TC_SLOT(obj_scratch, union tc_obj_scratch)

/* Arguments saved at syscall entry for the exit handlers (mmap, module, bpf). */
struct tc_obj_args {
    __u64 a0, a1, a2, a3;   /* module: a3 is 1 + the obj_id of the image the kernel's hook
                             * sent (module_kread.bpf.h), 0 for none (obj_ids start at 0) */
    __u32 nr;
    __u32 kread_len;        /* and that image's length (the kernel reads at most INT_MAX) */
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct tc_obj_args);
} obj_pending SEC(".maps");

static __always_inline void tc_obj_save(__u32 kind, __u32 nr, __u64 a0, __u64 a1, __u64 a2,
                                        __u64 a3)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_obj_args a = { .a0 = a0, .a1 = a1, .a2 = a2, .a3 = a3, .nr = nr };
    if (bpf_map_update_elem(&obj_pending, &tid, &a, BPF_ANY))
        tc_count(kind * TC_CNT_PER_KIND + TC_CNT_PENDING_FULL, 1);
}

static __always_inline bool tc_obj_take(__u32 nr, struct tc_obj_args *out)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_obj_args *a = bpf_map_lookup_elem(&obj_pending, &tid);
    if (!a || a->nr != nr)
        return false;
    *out = *a;
    bpf_map_delete_elem(&obj_pending, &tid);
    return true;
}

static __always_inline bool tc_emit_event(__u32 kind, void *ev, __u64 size)
{
    if (bpf_ringbuf_output(&obj_rb, ev, size, 0)) {
        tc_count(kind * TC_CNT_PER_KIND + TC_CNT_EVENT_DROPS, 1);
        return false;
    }
    tc_count(kind * TC_CNT_PER_KIND + TC_CNT_EVENTS, 1);
    return true;
}

/* ---- exec ---------------------------------------------------------------------------- */

#define TC_FMODE_EXEC_FLAG 0x20   /* __FMODE_EXEC: open_exec sets it in f_flags */
#define TC_TASK_WORKS_MAX 256
#define TC_EXEC_COPY_MAX TC_OBJ_MAX

/* The script of a #! execution. The kernel read its #! line, opened the interpreter and put
 * the script's file (exec_binprm: fput), but a task's last fput is deferred to its return to
 * user space (a task_work running ____fput, whose address user space puts in cfg.fput_addr),
 * so at sched_process_exec the script's struct file is still on the exec'ing task's
 * task_works list. The list is empty when execve starts (task works run before any return to
 * user space) and is pushed at its head: the deepest entry opened for execution (__FMODE_EXEC
 * in f_flags) is the script; later ones are the old program's executable, put when its memory
 * went. */
struct tc_task_works_walk {
    __u64 cb;
    __u64 found;
};

/* Where a struct file's deferred-fput callback_head is: f_task_work since 6.7, f_rcuhead in an
 * anonymous union before (Debian 12's 6.1.0-50 has that one), f_u.fu_rcuhead in older ones.
 * Without these, tc_exec did not load on that 6.1 ("failed to resolve CO-RE relocation struct
 * file.f_task_work"). */
struct file___rcuhead {
    struct callback_head f_rcuhead;
} __attribute__((preserve_access_index));

struct file___fu {
    union {
        struct llist_node fu_llist;
        struct callback_head fu_rcuhead;
    } f_u;
} __attribute__((preserve_access_index));

static __always_inline __u64 tc_file_task_work_offset(void)
{
    if (bpf_core_field_exists(struct file, f_task_work))
        return bpf_core_field_offset(struct file, f_task_work);
    if (bpf_core_field_exists(struct file___rcuhead, f_rcuhead))
        return bpf_core_field_offset(struct file___rcuhead, f_rcuhead);
    return bpf_core_field_offset(struct file___fu, f_u.fu_rcuhead);
}

static long tc_task_works_step(__u32 i, struct tc_task_works_walk *w)
{
    if (!w->cb)
        return 1;
    struct callback_head *h = (void *)w->cb;
    __u64 func = 0, next = 0;
    if (bpf_probe_read_kernel(&func, sizeof(func), &h->func) ||
        bpf_probe_read_kernel(&next, sizeof(next), &h->next))
        return 1;
    if (cfg.fput_addr && func == cfg.fput_addr) {
        struct file *f = (void *)(w->cb - tc_file_task_work_offset());
        if (BPF_CORE_READ(f, f_flags) & TC_FMODE_EXEC_FLAG)
            w->found = (__u64)f;
    }
    w->cb = next;
    return 0;
}

static __always_inline struct file *tc_exec_script_file(struct task_struct *p)
{
    struct tc_task_works_walk w = { .cb = (__u64)BPF_CORE_READ(p, task_works) };
    bpf_loop(TC_TASK_WORKS_MAX, tc_task_works_step, &w, 0);
    return (struct file *)w.found;
}

/* memfd / deleted flags of an executed file, and whether its bytes are copied now. */
static __always_inline __u32 tc_exec_file_flags(struct file *f, __u32 memfd, __u32 deleted)
{
    __u32 flags = 0;
    if (tc_is_memfd(f))
        flags |= memfd;
    if (!BPF_CORE_READ(f, f_inode, __i_nlink))
        flags |= deleted;
    return flags;
}

/* `f`'s path (d_path, as file events build it) into `dst` (TC_PATH_BUF bytes, NUL-terminated);
 * its length, with TC_EV_PATH_TRUNCATED in *cut when it was cut. */
static __always_inline __u32 tc_exec_path(char *dst, struct file *f, __u32 *cut)
{
    struct tc_event_scratch *ps = event_scratch_slot();
    if (!ps || !f)
        return 0;
    ps->ev.flags = 0;
    tc_build_path(ps, f);
    __u32 n = ps->ev.path_len;
    if (n > TC_PATH_BUF - 1)
        n = TC_PATH_BUF - 1;
    bpf_probe_read_kernel(dst, tc_bound(n, TC_PATH_MASK) + 1, ps->ev.path);
    dst[tc_bound(n, TC_PATH_MASK)] = 0;
    *cut = ps->ev.flags & TC_EV_PATH_TRUNCATED;
    return n;
}

static __always_inline void tc_exec_script(struct tc_exec_event *ev, struct task_struct *p)
{
    struct file *f = tc_exec_script_file(p);
    if (!f)
        return;
    struct inode *inode = BPF_CORE_READ(f, f_inode);
    ev->flags |= TC_EXEC_SCRIPT_FILE |
                 tc_exec_file_flags(f, TC_EXEC_SCRIPT_MEMFD, TC_EXEC_SCRIPT_DELETED);
    ev->script_inode = BPF_CORE_READ(inode, i_ino);
    ev->script_dev = BPF_CORE_READ(inode, i_sb, s_dev);
    ev->script_ctime = tc_inode_ctime(inode);
    ev->script_size = BPF_CORE_READ(inode, i_size);
    ev->script_mode = BPF_CORE_READ(inode, i_mode);
    __u32 cut = 0;
    ev->script_path_len = tc_exec_path(ev->script_path, f, &cut);
    if (cut)
        ev->flags |= TC_EXEC_SCRIPT_PATH_TRUNCATED;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tc_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
    if (!tc_in_scope())
        return 0;
    union tc_obj_scratch *s = obj_scratch_slot();
    if (!s)
        return 0;
    struct tc_exec_event *ev = &s->exec;
    tc_fill_hdr(&ev->h, TC_REC_EXEC_EVENT);
    struct inode *inode = bprm->file->f_inode;
    ev->inode = inode->i_ino;
    ev->dev = inode->i_sb->s_dev;
    ev->mode = inode->i_mode;
    ev->ctime = tc_inode_ctime(inode);
    ev->flags = 0;
    struct file *in = tc_fd_file(0);
    ev->stdin_mode = in ? BPF_CORE_READ(in, f_inode, i_mode) & S_IFMT : 0;
    ev->stdin_path_len = 0;
    ev->stdin_path[0] = 0;
    __u32 cut = 0;  /* stdin_path has no truncation flag: it is cut at TC_PATH_BUF - 1 */
    if (in && ev->stdin_mode != S_IFIFO && ev->stdin_mode != S_IFSOCK)
        ev->stdin_path_len = tc_exec_path(ev->stdin_path, in, &cut);
    if (BPF_CORE_READ(p, real_parent, flags) & 0x00200000 /* PF_KTHREAD */)
        ev->flags |= TC_EXEC_FROM_KERNEL;
    long r = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), bprm->filename);
    ev->filename_len = r > 0 ? r - 1 : 0;
    if (ev->filename_len == TC_FILENAME_BUF - 1)
        ev->flags |= TC_EXEC_FILENAME_TRUNCATED;

    /* argv lies on the new program's stack: mm->arg_start .. arg_end, NUL-separated */
    struct mm_struct *mm = p->mm;
    __u64 start = mm->arg_start, end = mm->arg_end;
    __u64 len = end > start ? end - start : 0;
    if (len > TC_ARGV_BUF - 1) {
        len = TC_ARGV_BUF - 1;
        ev->flags |= TC_EXEC_ARGV_TRUNCATED;
    }
    len = tc_bound(len, TC_ARGV_MASK);
    ev->argv_len = 0;
    if (len && !bpf_probe_read_user(ev->argv, len, (void *)start))
        ev->argv_len = len;

    /* A memfd or deleted binary is gone with its process, which may exit at once: its bytes
     * are read now, from the page cache (pagecache.bpf.h). The same for a script. */
    struct file *file = bprm->file;
    ev->flags |= tc_exec_file_flags(file, TC_EXEC_MEMFD, TC_EXEC_DELETED);
    cut = 0;
    ev->path_len = tc_exec_path(ev->path, file, &cut);
    if (cut)
        ev->flags |= TC_EXEC_PATH_TRUNCATED;
    ev->size = inode->i_size;
    ev->obj_id = 0;
    ev->captured = 0;
    if ((ev->flags & (TC_EXEC_MEMFD | TC_EXEC_DELETED)) && (ev->mode & S_IFMT) == S_IFREG) {
        ev->flags |= TC_EXEC_COPIED;
        ev->obj_id = __sync_fetch_and_add(&io_seq, 1);
        ev->captured = ev->size < TC_EXEC_COPY_MAX ? ev->size : TC_EXEC_COPY_MAX;
    }
    ev->interp_len = 0;
    ev->script_inode = ev->script_ctime = ev->script_size = 0;
    ev->script_obj_id = ev->script_captured = 0;
    ev->script_dev = ev->script_path_len = ev->script_mode = 0;
    struct file *script = NULL;
    if (bprm->interp != bprm->filename) {
        ev->flags |= TC_EXEC_SCRIPT;
        r = bpf_probe_read_kernel_str(ev->interp, sizeof(ev->interp), bprm->interp);
        ev->interp_len = r > 0 ? r - 1 : 0;
        if (ev->interp_len == TC_FILENAME_BUF - 1)
            ev->flags |= TC_EXEC_INTERP_TRUNCATED;
        tc_exec_script(ev, p);
        if ((ev->flags & TC_EXEC_SCRIPT_FILE) &&
            (ev->flags & (TC_EXEC_SCRIPT_MEMFD | TC_EXEC_SCRIPT_DELETED))) {
            script = tc_exec_script_file(p);
            ev->flags |= TC_EXEC_SCRIPT_COPIED;
            ev->script_obj_id = __sync_fetch_and_add(&io_seq, 1);
            ev->script_captured = ev->script_size < TC_EXEC_COPY_MAX ? ev->script_size
                                                                    : TC_EXEC_COPY_MAX;
        }
    }
    if (!tc_emit_event(TC_KIND_EXEC, ev, sizeof(*ev)))
        return 0;
    __u64 pgd = (__u64)BPF_CORE_READ(mm, pgd);
    if (ev->captured)
        tc_send_file_pages(ev->obj_id, file, ev->captured, pgd, TC_KIND_EXEC);
    if (script && ev->script_captured)
        tc_send_file_pages(ev->script_obj_id, script, ev->script_captured, pgd, TC_KIND_EXEC);
    return 0;
}

/* ---- mem: bpf/mem.bpf.h ---------------------------------------------------------------- */

/* ---- module --------------------------------------------------------------------------- */

#define VM_SHARED 0x8

/* The file an image comes from: its identity as it is at the syscall, and its path. */
static __always_inline void tc_module_file(struct tc_module_event *ev, struct file *f)
{
    struct inode *inode = BPF_CORE_READ(f, f_inode);
    ev->inode = BPF_CORE_READ(inode, i_ino);
    ev->dev = BPF_CORE_READ(inode, i_sb, s_dev);
    ev->ctime = tc_inode_ctime(inode);
    ev->mtime = tc_inode_mtime(inode);
    ev->size = BPF_CORE_READ(inode, i_size);
    struct tc_event_scratch *ps = event_scratch_slot();
    if (!ps)
        return;
    ps->ev.flags = 0;
    tc_build_path(ps, f);
    __u32 n = ps->ev.path_len;
    if (n > TC_PATH_BUF - 1)
        n = TC_PATH_BUF - 1;
    bpf_probe_read_kernel(ev->path, tc_bound(n, TC_PATH_MASK) + 1, ps->ev.path);
    ev->path_len = n;
    ev->flags |= ps->ev.flags & TC_EV_PATH_TRUNCATED;
}

/* The mapping that holds an init_module image. kmod maps the .ko file and passes the mapping
 * without touching it, so its pages are not resident and bpf_probe_read_user, which cannot
 * fault them in, fails on them: the collector reads those bytes from the file. */
struct tc_module_vma {
    __u64 start;
    __u64 end;
    __u64 pgoff;
    __u64 file;
    __u32 flags;
    __u32 _pad;
};

static long tc_module_vma(struct task_struct *task, struct vm_area_struct *vma,
                          struct tc_module_vma *c)
{
    c->start = vma->vm_start;
    c->end = vma->vm_end;
    c->pgoff = vma->vm_pgoff;
    c->file = (__u64)vma->vm_file;
    /* A private mapping's copied-on-write pages hang off its anon_vma; without one, every
     * page of it is the file's. */
    if (vma->vm_flags & VM_SHARED)
        c->flags = TC_MOD_MAP_SHARED;
    else if (vma->anon_vma)
        c->flags = TC_MOD_MAP_WRITTEN;
    return 0;
}

/* What a module event knows from the syscall's arguments (`a`, saved at its entry): which
 * syscall, init_module's image address and length or finit_module's fd and flags, and the
 * parameter string; everything else zero. */
static __always_inline void tc_module_start(struct tc_module_event *ev, __u32 nr,
                                            const struct tc_obj_args *a, __u64 obj_id)
{
    tc_fill_hdr(&ev->h, TC_REC_MODULE_EVENT);
    ev->obj_id = obj_id;
    ev->ret = 0;
    ev->len = 0;
    ev->captured = 0;
    ev->inode = 0;
    ev->dev = 0;
    ev->fd = -1;
    ev->flags = 0;
    ev->path_len = 0;
    ev->addr = 0;
    ev->map_start = 0;
    ev->map_end = 0;
    ev->map_pgoff = 0;
    ev->ctime = 0;
    ev->mtime = 0;
    ev->size = 0;
    ev->load_flags = 0;
    ev->_pad = 0;
    __u64 uargs;
    if (nr == NR_INIT_MODULE) {
        ev->syscall = TC_MOD_INIT;
        ev->addr = a->a0;
        ev->len = a->a1;
        uargs = a->a2;
    } else {
        ev->syscall = TC_MOD_FINIT;
        ev->fd = (__s32)a->a0;
        ev->load_flags = (__u32)a->a2;
        uargs = a->a1;
    }
    long r = bpf_probe_read_user_str(ev->params, sizeof(ev->params), (void *)uargs);
    ev->params_len = r > 0 ? r - 1 : 0;
}

/* The attempt, at the syscall's exit. Where the kernel's hook sent the image already
 * (module_kread.bpf.h, a.a3 - 1 its obj_id), this event names it and sends no bytes; otherwise
 * init_module's image is copied from the caller's memory here, and finit_module's file is
 * read by the collector. */
static __always_inline void tc_module_exit(__u32 nr, long ret)
{
    struct tc_obj_args a;
    if (!tc_obj_take(nr, &a))
        return;
    union tc_obj_scratch *s = obj_scratch_slot();
    if (!s)
        return;
    struct tc_module_event *ev = &s->module;
    tc_module_start(ev, nr, &a, a.a3 ? a.a3 - 1 : __sync_fetch_and_add(&io_seq, 1));
    ev->ret = ret;
    if (a.a3) {
        ev->flags = TC_MOD_KREAD;
        ev->len = a.kread_len;
    }
    if (nr == NR_INIT_MODULE) {
        struct tc_module_vma m = {};
        if (!a.a3) {
            ev->captured = a.a1 > TC_OBJ_MAX ? TC_OBJ_MAX : a.a1;
            if (!bpf_find_vma(bpf_get_current_task_btf(), a.a0, tc_module_vma, &m, 0) &&
                m.file) {
                ev->flags = TC_MOD_MAPPED | m.flags;
                ev->map_start = m.start;
                ev->map_end = m.end;
                ev->map_pgoff = m.pgoff;
                tc_module_file(ev, (struct file *)m.file);
            }
        }
    } else {
        struct file *f = tc_fd_file(ev->fd);
        if (f)
            tc_module_file(ev, f);
    }
    if (!tc_emit_event(TC_KIND_MODULE, ev, sizeof(*ev)))
        return;
    /* page by page: a page that cannot be read loses only itself */
    if (ev->captured)
        tc_send_user(ev->obj_id, a.a0, ev->captured, TC_KIND_MODULE, 1);
}

/* Kernels without CONFIG_MODULES have no module syscall tracepoints: the raw syscall
 * tracepoints see the attempt (and its ENOSYS). The collector uses these only then. */
SEC("raw_tp/sys_enter")
int tc_module_raw_enter(struct bpf_raw_tracepoint_args *ctx)
{
    long nr = ctx->args[1];
    if (nr != NR_INIT_MODULE && nr != NR_FINIT_MODULE)
        return 0;
    if (!tc_in_scope())
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    tc_obj_save(TC_KIND_MODULE, nr, BPF_CORE_READ(regs, di), BPF_CORE_READ(regs, si),
                BPF_CORE_READ(regs, dx), 0);
    return 0;
}

SEC("raw_tp/sys_exit")
int tc_module_raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = BPF_CORE_READ(regs, orig_ax);
    if (nr != NR_INIT_MODULE && nr != NR_FINIT_MODULE)
        return 0;
    tc_module_exit(nr, ctx->args[1]);
    return 0;
}

/* init_module(image, len, params) and finit_module(fd, params, flags) at their entry: the
 * tracepoints here, fentry on the syscall functions in objects_fentry.bpf.h. */
static __always_inline int tc_module_enter(struct trace_event_raw_sys_enter *ctx, __u32 nr)
{
    if (tc_in_scope())
        tc_obj_save(TC_KIND_MODULE, nr, ctx->args[0], ctx->args[1], ctx->args[2], 0);
    return 0;
}

SEC("tp/syscalls/sys_enter_init_module")
int tc_init_module_enter(struct trace_event_raw_sys_enter *ctx)
{
    return tc_module_enter(ctx, NR_INIT_MODULE);
}

SEC("tp/syscalls/sys_exit_init_module")
int tc_init_module_exit(struct trace_event_raw_sys_exit *ctx)
{
    tc_module_exit(NR_INIT_MODULE, ctx->ret);
    return 0;
}

SEC("tp/syscalls/sys_enter_finit_module")
int tc_finit_module_enter(struct trace_event_raw_sys_enter *ctx)
{
    return tc_module_enter(ctx, NR_FINIT_MODULE);
}

SEC("tp/syscalls/sys_exit_finit_module")
int tc_finit_module_exit(struct trace_event_raw_sys_exit *ctx)
{
    tc_module_exit(NR_FINIT_MODULE, ctx->ret);
    return 0;
}

/* ---- bpf ------------------------------------------------------------------------------ */

/* The BPF_PROG_LOAD part of union bpf_attr (UAPI, stable). */
struct tc_prog_load_attr {
    __u32 prog_type;
    __u32 insn_cnt;
    __u64 insns;
    __u64 license;
    __u32 log_level;
    __u32 log_size;
    __u64 log_buf;
    __u32 kern_version;
    __u32 prog_flags;
    char prog_name[TC_PROG_NAME_LEN];
};

/* bpf(cmd, attr, size): BPF_PROG_LOAD at entry and exit, the tracepoints here, fentry on the
 * syscall function in objects_fentry.bpf.h. */
static __always_inline int tc_bpf_load_enter(struct trace_event_raw_sys_enter *ctx)
{
    if (ctx->args[0] != BPF_PROG_LOAD_CMD || !tc_in_scope())
        return 0;
    tc_obj_save(TC_KIND_BPF, 321, ctx->args[1], ctx->args[2], 0, 0);
    return 0;
}

static __always_inline int tc_bpf_load_exit(struct trace_event_raw_sys_exit *ctx)
{
    struct tc_obj_args a;
    if (!tc_obj_take(321, &a))
        return 0;
    struct tc_prog_load_attr attr = {};
    __u64 size = a.a1 < sizeof(attr) ? a.a1 : sizeof(attr);
    if (bpf_probe_read_user(&attr, size & 0x7f, (void *)a.a0))
        return 0;
    struct tc_bpf_event ev = {};
    tc_fill_hdr(&ev.h, TC_REC_BPF_EVENT);
    ev.obj_id = __sync_fetch_and_add(&io_seq, 1);
    ev.ret = ctx->ret;
    ev.insn_cnt = attr.insn_cnt;
    ev.prog_type = attr.prog_type;
    __builtin_memcpy(ev.prog_name, attr.prog_name, TC_PROG_NAME_LEN);
    if (ctx->ret >= 0) {
        /* the new fd's file holds the program (its private_data) */
        struct file *f = tc_fd_file((__s32)ctx->ret);
        if (f) {
            struct bpf_prog *prog = (struct bpf_prog *)BPF_CORE_READ(f, private_data);
            ev.prog_id = BPF_CORE_READ(prog, aux, id);
        }
    }
    __u64 bytes = (__u64)attr.insn_cnt * 8;
    ev.captured = bytes > TC_OBJ_MAX ? TC_OBJ_MAX : bytes;
    if (!tc_emit_event(TC_KIND_BPF, &ev, sizeof(ev)))
        return 0;
    tc_send_user(ev.obj_id, attr.insns, ev.captured, TC_KIND_BPF, 0);
    return 0;
}

SEC("tp/syscalls/sys_enter_bpf")
int tc_bpf_enter(struct trace_event_raw_sys_enter *ctx)
{
    return tc_bpf_load_enter(ctx);
}

SEC("tp/syscalls/sys_exit_bpf")
int tc_bpf_exit(struct trace_event_raw_sys_exit *ctx)
{
    return tc_bpf_load_exit(ctx);
}

#endif
