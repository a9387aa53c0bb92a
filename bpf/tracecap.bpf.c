/* tracecap's kernel side: one CO-RE object; the collector enables the programs each
 * --capture option needs (autoload) and fills `cfg` in .rodata before load. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "records.h"

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define S_IFCHR 0020000
#define S_IFIFO 0010000

char LICENSE[] SEC("license") = "GPL";

#include "slot.bpf.h"
#include "scope.bpf.h"
#include "containers.bpf.h"
#include "chunks.bpf.h"
#include "inode_times.bpf.h"
#include "file_io.bpf.h"
#include "pipes.bpf.h"
#include "shared_exits.bpf.h"
#include "file_io_fentry.bpf.h"
#include "pagewalk.bpf.h"
#include "pagecache.bpf.h"
#include "mappings.bpf.h"
#include "mappings_fentry.bpf.h"
#include "objects.bpf.h"
#include "objects_fentry.bpf.h"
#include "module_kread.bpf.h"
#include "procs.bpf.h"
#include "mem.bpf.h"
#include "mem_fentry.bpf.h"
#include "net.bpf.h"

/* Keep the record types in the object's BTF so that tests can check the Python decoders. */
struct tc_hdr _tc_abi_hdr __attribute__((unused));
struct tc_file_event _tc_abi_event __attribute__((unused));
struct tc_file_data _tc_abi_data __attribute__((unused));
struct tc_file_cont _tc_abi_cont __attribute__((unused));
struct tc_file_xfer _tc_abi_xfer __attribute__((unused));
struct tc_exec_event _tc_abi_exec __attribute__((unused));
struct tc_proc_event _tc_abi_proc __attribute__((unused));
struct tc_mem_event _tc_abi_mem __attribute__((unused));
struct tc_mem_proc _tc_abi_mem_proc __attribute__((unused));
struct tc_module_event _tc_abi_module __attribute__((unused));
struct tc_bpf_event _tc_abi_bpf __attribute__((unused));
struct tc_drop_key _tc_abi_drop_key __attribute__((unused));
struct tc_drop_val _tc_abi_drop_val __attribute__((unused));
struct tc_packet _tc_abi_packet __attribute__((unused));
struct tc_sock_owner _tc_abi_sock_owner __attribute__((unused));
struct tc_cgroup_rule _tc_abi_cgroup_rule __attribute__((unused));
struct tc_cgroup_state _tc_abi_cgroup_state __attribute__((unused));
struct tc_cid_prefix _tc_abi_cid_prefix __attribute__((unused));
struct tc_sock_adopt _tc_abi_sock_adopt __attribute__((unused));
