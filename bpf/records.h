/* The kernel/user ABI of tracecap: every record the BPF programs put in the ring buffer, and the
 * configuration block user space writes into .rodata before load.
 *
 * bpf/records.py decodes these structs; tests/unit/bpf/test_records_abi.py checks that its sizes
 * and offsets equal the ones in the compiled object's BTF. Change both sides together.
 * All fields are naturally aligned so that the layout needs no packing pragmas.
 */
#ifndef TRACECAP_RECORDS_H
#define TRACECAP_RECORDS_H

#define TC_COMM_LEN 16
#define TC_PATH_BUF 512      /* bytes of path kept; longer paths are cut and flagged */
#define TC_NAME_SLACK 256    /* room for one dentry name past TC_PATH_BUF (verifier bound) */
#define TC_CHUNK 32768       /* payload bytes per data record */
#define TC_MAX_PREFIXES 3
#define TC_PREFIX_LEN 64     /* a path filter is at most 50 characters; 64 keeps it aligned */
#define TC_FILENAME_BUF 4096 /* exec: the name a binary was executed by (PATH_MAX) */
#define TC_ARGV_BUF 4096     /* exec: argv, NUL-separated; longer is cut and flagged */
#define TC_PARAMS_BUF 256    /* module: the parameter string */
#define TC_PROG_NAME_LEN 16  /* bpf: BPF_OBJ_NAME_LEN */

enum tc_record_kind {
    TC_REC_FILE_EVENT = 1,   /* one per captured read/write syscall: who, which file, how much */
    TC_REC_FILE_DATA = 2,    /* the bytes of that syscall, in chunks of up to TC_CHUNK */
    TC_REC_OBJ_DATA = 3,     /* the bytes of a memory region, module image or BPF program */
    TC_REC_EXEC_EVENT = 4,   /* a program was executed (user space copies the binary) */
    TC_REC_MEM_EVENT = 5,    /* a writable region is being made executable */
    TC_REC_MODULE_EVENT = 6, /* init_module / finit_module */
    TC_REC_BPF_EVENT = 7,    /* BPF_PROG_LOAD */
    TC_REC_PACKET = 8,       /* a packet, with the owner of its socket when known */
    TC_REC_SOCK_OWNER = 9,   /* a socket got (or changed) its owning thread */
    TC_REC_FILE_CONT = 10,   /* a syscall continuing its thread's previous one on the same open
                              * file: what a tc_file_event would repeat is left out */
    TC_REC_FILE_XFER = 11,   /* a transfer between two files that passes no user buffer
                              * (copy_file_range, sendfile, splice): a tc_file_xfer */
    TC_REC_FORK = 12,        /* a process forked a process (not a thread): a tc_proc_event */
    TC_REC_EXIT = 13,        /* a process's last thread exited: a tc_proc_event */
};

enum tc_pkt_direction { TC_PKT_EGRESS = 0, TC_PKT_INGRESS = 1 };

/* What a mem event reacts to: the syscall, or the exit of the process's last thread. */
enum tc_mem_syscall {
    TC_MEM_MPROTECT = 0, TC_MEM_PKEY_MPROTECT, TC_MEM_MMAP, TC_MEM_MUNMAP, TC_MEM_EXIT,
};
/* Tracee's mem_prot_alert values (types/trace MemProtAlert): the rules of its
 * security_file_mprotect hook, the later one winning when several hold. */
enum tc_mem_alert {
    TC_ALERT_NONE = 0,
    TC_ALERT_MMAP_W_X,       /* mmap with PROT_WRITE|PROT_EXEC */
    TC_ALERT_MPROT_X_ADD,    /* not executable before, executable now */
    TC_ALERT_MPROT_W_ADD,    /* executable and not writable before, writable and executable now */
    TC_ALERT_MPROT_W_REM,    /* writable before, executable and not writable now: dumped */
};
/* What became of the region's bytes. */
enum tc_mem_dump {
    TC_DUMP_NONE = 0,        /* no dump due: a writable-and-executable region waits for content */
    TC_DUMP_SENT,            /* `captured` bytes follow as TC_REC_OBJ_DATA records */
    TC_DUMP_REPEAT,          /* the same content as the earlier dump `same_as` of this region */
    TC_DUMP_BUDGET,          /* due, skipped: the process spent its byte allowance */
};
/* Counters of the mem capture beyond the per-kind block: the per-CPU `mem_counters` holds
 * them all in one slot. */
