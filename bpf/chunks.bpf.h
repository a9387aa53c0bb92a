/* Ring buffers and the chunked copy of user memory that every capture kind shares.
 *
 * A payload (written bytes, a memory region, a module image, BPF instructions) is sent as
 * tc_file_data records of up to TC_CHUNK bytes, each tagged with its id and offset, after the
 * event that describes it. A chunk that cannot be sent or read is counted, and the collector
 * turns the hole into an explicit lost range. */
#ifndef TRACECAP_CHUNKS_BPF_H
#define TRACECAP_CHUNKS_BPF_H

#define TC_CHUNK_MASK (2 * TC_CHUNK - 1)
#define TC_MAX_STEPS 16384       /* chunks per payload: 512 MiB at TC_CHUNK */

/* File contents, the high-volume kind, have their own ring so that a write flood cannot
 * crowd out executions, memory regions, modules and BPF programs. Both are resized by the
 * collector before load. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 32 << 20);
} file_rb SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 8 << 20);
} obj_rb SEC(".maps");

struct tc_data_scratch {
    struct tc_file_cont cont;    /* right before hdr: a continuation's first chunk is sent
                                  * from here, as one record */
    struct tc_file_data hdr;
    __u8 data[2 * TC_CHUNK];     /* twice the chunk so that `len & TC_CHUNK_MASK` is in bounds */
};

/* One slot per CPU; sized to the number of possible CPUs by the collector. A plain array,
 * not a per-CPU one, because per-CPU values are capped at 32 KiB. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tc_data_scratch);
} data_scratch SEC(".maps");

/* Ids of syscalls and objects: unique per load, joining events with their data. */
__u64 io_seq = 0;

/* Always 0, but unknown to the verifier: starting a copy loop from it stops the verifier from
 * simulating every iteration when the length happens to be a constant. */
__u64 tc_opaque_zero = 0;

/* High-volume records wake the collector only when the data waiting in the ring crosses
 * TC_WAKEUP_BYTES: a wakeup per record costs the traced process an interrupt (an IPI: it took
 * 29% of a UDP flood's CPU when every record past the mark forced one) and the collector a
 * poll per record. The collector also polls every 10 ms, so a trickle waits at most that. */
#define TC_WAKEUP_BYTES (256 * 1024)

static __always_inline __u64 tc_wakeup_flag(void *rb, __u64 size)
{
    __u64 avail = bpf_ringbuf_query(rb, BPF_RB_AVAIL_DATA);
    return avail < TC_WAKEUP_BYTES && avail + size >= TC_WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
                                                                       : BPF_RB_NO_WAKEUP;
}

static __always_inline long tc_output(__u32 ring, void *data, __u64 size)
{
    if (ring)
        return bpf_ringbuf_output(&obj_rb, data, size, 0);
    return bpf_ringbuf_output(&file_rb, data, size, tc_wakeup_flag(&file_rb, size));
}

/* Mask in a way the compiler cannot fold away, so the verifier sees the bound. */
static __always_inline __u64 tc_bound(__u64 v, const __u64 mask)
{
    asm volatile("%[v] &= %[m]" : [v] "+r"(v) : [m] "i"(mask));
    return v;
}

/* Send the chunk record `hdr` (its `len` bytes of data after it) on `ring`, counting it under
 * the kind's counters from `base`: `want` bytes asked, dropped when the ring is full or none
 * could be read. */
static __always_inline void tc_output_chunk(__u32 ring, struct tc_file_data *hdr, __u32 len,
                                            __u64 want, __u32 base)
{
    if (tc_output(ring, hdr, sizeof(*hdr) + tc_bound(len, TC_CHUNK_MASK))) {
        tc_count(base + TC_CNT_CHUNK_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, want);
        return;
    }
    tc_count(base + TC_CNT_CHUNKS, 1);
    tc_count(base + TC_CNT_BYTES, len);
    if (!len)
        tc_count(base + TC_CNT_DROPPED_BYTES, want);
}

