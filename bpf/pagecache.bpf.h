/* A file's bytes read from its page cache, in the kernel, at the moment of an event: used for
 * an executed memfd or deleted binary (objects.bpf.h tc_exec), whose file is gone once its
 * short-lived process exits, before the collector could open /proc/PID/exe (measured: 5 of 20
 * fast memfd executions lost that way).
 *
 * Tracing programs cannot read a file (no kernel_read, no file dynptr before 6.19) and
 * kprobes, fentry and LSM do not run on the target kernel, so the pages are found as the
 * kernel's own lookup does: the file's address_space xarray (i_pages) gives the folio holding
 * each page index; the folio's struct page lies in the vmemmap array, so its page frame
 * number is (page - vmemmap_base) / sizeof(struct page), and its bytes are in the direct map
 * at page_offset_base + pfn * 4096 (x86-64). Both bases are randomized (KASLR) and in neither
 * BTF nor kallsyms here: the direct map is found by pagewalk.bpf.h's probe; vmemmap_base is
 * 1 GiB aligned (arch/x86/mm/kaslr.c), so it is one of the 1 GiB boundaries below a struct
 * page, and the right one maps the current task_struct's page to the slab of the
 * "task_struct" cache. A wrong base finds no such slab, and then nothing is read (the bytes
 * are reported unreadable, never guessed).
 *
 * Page cache states: a folio present and up to date is copied; a shmem (memfd, tmpfs) index
 * with no folio, or a folio not up to date (fallocated), is a hole and reads as zeros; a swap
 * entry, a page of another file system not cached, or any entry this walk does not know is
 * unreadable (the collector then reads those ranges from the file if it can still open it). */
#ifndef TRACECAP_PAGECACHE_BPF_H
#define TRACECAP_PAGECACHE_BPF_H

#define TC_PAGE 4096
#define TC_XA_SHIFT 6
#define TC_XA_MASK 63
#define TC_XA_DEPTH 8              /* 6 bits a level: 8 levels cover any 32-bit page index */
#define TC_VMEMMAP_TRIES 64        /* 1 GiB candidates: 64 GiB of struct pages, 4 TiB of RAM */
#define TC_TMPFS_MAGIC 0x01021994
#define TC_HUGETLBFS_MAGIC 0x958458f6

/* vmemmap_base once found; 0: not looked for yet; 1: not found. */
__u64 tc_vmemmap_base = 0;

struct tc_vmemmap_search {
    __u64 near;                    /* a struct page address */
    __u64 task_pfn;                /* page frame of the current task_struct */
    __u64 found;
};

static long tc_vmemmap_try(__u32 k, struct tc_vmemmap_search *s)
{
    __u64 base = (s->near & ~(TC_GIB - 1)) - ((__u64)k << 30);
    __u64 page = base + s->task_pfn * bpf_core_type_size(struct page);
    __u64 head = 0;
    struct page *p = (void *)page;
    if (bpf_probe_read_kernel(&head, sizeof(head), &p->compound_head))
        return 0;
    if (head & 1)
        page = head - 1;           /* a tail page: its folio's head */
    struct slab *sl = (void *)page;
    struct kmem_cache *cache = NULL;
    const char *name = NULL;
    struct { __u64 lo; __u32 hi; } got = {};
    if (bpf_probe_read_kernel(&cache, sizeof(cache), &sl->slab_cache) || !cache ||
        bpf_probe_read_kernel(&name, sizeof(name), &cache->name) || !name ||
        bpf_probe_read_kernel(&got, 12, name))
        return 0;
    /* "task_struct\0", little-endian */
    if (got.lo != 0x7274735f6b736174ull || got.hi != 0x00746375u)
        return 0;
    s->found = base;
    return 1;
}

/* vmemmap_base (0 if not found), given any struct page address and the direct map's base. */
static __always_inline __u64 tc_vmemmap(__u64 near, __u64 dmap)
{
    __u64 base = tc_vmemmap_base;
    if (base)
        return base == 1 ? 0 : base;
    __u64 task = bpf_get_current_task();
    if (!dmap || task < dmap)
        return 0;
    struct tc_vmemmap_search s = { .near = near, .task_pfn = (task - dmap) >> 12 };
    bpf_loop(TC_VMEMMAP_TRIES, tc_vmemmap_try, &s, 0);
    tc_vmemmap_base = s.found ?: 1;
    return s.found;
}