enum tc_mem_counter {
    TC_MEMC_ALERTS = 0,      /* protection changes examined that Tracee alerts on, sent or not */
    TC_MEMC_UNEXAMINED,      /* changes to an executable protection not examined: the process's
                              * event allowance was spent */
    TC_MEMC_REPEATS,         /* dumps found equal to the region's previous one: no bytes sent */
    TC_MEMC_SKIPPED_EVENTS,  /* unexamined changes and events not sent, for the same reason */
    TC_MEMC_SKIPPED_DUMPS,   /* dumps not made for the same reason or its byte allowance */
    TC_MEMC_SKIPPED_BYTES,   /* bytes of those regions */
    TC_MEMC_ZERO_BYTES,      /* bytes sent as never-touched anonymous pages (zeros) */
    TC_MEMC_RWX_TRACKED,     /* writable-and-executable regions noted, to dump once written */
    TC_MEMC_RWX_EMPTY,       /* such regions found without content when due: nothing to dump */
    TC_MEMC_TABLE_FULL,      /* regions or processes not noted: their table was full */
    TC_MEM_NUM_COUNTERS,
};
enum tc_module_syscall { TC_MOD_INIT = 0, TC_MOD_FINIT };

/* Which counters block: the file directions first, then one per object kind. */
enum tc_counter_kind {
    TC_KIND_WRITE = 0, TC_KIND_READ, TC_KIND_EXEC, TC_KIND_MEM, TC_KIND_MODULE, TC_KIND_BPF,
    TC_KIND_NET, TC_KIND_PROC, TC_NUM_KINDS,
};

enum tc_syscall {
    TC_SYS_WRITE = 0, TC_SYS_PWRITE64, TC_SYS_WRITEV, TC_SYS_PWRITEV, TC_SYS_PWRITEV2,
    TC_SYS_READ, TC_SYS_PREAD64, TC_SYS_READV, TC_SYS_PREADV, TC_SYS_PREADV2,
    TC_SYS_COPY_FILE_RANGE, TC_SYS_SENDFILE, TC_SYS_SPLICE,
    /* io_uring requests (IORING_OP_*), captured at their completion */
    TC_SYS_IO_URING_WRITE, TC_SYS_IO_URING_WRITEV, TC_SYS_IO_URING_WRITE_FIXED,
    TC_SYS_IO_URING_READ, TC_SYS_IO_URING_READV, TC_SYS_IO_URING_READ_FIXED,
    /* socket calls with a user buffer (sendto/recvfrom) or a msghdr's iovec array */
    TC_SYS_SENDTO, TC_SYS_SENDMSG, TC_SYS_RECVFROM, TC_SYS_RECVMSG,
    TC_SYS_IO_URING_SEND, TC_SYS_IO_URING_SENDMSG, TC_SYS_IO_URING_RECV,
    TC_SYS_IO_URING_RECVMSG, TC_SYS_SENDMMSG, TC_SYS_RECVMMSG,
    /* pipes (pipes.bpf.h): vmsplice passes a user buffer; tee and the io_uring ones do not */
    TC_SYS_VMSPLICE, TC_SYS_TEE, TC_SYS_IO_URING_SPLICE, TC_SYS_IO_URING_TEE,
    /* a shared file mapping's dirty pages (mappings.bpf.h), at what made them go out of sight */
    TC_SYS_MSYNC, TC_SYS_MUNMAP, TC_SYS_EXIT,
};

enum tc_direction { TC_DIR_WRITE = 0, TC_DIR_READ = 1 };

