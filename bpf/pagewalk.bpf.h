/* A user page's page table entry, found by walking the current process's page tables from BPF
 * (x86-64). The memory capture (bpf/mem.bpf.h) sends pages of anonymous mappings that were
 * never touched as the zeros they read as; the mapping capture (bpf/mappings.bpf.h) reads the
 * dirty bit of a shared file mapping's pages. */
#ifndef TRACECAP_PAGEWALK_BPF_H
#define TRACECAP_PAGEWALK_BPF_H

/* x86-64 page tables: bits 12..51 of an entry hold the physical address. */
#define TC_PTE_PRESENT 0x1ull
#define TC_PTE_HUGE 0x80ull
#define TC_PFN_MASK 0x000ffffffffff000ull
#define TC_GIB (1ull << 30)
#define TC_DMAP_TRIES 1024         /* direct-map base candidates: 1 TiB of physical addresses */

/* page_offset_base (randomized with KASLR) is in neither kallsyms (no CONFIG_KALLSYMS_ALL) nor
 * BTF. The PGD page is in the direct map: with the right 1 GiB-aligned base B and the right
 * number of paging levels (4, or 5 with LA57), walking the kernel's own page tables for the
 * PGD's address gives physical address pgd - B. One candidate does; a wrong one reads
 * elsewhere and, in practice, never lands on that exact address: a wrong layout (memory
 * encryption bits in the entries, another architecture's tables) finds none, and pages that
 * cannot be read then stay unreadable rather than being called zeros.
 * tc_dmap_base 0: not looked for yet; 1: not found. */
__u64 tc_dmap_base = 0;
__u32 tc_dmap_levels = 0;

enum { TC_WALK_NONE = 0, TC_WALK_PRESENT, TC_WALK_UNKNOWN };

/* Follow `va` from `pgd` through `levels` levels of tables (read through the direct map at
 * `base`): NONE when an entry on the way is empty (nothing was ever mapped there), PRESENT with
 * the leaf entry and its span's shift, UNKNOWN for anything else (swapped out, a marker, an
 * unreadable table). Level 0 holds the PTEs; levels 1 and 2 may map 2 MiB and 1 GiB pages. */
static __always_inline int tc_walk_leaf(__u64 base, __u64 pgd, __u64 va, __u32 levels,
                                        __u64 *leaf, __u32 *leaf_shift)
{
    __u64 table = pgd;
    for (int level = 4; level >= 0; level--) {
        if (level >= levels)
            continue;
        __u32 shift = 12 + 9 * level;
        __u64 e = 0;
        if (bpf_probe_read_kernel(&e, 8, (void *)(table + ((va >> shift) & 511) * 8)))
            return TC_WALK_UNKNOWN;
        if (!e)
            return TC_WALK_NONE;
        if (!(e & TC_PTE_PRESENT))
            return TC_WALK_UNKNOWN;
        if (level == 0 || ((level == 1 || level == 2) && (e & TC_PTE_HUGE))) {
            *leaf = e;
            *leaf_shift = shift;
            return TC_WALK_PRESENT;
        }
        table = base + (e & TC_PFN_MASK);
    }
    return TC_WALK_UNKNOWN;
}

/* tc_walk_leaf's answer, with the physical address of `va` when PRESENT. */
static __always_inline int tc_walk(__u64 base, __u64 pgd, __u64 va, __u32 levels, __u64 *phys)
{
    __u64 e = 0;
    __u32 shift = 12;
    int r = tc_walk_leaf(base, pgd, va, levels, &e, &shift);
    if (r == TC_WALK_PRESENT) {
        __u64 span = (1ull << shift) - 1;
        *phys = (e & TC_PFN_MASK & ~span) + (va & span);
    }
    return r;
}

struct tc_dmap_search {
    __u64 pgd;
    __u64 found;
    __u32 levels;
};

static long tc_dmap_try(__u32 k, struct tc_dmap_search *s)
{
    __u64 base = (s->pgd & ~(TC_GIB - 1)) - ((__u64)k << 30);
    __u64 phys = 0;
    if (tc_walk(base, s->pgd, s->pgd, s->levels, &phys) == TC_WALK_PRESENT &&
        phys == s->pgd - base) {
        s->found = base;
        return 1;
    }
    return 0;
}

static __always_inline __u64 tc_dmap(__u64 pgd)
{
    __u64 base = tc_dmap_base;
    if (base)
        return base == 1 ? 0 : base;
    struct tc_dmap_search s = { .pgd = pgd, .levels = 4 };
    bpf_loop(TC_DMAP_TRIES, tc_dmap_try, &s, 0);
    if (!s.found) {
        s.levels = 5;
        bpf_loop(TC_DMAP_TRIES, tc_dmap_try, &s, 0);
    }
    tc_dmap_levels = s.levels;
    tc_dmap_base = s.found ?: 1;
    return s.found;
}

#endif