/* Is `f` a memfd (memfd_create): a shmem or hugetlbfs file set up without a directory (its
 * dentry is its own parent) and named "memfd:...". A file of that name on a mounted tmpfs
 * has a parent directory, so it is not taken for one. */
static __always_inline bool tc_is_memfd(struct file *f)
{
    struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
    unsigned long magic = BPF_CORE_READ(d, d_sb, s_magic);
    if (magic != TC_TMPFS_MAGIC && magic != TC_HUGETLBFS_MAGIC)
        return false;
    if (BPF_CORE_READ(d, d_parent) != d)
        return false;
    char name[6] = {};
    bpf_probe_read_kernel(name, sizeof(name), BPF_CORE_READ(d, d_name.name));
    return name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' &&
           name[4] == 'd' && name[5] == ':';
}

enum { TC_PC_PAGE = 0, TC_PC_HOLE, TC_PC_UNREADABLE };

/* The entry of page `index` in the xarray whose head is `entry`: a folio, NULL, or an entry
 * that is not a folio (a value: swap or shadow; a retry; 2 for a slot that could not be
 * read). Multi-index entries (large folios) are followed from their sibling slots to the
 * folio. */
static __always_inline __u64 tc_xa_load(__u64 entry, __u64 index)
{
    for (int level = 0; level < TC_XA_DEPTH; level++) {
        if ((entry & 3) != 2 || entry <= 4096) {
            /* not a node: the entry; at the head, it holds index 0 only */
            return level || !index ? entry : 0;
        }
        struct xa_node *node = (void *)(entry - 2);
        __u8 shift = BPF_CORE_READ(node, shift) & 63;
        if (level == 0 && (index >> shift) > TC_XA_MASK)
            return 0;              /* past what the tree holds: nothing there */
        __u64 off = (index >> shift) & TC_XA_MASK;
        if (bpf_probe_read_kernel(&entry, sizeof(entry), &node->slots[off]))
            return 2;              /* unreadable: never taken for an empty slot (a hole) */
        if ((entry & 3) == 2 && entry < ((TC_XA_MASK << 2) | 2)) {   /* a sibling slot */
            off = (entry >> 2) & TC_XA_MASK;
            if (bpf_probe_read_kernel(&entry, sizeof(entry), &node->slots[off]))
                return 2;
        }
    }
    return 2;                      /* deeper than any index: not understood */
}

struct tc_pc_ctx {
    __u64 id;
    __u64 total;                   /* bytes to send */
    __u64 head;                    /* i_pages.xa_head */
    __u64 dmap;
    __u64 vmemmap;
    __u32 shmem;
    __u32 slot;
    __u32 uptodate_bit;
    __u32 counter_kind;
};

/* Where page `index`'s bytes are in the direct map, or why they cannot be read. */
/* folio->flags is a memdesc_flags_t (a struct of one unsigned long) on this machine's 6.18 and
 * an unsigned long on 6.1 and 6.12, where the relocation of the former did not resolve (the
 * exec programs did not load): the same word either way. */
struct folio___ulong_flags {
    unsigned long flags;
} __attribute__((preserve_access_index));

static __always_inline const void *tc_folio_flags(struct folio *folio)
{
    struct folio___ulong_flags *old = (void *)folio;
    if (bpf_core_field_exists(old->flags))
        return &old->flags;
    return &folio->flags;
}