/* Counters in the per-CPU `counters` array, indexed by kind * TC_CNT_PER_KIND + counter. */
enum tc_counter {
    TC_CNT_EVENTS = 0,       /* events emitted */
    TC_CNT_EVENT_DROPS,      /* events lost: ring buffer full */
    TC_CNT_CHUNKS,           /* data records emitted */
    TC_CNT_CHUNK_DROPS,      /* data records lost: ring buffer full */
    TC_CNT_BYTES,            /* payload bytes emitted */
    TC_CNT_DROPPED_BYTES,    /* payload bytes lost (ring full, unreadable user memory, loop cap) */
    TC_CNT_PENDING_FULL,     /* syscalls missed because the enter->exit table was full */
    TC_CNT_DROP_TABLE_FULL,  /* dropped syscalls not even recorded in file_drops (table full) */
    TC_CNT_MAP_UNWALKED,     /* write: shared mappings not looked at (mappings.bpf.h) */
    TC_CNT_PER_KIND,
};
#define TC_NUM_COUNTERS (TC_NUM_KINDS * TC_CNT_PER_KIND)

/* File type filter bits, as Tracee numbers them. */
#define TC_TYPE_REGULAR 1
#define TC_TYPE_PIPE 2
#define TC_TYPE_SOCKET 4
#define TC_TYPE_ELF 8

/* Scope flags. */
#define TC_SCOPE_COMM 1          /* comm must be in scope_comm with value 1 */
#define TC_SCOPE_COMM_NOT 2      /* comm must not be in scope_comm with value 2 */
#define TC_SCOPE_PID 4
#define TC_SCOPE_UID 8
#define TC_SCOPE_FOLLOW 16
#define TC_SCOPE_CONTAINER 32    /* the task's cgroup must be in scope_cgroups */
#define TC_SCOPE_HOST 64         /* the task's cgroup must not be in scope_cgroups */

/* file_event.flags */
#define TC_EV_PATH_TRUNCATED 1
#define TC_EV_APPEND 2           /* stream: bytes are appended, pos is meaningless */

/* exec_event.flags */
#define TC_EXEC_ARGV_TRUNCATED 1
#define TC_EXEC_FILENAME_TRUNCATED 2
#define TC_EXEC_MEMFD 4              /* the executed file is a memfd (memfd_create) */
#define TC_EXEC_DELETED 8            /* the executed file had no name left (i_nlink 0) */
#define TC_EXEC_COPIED 16            /* its bytes follow as chunks of obj_id, from the page cache */
#define TC_EXEC_SCRIPT 32            /* run through a #! line: interp names the interpreter */
#define TC_EXEC_SCRIPT_FILE 64       /* the script file was found: script_* are set */
#define TC_EXEC_SCRIPT_MEMFD 128
#define TC_EXEC_SCRIPT_DELETED 256
#define TC_EXEC_SCRIPT_COPIED 512    /* the script's bytes follow as chunks of script_obj_id */
#define TC_EXEC_SCRIPT_PATH_TRUNCATED 1024
#define TC_EXEC_INTERP_TRUNCATED 2048
#define TC_EXEC_PATH_TRUNCATED 4096
#define TC_EXEC_FROM_KERNEL 8192     /* the parent is a kernel thread (invoked_from_kernel) */

/* file_data.flags */
#define TC_DATA_UNREADABLE 1     /* user memory could not be read: `want` bytes are missing */
#define TC_DATA_ZERO 2           /* mem: `want` bytes of an anonymous page never touched (no page
                                  * table entry): the process reads them as zeros */

struct tc_hdr {
    __u32 kind;
    __u32 cpu;
    __u64 ts;                /* CLOCK_BOOTTIME ns; user space converts to the Unix epoch */
    __u32 pid;               /* host tgid */
    __u32 tid;
    __u32 ppid;
    __u32 uid;
    __u64 cgroup_id;
    __u32 ns_pid;            /* the same, as the process's own pid namespace numbers them */
    __u32 ns_tid;
    __u32 ns_ppid;
    __u32 mnt_ns;            /* mount namespace inode number (Tracee's mountNamespace) */
    __u64 thread_start;      /* the thread's start, CLOCK_BOOTTIME ns (threadStartTime) */
    __u32 pid_ns;            /* pid namespace inode number, the thread's own (pidNamespace) */
    __u32 _pad;
    char comm[TC_COMM_LEN];
};