struct tc_emit_ctx {
    __u64 id;
    __u64 total;                 /* bytes the syscall transferred */
    __u64 done;                  /* bytes handled so far */
    __u64 buf;                   /* user buffer or iovec array */
    __u64 iovcnt;
    __u64 iov_done;              /* bytes consumed of the current iovec */
    __u32 iov_idx;
    __u32 is_vec;
    __u32 counter_kind;          /* enum tc_counter_kind */
    __u32 rec_kind;              /* TC_REC_FILE_DATA or TC_REC_OBJ_DATA */
    __u32 ring;                  /* 0: file_rb, 1: obj_rb */
    __u32 slot;                  /* this CPU's data_scratch slot */
    __u32 page_chunks;           /* 1: chunks never cross a page (see tc_send_user) */
    __u32 cont;                  /* 1: the first chunk goes out behind a tc_file_cont; stays 1
                                  * if that record could not be sent */
    __u64 cont_ts;
    __u64 cont_prev;
    __u64 cont_pos;
};

static long tc_emit_chunk(__u32 i, struct tc_emit_ctx *c)
{
    __u64 seg_ptr, seg_len;
    if (c->done >= c->total)
        return 1;
    if (c->is_vec) {
        struct iovec iov = {};
        if (c->iov_idx >= c->iovcnt)
            return 1;
        if (bpf_probe_read_user(&iov, sizeof(iov),
                                (void *)(c->buf + (__u64)c->iov_idx * sizeof(iov))))
            return 1;
        if (c->iov_done >= iov.iov_len) {
            c->iov_idx++;
            c->iov_done = 0;
            return 0;
        }
        seg_ptr = (__u64)iov.iov_base + c->iov_done;
        seg_len = iov.iov_len - c->iov_done;
    } else {
        seg_ptr = c->buf + c->done;
        seg_len = c->total - c->done;
    }
    __u64 want = c->total - c->done;
    if (want > seg_len)
        want = seg_len;
    if (want > TC_CHUNK)
        want = TC_CHUNK;
    if (c->page_chunks) {
        __u64 to_page_end = 4096 - (seg_ptr & 4095);
        if (want > to_page_end)
            want = to_page_end;
    }

    struct tc_data_scratch *s = bpf_map_lookup_elem(&data_scratch, &c->slot);
    if (!s)
        return 1;
    __u32 len = tc_bound(want, TC_CHUNK_MASK);
    s->hdr.kind = c->rec_kind;
    s->hdr.io_id = c->id;
    s->hdr.io_off = c->done;
    s->hdr.want = len;
    s->hdr.flags = 0;
    if (bpf_probe_read_user(s->data, len, (void *)seg_ptr)) {
        s->hdr.flags = TC_DATA_UNREADABLE;
        len = 0;
    }
    s->hdr.len = len;
    __u32 base = c->counter_kind * TC_CNT_PER_KIND;
    if (c->cont) {
        s->cont.kind = TC_REC_FILE_CONT;
        s->cont.cpu = c->slot;
        s->cont.ts = c->cont_ts;
        s->cont.io_id = c->id;
        s->cont.prev_io_id = c->cont_prev;
        s->cont.io_len = c->total;
        s->cont.pos = c->cont_pos;
        s->cont.req = c->iovcnt;
        if (tc_output(c->ring, &s->cont,
                      sizeof(s->cont) + sizeof(s->hdr) + tc_bound(len, TC_CHUNK_MASK)))
            return 1;            /* the caller accounts for the whole syscall */
        c->cont = 0;
        tc_count(base + TC_CNT_CHUNKS, 1);
        tc_count(base + TC_CNT_BYTES, len);
        if (!len)
            tc_count(base + TC_CNT_DROPPED_BYTES, want);
    } else {
        tc_output_chunk(c->ring, &s->hdr, len, want, base);
    }
    c->done += want;
    c->iov_done += want;
    return 0;
}

/* Send `total` bytes of user memory at `buf` as chunks with id `id` after its event.
 * With `page_chunks`, a page that cannot be read (never touched, swapped out) loses only
 * itself rather than the whole chunk around it: used for memory regions. */
static __always_inline void tc_send_user(__u64 id, __u64 buf, __u64 total, __u32 counter_kind,
                                         __u32 page_chunks)
{
    struct tc_emit_ctx c = {
        .id = id, .total = total, .done = tc_opaque_zero, .buf = buf, .counter_kind = counter_kind,
        .rec_kind = TC_REC_OBJ_DATA, .ring = 1, .slot = bpf_get_smp_processor_id(),
        .page_chunks = page_chunks,
    };
    bpf_loop(TC_MAX_STEPS, tc_emit_chunk, &c, 0);
    if (c.done < c.total)
        tc_count(counter_kind * TC_CNT_PER_KIND + TC_CNT_DROPPED_BYTES, c.total - c.done);
}

#endif