static __always_inline int tc_pc_locate(struct tc_pc_ctx *c, __u64 index, __u64 *addr)
{
    if (!c->dmap)
        return TC_PC_UNREADABLE;
    __u64 entry = tc_xa_load(c->head, index);
    if (!entry)
        return c->shmem ? TC_PC_HOLE : TC_PC_UNREADABLE;
    if (entry & 3)
        return TC_PC_UNREADABLE;   /* a value (swapped out) or an internal entry */
    struct folio *folio = (void *)entry;
    if (!c->vmemmap) {
        c->vmemmap = tc_vmemmap(entry, c->dmap);
        if (!c->vmemmap)
            return TC_PC_UNREADABLE;
    }
    __u64 flags = 0, first = 0;
    if (bpf_probe_read_kernel(&flags, sizeof(flags), tc_folio_flags(folio)))
        return TC_PC_UNREADABLE;   /* not a folio after all: never a hole of zeros */
    if (!((flags >> c->uptodate_bit) & 1))
        return c->shmem ? TC_PC_HOLE : TC_PC_UNREADABLE;
    if (bpf_probe_read_kernel(&first, sizeof(first), &folio->index) || first > index)
        return TC_PC_UNREADABLE;
    __u64 page = entry + (index - first) * bpf_core_type_size(struct page);
    if (page < c->vmemmap)
        return TC_PC_UNREADABLE;
    __u64 pfn = (page - c->vmemmap) / bpf_core_type_size(struct page);
    *addr = c->dmap + (pfn << 12);
    return TC_PC_PAGE;
}

static long tc_pc_page(__u32 i, struct tc_pc_ctx *c)
{
    __u64 off = (__u64)i * TC_PAGE;
    if (off >= c->total)
        return 1;
    __u64 want = c->total - off;
    if (want > TC_PAGE)
        want = TC_PAGE;
    struct tc_data_scratch *s = bpf_map_lookup_elem(&data_scratch, &c->slot);
    if (!s)
        return 1;
    __u64 addr = 0;
    int where = tc_pc_locate(c, i, &addr);
    __u32 len = tc_bound(want, TC_CHUNK_MASK);
    s->hdr.kind = TC_REC_OBJ_DATA;
    s->hdr.io_id = c->id;
    s->hdr.io_off = off;
    s->hdr.want = len;
    s->hdr.flags = 0;
    if (where == TC_PC_HOLE) {
        s->hdr.flags = TC_DATA_ZERO;
        len = 0;
    } else if (where != TC_PC_PAGE || bpf_probe_read_kernel(s->data, len, (void *)addr)) {
        s->hdr.flags = TC_DATA_UNREADABLE;
        len = 0;
    }
    s->hdr.len = len;
    __u32 base = c->counter_kind * TC_CNT_PER_KIND;
    if (bpf_ringbuf_output(&obj_rb, &s->hdr, sizeof(s->hdr) + tc_bound(len, TC_CHUNK_MASK), 0)) {
        tc_count(base + TC_CNT_CHUNK_DROPS, 1);
        tc_count(base + TC_CNT_DROPPED_BYTES, want);
    } else {
        tc_count(base + TC_CNT_CHUNKS, 1);
        tc_count(base + TC_CNT_BYTES, len);
        if (s->hdr.flags & TC_DATA_UNREADABLE)
            tc_count(base + TC_CNT_DROPPED_BYTES, want);
    }
    return 0;
}

/* Send the first `total` bytes of `f` from its page cache as chunks of id `id` (one a page),
 * after the event that announced them. `pgd` is the current mm's, for the direct map. */
static __always_inline void tc_send_file_pages(__u64 id, struct file *f, __u64 total, __u64 pgd,
                                               __u32 counter_kind)
{
    struct address_space *mapping = BPF_CORE_READ(f, f_mapping);
    unsigned long magic = BPF_CORE_READ(f, f_inode, i_sb, s_magic);
    struct tc_pc_ctx c = {
        .id = id, .total = total, .dmap = tc_dmap(pgd), .slot = bpf_get_smp_processor_id(),
        .shmem = magic == TC_TMPFS_MAGIC,
        .uptodate_bit = bpf_core_enum_value(enum pageflags, PG_uptodate),
        .counter_kind = counter_kind,
    };
    c.head = (__u64)BPF_CORE_READ(mapping, i_pages.xa_head);
    bpf_loop(TC_MAX_STEPS, tc_pc_page, &c, 0);
}

#endif