struct tc_file_event {
    struct tc_hdr h;
    __u64 io_id;             /* names this syscall; its data records carry the same id */
    __u64 io_len;            /* bytes the syscall transferred (its return value) */
    __u64 pos;               /* file offset of the first byte */
    __u64 inode;
    __u32 dev;               /* the kernel's s_dev: MAJOR << 20 | MINOR */
    __u32 mode;              /* i_mode */
    __s32 fd;
    __u16 syscall;           /* enum tc_syscall */
    __u8 direction;          /* enum tc_direction */
    __u8 flags;              /* TC_EV_* */
    __u32 path_len;
    __u32 generation;        /* i_generation: tells a new file from an old one whose inode
                              * number it reuses */
    __u64 req;               /* what the syscall asked for: bytes (read, write), iovecs (readv,
                              * writev: Tracee's vlen); transfers without a buffer: io_len */
    char path[TC_PATH_BUF + TC_NAME_SLACK];
};

/* Instead of a tc_file_event when the thread's previous syscall was on the same open file (same
 * fd, syscall, inode, generation, cgroup, uid and comm) and this one starts where it ended (or
 * the file is a stream): the collector takes who and which file from the syscall `prev_io_id`.
 * The record goes on with the syscall's first tc_file_data and its payload, so that a small
 * syscall is one record; further chunks follow as their own records. This saves the path walk
 * in the kernel and most of the per-syscall work in user space; a full event is still sent at
 * least every TC_CONT_REFRESH_NS per stream. */
struct tc_file_cont {
    __u32 kind;
    __u32 cpu;
    __u64 ts;                /* CLOCK_BOOTTIME ns */
    __u64 io_id;
    __u64 prev_io_id;        /* the syscall this one continues */
    __u64 io_len;
    __u64 pos;
    __u64 req;               /* as tc_file_event's */
};

/* ---- transfers without a user buffer (copy_file_range, sendfile, splice) ---- */

/* One end of a transfer, as the kernel saw it when the syscall returned. */
struct tc_xfer_file {
    __u64 inode;
    __u64 pos;               /* offset of the first byte moved (streams: 0) */
    __u64 size;              /* i_size at exit */
    __u64 mtime;             /* ns; 0 when the kernel's inode layout is not known */
    __u64 ctime;             /* ns, the same */
    __u32 dev;
    __u32 mode;
    __u32 generation;
    __s32 fd;
};

/* The bytes never pass a user buffer, so the record carries no data: it names both ends, and
 * the collector reads the bytes back from the source (or the destination) while they are
 * unchanged. `ev` is the artifact's file as for a write or read (the destination for
 * direction write, the source for read); `other_path` is the other end's path. */
struct tc_xfer {
    struct tc_xfer_file src;
    struct tc_xfer_file dst;
    __u32 other_path_len;
    __u32 other_flags;       /* TC_EV_PATH_TRUNCATED */
    char other_path[TC_PATH_BUF + TC_NAME_SLACK];
};

struct tc_file_xfer {
    struct tc_file_event ev; /* h.kind is TC_REC_FILE_XFER; io_len the syscall's result */
    struct tc_xfer x;
};

/* Payload chunks of files (TC_REC_FILE_DATA) and of objects (TC_REC_OBJ_DATA). */
struct tc_file_data {
    __u32 kind;
    __u32 len;               /* payload bytes that follow this header */
    __u64 io_id;             /* the syscall's io_id, or the object's obj_id */
    __u64 io_off;            /* offset of the payload inside the transfer or object */
    __u32 want;              /* bytes this chunk stands for; len is 0 when they were unreadable */
    __u32 flags;             /* TC_DATA_* */
};

