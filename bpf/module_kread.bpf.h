/* Module images as the kernel has them (collector/hooks.py "kernel_read_file" of module):
 * fentry on the LSM's two post-read hooks, which see the image whichever syscall carried it.
 *
 *   security_kernel_post_read_file(file, buf, size, id): finit_module's file, read whole by the
 *     kernel (kernel_read_file, id READING_MODULE), compressed or not as the file is;
 *   security_kernel_post_load_data(buf, size, id, description): init_module's image after the
 *     kernel's copy_from_user (id LOADING_MODULE).
 *
 * Both have these arguments on 5.10, 6.1, 6.12 and 6.18 (their BTF). The image is sent from the
 * kernel's buffer, so finit_module needs no read of the file by the collector (whose identity
 * check refuses a file whose ctime moved, as on 9p) and init_module no read of pages the
 * caller never touched. The hooks run inside the syscall, before its return value is known:
 * they send an event flagged TC_MOD_KREAD_IMAGE and the bytes, and leave its obj_id in the
 * syscall's saved arguments, so that the exit program (objects.bpf.h tc_module_exit) sends the
 * attempt (TC_MOD_KREAD, its ret) under the same obj_id; the collector holds the image's
 * messages until then (collector/module_images.py HeldImages). Only loads by a syscall that the
 * entry program saw (in scope) are sent: firmware, kexec and policy reads are ignored. */
#ifndef TRACECAP_MODULE_KREAD_BPF_H
#define TRACECAP_MODULE_KREAD_BPF_H

/* The chunks of a kernel buffer. Its own loop rather than a flag of chunks.bpf.h's tc_emit_ctx:
 * that context is on the stack of the deepest call chains (sendmmsg's exit is at the 512-byte
 * limit before 6.13) and the kernel's buffer needs neither iovecs nor continuations. */
struct tc_kread_ctx {
    __u64 id;
    __u64 buf;
    __u64 total;
    __u64 done;
    __u32 slot;
    __u32 _pad;
};

static long tc_kread_chunk(__u32 i, struct tc_kread_ctx *c)
{
    if (c->done >= c->total)
        return 1;
    struct tc_data_scratch *s = bpf_map_lookup_elem(&data_scratch, &c->slot);
    if (!s)
        return 1;
    __u64 want = c->total - c->done;
    if (want > TC_CHUNK)
        want = TC_CHUNK;
    __u32 len = tc_bound(want, TC_CHUNK_MASK);
    s->hdr.kind = TC_REC_OBJ_DATA;
    s->hdr.io_id = c->id;
    s->hdr.io_off = c->done;
    s->hdr.want = len;
    s->hdr.flags = 0;
    if (bpf_probe_read_kernel(s->data, len, (void *)(c->buf + c->done))) {
        s->hdr.flags = TC_DATA_UNREADABLE;
        len = 0;
    }
    s->hdr.len = len;
    __u32 base = TC_KIND_MODULE * TC_CNT_PER_KIND;
    tc_output_chunk(1, &s->hdr, len, want, base);
    c->done += want;
    return 0;
}

/* The image of the module syscall `nr` the current thread is in, if its entry was saved. */
static __always_inline int tc_kread_image(__u32 nr, struct file *file, __u64 buf, __s64 size)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    struct tc_obj_args *a = bpf_map_lookup_elem(&obj_pending, &tid);
    if (!a || a->nr != nr || size < 0)
        return 0;
    union tc_obj_scratch *s = obj_scratch_slot();
    if (!s)
        return 0;
    struct tc_module_event *ev = &s->module;
    tc_module_start(ev, nr, a, __sync_fetch_and_add(&io_seq, 1));
    ev->flags = TC_MOD_KREAD_IMAGE;
    ev->len = size;
    ev->captured = size > TC_OBJ_MAX ? TC_OBJ_MAX : size;
    if (file)
        tc_module_file(ev, file);
    /* the exit names this image even if its event is dropped: the collector then has the
     * attempt and counts the image lost, rather than reading the file */
    a->a3 = ev->obj_id + 1;
    a->kread_len = size;
    if (!tc_emit_event(TC_KIND_MODULE, ev, sizeof(*ev)))
        return 0;
    struct tc_kread_ctx c = {
        .id = ev->obj_id, .buf = buf, .total = ev->captured, .done = tc_opaque_zero,
        .slot = bpf_get_smp_processor_id(),
    };
    bpf_loop(TC_MAX_STEPS, tc_kread_chunk, &c, 0);
    if (c.done < c.total)
        tc_count(TC_KIND_MODULE * TC_CNT_PER_KIND + TC_CNT_DROPPED_BYTES, c.total - c.done);
    return 0;
}

SEC("fentry/security_kernel_post_read_file")
int BPF_PROG(tc_kread_file, struct file *file, char *buf, loff_t size,
             enum kernel_read_file_id id)
{
    if (id != bpf_core_enum_value(enum kernel_read_file_id, READING_MODULE))
        return 0;
    return tc_kread_image(NR_FINIT_MODULE, file, (__u64)buf, size);
}

SEC("fentry/security_kernel_post_load_data")
int BPF_PROG(tc_kread_data, char *buf, loff_t size, enum kernel_load_data_id id)
{
    if (id != bpf_core_enum_value(enum kernel_load_data_id, LOADING_MODULE))
        return 0;
    return tc_kread_image(NR_INIT_MODULE, NULL, (__u64)buf, size);
}

#endif
