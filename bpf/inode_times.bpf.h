/* An inode's change and modification times in ns, on every inode layout since 5.10 (CO-RE:
 * each flavor's fields are relocated one by one, so a field is read only where it exists).
 * 0 when the layout is none of these: callers treat 0 as "the kernel could not tell". */
#pragma once

/* 6.6-6.10: the change time is __i_ctime; 6.7-6.10: the modification time is __i_mtime. */
struct inode___ts64_hidden {
    struct timespec64 __i_ctime;
    struct timespec64 __i_mtime;
} __attribute__((preserve_access_index));

/* Before 6.6 (ctime) and 6.7 (mtime): plain timespec64 fields (Debian 12's 6.1). */
struct inode___ts64 {
    struct timespec64 i_ctime;
    struct timespec64 i_mtime;
} __attribute__((preserve_access_index));

/* Since 6.13 the top bits of i_ctime_nsec are flags (I_CTIME_QUERIED is set once someone has
 * looked at the time): nanoseconds fit in the low 30 bits. */
#define TC_CTIME_NSEC_MASK ((1u << 30) - 1)

static __always_inline __u64 tc_inode_ctime(struct inode *inode)
{
    struct inode___ts64_hidden *hidden = (void *)inode;
    struct inode___ts64 *ts64 = (void *)inode;
    if (bpf_core_field_exists(inode->i_ctime_sec))
        return BPF_CORE_READ(inode, i_ctime_sec) * 1000000000ull +
               (BPF_CORE_READ(inode, i_ctime_nsec) & TC_CTIME_NSEC_MASK);
    if (bpf_core_field_exists(hidden->__i_ctime))
        return BPF_CORE_READ(hidden, __i_ctime.tv_sec) * 1000000000ull +
               BPF_CORE_READ(hidden, __i_ctime.tv_nsec);
    if (bpf_core_field_exists(ts64->i_ctime))
        return BPF_CORE_READ(ts64, i_ctime.tv_sec) * 1000000000ull +
               BPF_CORE_READ(ts64, i_ctime.tv_nsec);
    return 0;
}

static __always_inline __u64 tc_inode_mtime(struct inode *inode)
{
    struct inode___ts64_hidden *hidden = (void *)inode;
    struct inode___ts64 *ts64 = (void *)inode;
    if (bpf_core_field_exists(inode->i_mtime_sec))
        return BPF_CORE_READ(inode, i_mtime_sec) * 1000000000ull +
               BPF_CORE_READ(inode, i_mtime_nsec);
    if (bpf_core_field_exists(hidden->__i_mtime))
        return BPF_CORE_READ(hidden, __i_mtime.tv_sec) * 1000000000ull +
               BPF_CORE_READ(hidden, __i_mtime.tv_nsec);
    if (bpf_core_field_exists(ts64->i_mtime))
        return BPF_CORE_READ(ts64, i_mtime.tv_sec) * 1000000000ull +
               BPF_CORE_READ(ts64, i_mtime.tv_nsec);
    return 0;
}