struct tc_exec_event {
    struct tc_hdr h;
    __u64 inode;
    __u64 ctime;             /* the binary's inode change time, ns */
    __u32 dev;
    __u32 mode;
    __u32 filename_len;
    __u32 argv_len;
    __u32 flags;             /* TC_EXEC_* */
    __u32 interp_len;
    __u64 size;              /* the executed file's size at exec */
    __u64 obj_id;            /* TC_EXEC_COPIED: the id of the chunks of its first `captured` */
    __u64 captured;          /*   bytes, read by the kernel from its page cache */
    __u64 script_inode;      /* TC_EXEC_SCRIPT_FILE: the script file the #! line was read from */
    __u64 script_ctime;
    __u64 script_size;
    __u64 script_obj_id;     /* TC_EXEC_SCRIPT_COPIED: as obj_id, for the script */
    __u64 script_captured;
    __u32 script_dev;
    __u32 script_path_len;
    __u32 path_len;
    __u32 script_mode;
    __u32 stdin_mode;        /* i_mode & S_IFMT of the new program's fd 0; 0 when it has none */
    __u32 stdin_path_len;    /* fd 0's path; none for pipes and sockets */
    char path[TC_PATH_BUF];          /* the executed file's path (d_path; Tracee's pathname): the
                                      * interpreter's for a #! execution, "/memfd:NAME" for a
                                      * memfd */
    char filename[TC_FILENAME_BUF];  /* as executed: the script's name for a #! execution */
    char interp[TC_FILENAME_BUF];    /* bprm->interp: the interpreter a #! line named, else
                                      * the filename again */
    char script_path[TC_PATH_BUF];   /* the script file's path (d_path) */
    char argv[TC_ARGV_BUF];
    char stdin_path[TC_PATH_BUF];    /* fd 0's path (d_path), cut at TC_PATH_BUF - 1 */
};

/* A fork (TC_REC_FORK: the header is the parent thread's, which called fork) or a process exit
 * (TC_REC_EXIT: the header is the last thread's to exit). Sent for processes in scope, from every
 * capture: the process tree of events.jsonl needs them whatever --capture says. */
struct tc_proc_event {
    struct tc_hdr h;
    __u64 child_start;       /* fork: the child's start_boottime, ns */
    __u32 child_pid;         /* fork: the child's host pid (its tgid: threads are not sent) */
    __u32 child_ns_pid;      /* fork: the same, as the child's pid namespace numbers it */
    __s32 exit_code;         /* exit: the wait status (exit code << 8 | terminating signal) */
    __u32 _pad;
};

/* A protection change Tracee alerts on, or the dump of a writable-and-executable region when
 * it is unmapped, changed again or its process exits. One per occurrence, within the process's
 * event allowance (tc_config.mem_events_per_s); what the allowances skipped since the
 * process's previous event rides on the next one (or on an exit event). */
struct tc_mem_event {
    struct tc_hdr h;
    __u64 obj_id;
    __u64 addr;
    __u64 len;               /* the region's length as asked (Tracee's `len`) */
    __u64 size;              /* the region's bytes: len rounded up to pages */
    __u64 captured;          /* bytes sent as data records (size, capped); 0 unless dump is SENT */
    __u64 same_as;           /* dump REPEAT: obj_id of the earlier dump with the same content */
    __u64 skipped_events;    /* budget: since the process's previous event, its changes to an
                              * executable protection that were not examined (past its event
                              * allowance), and events not sent */
    __u64 skipped_dumps;     /* ... dumps known due and not made (a sent event's own skipped
                              * dump is its dump BUDGET) */
    __u64 skipped_bytes;     /* ... bytes of the regions of both */
    __u32 prot_before;       /* PROT_* bits from the VMA's vm_flags */
    __u32 prot_after;
    __u32 syscall;           /* enum tc_mem_syscall */
    __u32 alert;             /* enum tc_mem_alert */
    __u32 dump;              /* enum tc_mem_dump */
    __u32 _pad;
};

