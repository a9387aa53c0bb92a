/* One-slot per-CPU arrays: where a program keeps state too large for its stack (kernels before
 * 6.13 allow a call chain 512 bytes, see tests/e2e/test_bpf_stack.py) or per-CPU counters that
 * need no atomics. A program and the bpf_loop callbacks it calls run on one CPU without
 * preemption by another BPF program of the same kind, so the slot is theirs while they run.
 *
 * TC_SLOT(name, value_type) declares the map `name` and `name_slot()`, its one value or NULL. */
#define TC_SLOT(name, value_type)                                                              \
    struct {                                                                                   \
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                               \
        __uint(max_entries, 1);                                                                \
        __type(key, __u32);                                                                    \
        __type(value, value_type);                                                             \
    } name SEC(".maps");                                                                       \
    static __always_inline value_type *name##_slot(void)                                       \
    {                                                                                          \
        __u32 zero = 0;                                                                        \
        return bpf_map_lookup_elem(&name, &zero);                                              \
    }