/* Value of `mem_procs`, per tgid: its allowances (refilled each second, see mem.bpf.h) and what
 * they skipped that no event reported yet; the collector reports what is left at a stop. */
struct tc_mem_proc {
    __u64 refill_ns;         /* CLOCK_MONOTONIC of the last refill */
    __s64 events;            /* event allowance, in event-nanoseconds: an event costs 1e9 */
    __s64 bytes;             /* byte allowance: a dump may start while it is positive */
    __u64 skipped_events;
    __u64 skipped_dumps;
    __u64 skipped_bytes;
    __u64 cgroup_id;         /* who, for the collector's report at a stop */
    __u64 exec_id;           /* the program (task->self_exec_id) the entry was made for */
    __u32 uid;
    __u32 rwx_regions;       /* this process's entries in `mem_rwx` */
};

/* module_event.flags (TC_EV_PATH_TRUNCATED is 1) */
#define TC_MOD_MAPPED 2          /* init_module: the image lies in a mapping of the file named */
#define TC_MOD_MAP_SHARED 4      /* that mapping is MAP_SHARED */
#define TC_MOD_MAP_WRITTEN 8     /* it is private and has anonymous (copied-on-write) pages */
#define TC_MOD_KREAD_IMAGE 16    /* sent at the kernel's hook (module_kread.bpf.h): the image the
                                  * kernel read or copied, its bytes follow; `ret` is unknown
                                  * yet, the attempt's own event comes at the syscall's exit */
#define TC_MOD_KREAD 32          /* the attempt whose image an earlier TC_MOD_KREAD_IMAGE event
                                  * of the same obj_id sent (this event sends no bytes) */

/* The file (dev, inode, ctime, mtime, size, path) is finit_module's fd, or for init_module the
 * file mapped where the image lies (TC_MOD_MAPPED; map_* name the mapping). Its times and size
 * are those at the syscall's exit, so that the collector can tell whether the file it reads is
 * still the one the kernel saw. */
struct tc_module_event {
    struct tc_hdr h;
    __u64 obj_id;
    __s64 ret;               /* the syscall's return value */
    __u64 len;               /* init_module: the image length */
    __u64 captured;          /* bytes sent as data records */
    __u64 inode;
    __u32 dev;
    __s32 fd;
    __u32 syscall;           /* enum tc_module_syscall */
    __u32 params_len;
    __u32 path_len;
    __u32 flags;             /* TC_EV_PATH_TRUNCATED, TC_MOD_* */
    __u64 addr;              /* init_module: the image's address */
    __u64 map_start;         /* the mapping holding addr, [map_start, map_end) */
    __u64 map_end;
    __u64 map_pgoff;         /* its offset in the file, in pages */
    __u64 ctime;             /* the file's inode change time, ns */
    __u64 mtime;             /* its modification time, ns */
    __u64 size;              /* its size */
    __u32 load_flags;        /* finit_module's flags argument (0 for init_module) */
    __u32 _pad;
    char params[TC_PARAMS_BUF];
    char path[TC_PATH_BUF];
};

struct tc_bpf_event {
    struct tc_hdr h;
    __u64 obj_id;
    __s64 ret;               /* the new program's fd, or a negative errno */
    __u64 captured;          /* bytes sent as data records */
    __u32 insn_cnt;
    __u32 prog_type;
    char prog_name[TC_PROG_NAME_LEN];
    __u32 prog_id;           /* the loaded program's id (bpftool's), 0 when the load failed */
    __u32 _pad;
};

/* A packet from the IP header on (cgroup_skb sees no link layer), cut to the snap length. */
struct tc_packet {
    __u32 kind;
    __u32 len;               /* captured bytes that follow */
    __u64 ts;                /* CLOCK_BOOTTIME ns */
    __u64 cookie;            /* the socket's cookie, 0 for none */
    __u64 cgroup_id;         /* the packet's cgroup (its socket's) */
    __u64 owner_start;       /* the owning thread's start time, boot ns; 0 when unknown */
    __u32 orig_len;          /* the packet's real length */
    __u32 ifindex;
    __u32 direction;         /* enum tc_pkt_direction */
    __u32 owner_pid;         /* 0 when the owner is not known (yet) in the kernel */
    __u32 owner_tid;
    __u32 owner_ppid;
    __u32 owner_uid;
    __u32 _pad;
    char owner_comm[TC_COMM_LEN];
};

/* Sent when a socket is created or first used by a thread, and when its user changes. */
struct tc_sock_owner {
    struct tc_hdr h;
    __u64 cookie;
    __u64 start_time;        /* the thread's start, boot ns */
    __u32 in_scope;
    __u32 _pad;
};

/* A socket that existed before the capture, for net.bpf.h's tc_sock_adopt, which the collector
 * runs (BPF_PROG_TEST_RUN) once per socket it finds in /proc/PID/fd at start. In: `pid` (the
 * process holding it) and `cookie` (read by the collector with SO_COOKIE). Out: `result`
 * (TC_ADOPT_*) and, when TC_ADOPT_OWNED, the owner recorded: the process's main thread. */
struct tc_sock_adopt {
    __u64 cookie;
    __u64 start_time;        /* boot ns */
    __u64 cgroup_id;
    __u32 pid;
    __u32 ppid;
    __u32 uid;
    __u32 in_scope;
    __u32 result;
    __u32 _pad;
    char comm[TC_COMM_LEN];
};

enum tc_adopt_result {
    TC_ADOPT_OWNED = 0,      /* owner recorded in sock_owner */
    TC_ADOPT_KNOWN,          /* the kernel knew an owner already: kept */
    TC_ADOPT_NO_TASK,        /* the process is gone */
    TC_ADOPT_FULL,           /* sock_owner could not take it */
};

/* Key and value of the `file_drops` map: syscalls whose event could not be sent (ring buffer
 * full), so that the collector can still tell which artifact lost which bytes. `side` is the
 * half of the map the entry belongs to (the `drop_side` map says which half takes new losses):
 * the collector drains only the half it switched away from a drain earlier, so no program is
 * still adding to an entry it reads and deletes. */
struct tc_drop_key {
    __u64 inode;
    __u64 cgroup_id;
    __u32 dev;
    __u16 direction;
    __u16 side;
};

struct tc_drop_val {
    __u64 bytes;             /* bytes of the syscalls lost */
    __u64 lo;                /* lowest file offset lost */
    __u64 hi;                /* end of the highest range lost */
    __u64 ios;               /* syscalls lost */
    __u32 append;            /* a stream: offsets are meaningless */
    __u32 unsized;           /* of `ios`, transfers whose byte count could not be read */
};

struct tc_file_filter {
    __u32 enabled;
    __u32 types;             /* TC_TYPE_* bits, 0 = any */
    __u32 fds;               /* bit n = fd n (0..2), 0 = any */
    __u32 npaths;
    __u32 path_len[TC_MAX_PREFIXES];
    __u32 _pad;
    char paths[TC_MAX_PREFIXES][TC_PREFIX_LEN];
};

/* The whole configuration, the only variable in .rodata (offset 0). */
struct tc_config {
    __u32 excluded_uid;      /* the tracecap user: writers, bridge, tap; (u32)-1 for none */
    __u32 scope_flags;       /* TC_SCOPE_* */
    struct tc_file_filter filters[2];  /* indexed by enum tc_direction */
    __u32 net_ifindex;       /* net=<iface>: only packets crossing it; 0 = any */
    __s32 snaplen;           /* payload bytes kept after the L4 header; -1 = all */
    __u32 mem_events_per_s;  /* mem: events a process may send per second */
    __u32 mem_bytes_per_s;   /* mem: bytes of its memory a process may have hashed or dumped per
                              * second */
    __u64 mem_hash_seed;     /* mem: random per run, so that no program can aim at a content hash */
    __u64 fput_addr;         /* exec: ____fput's address (/proc/kallsyms), the task work of a
                              * deferred fput; 0 = unknown (no #! script files) */
};

#endif
