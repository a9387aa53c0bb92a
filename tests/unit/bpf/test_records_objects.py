"""bpf/records.py: the exec, memory, module, BPF, packet and socket-owner records and the
file_drops entries, built by member name (tests/support/records.py) with a distinct value in
every member, so that a decoder reading one member for another fails here."""

import pytest

from bpf import records
from bpf.records import RecordError
from tests.support import records as build

#: A header whose every member differs from the others and from the record's own members.
HDR = {
    "cpu": 3, "ts": 1_000_001, "pid": 4001, "tid": 4002, "ppid": 4003, "uid": 4004,
    "cgroup_id": 1_000_005, "ns_pid": 4006, "ns_tid": 4007, "ns_ppid": 4008,
    "comm": b"sshd\0junk", "mnt_ns": 4026531840, "pid_ns": 4026531836, "thread_start": 77_000,
}  # fmt: skip


def header(kind: int) -> records.Header:
    return records.Header(
        kind, 3, 1_000_001, 4001, 4002, 4003, 4004, 1_000_005, b"sshd", 4006, 4007, 4008,
        4026531840, 4026531836, 77_000,
    )  # fmt: skip


def test_exec_event():
    raw = build.exec_event(
        **HDR, inode=11, ctime=12, dev=13, mode=0o100755, flags=records.EXEC_ARGV_TRUNCATED,
        filename=b"/usr/bin/env", argv=b"env\0-i\0",
    )  # fmt: skip
    assert records.decode_exec_event(raw) == records.ExecEvent(
        header(records.REC_EXEC_EVENT), 11, 12, 13, 0o100755, b"/usr/bin/env", (b"env", b"-i"),
        True,
    )  # fmt: skip


def test_exec_event_says_stdins_type_and_a_kernel_parent():
    raw = build.exec_event(
        **HDR, stdin_mode=0o020000, flags=records.EXEC_FROM_KERNEL, path=b"/usr/bin/dd\0x",
        path_len=11, stdin_path=b"/dev/null", stdin_path_len=9,
    )  # fmt: skip
    ev = records.decode_exec_event(raw)
    assert (ev.stdin_mode, ev.from_kernel, ev.argv_truncated) == (0o020000, True, False)
    assert (ev.path, ev.stdin_path) == (b"/usr/bin/dd", b"/dev/null")


def test_exec_event_is_cut_at_its_lengths():
    assert records.decode_exec_event(build.exec_event(argv=b"true\0")).argv == (b"true",)
    raw = build.pack(
        records.TC_EXEC_EVENT, kind=records.REC_EXEC_EVENT, filename=b"/bin/true",
        filename_len=4, argv=b"true\0", argv_len=0,
    )  # fmt: skip
    ev = records.decode_exec_event(raw)
    assert (ev.filename, ev.argv, ev.argv_truncated) == (b"/bin", (), False)


def test_mem_event():
    raw = build.mem_event(
        **HDR, obj_id=21, addr=0x7F00_0000_1000, len=8000, size=8192, captured=4096,
        same_as=22, skipped_events=23, skipped_dumps=24, skipped_bytes=25, prot_before=3,
        prot_after=5, syscall=records.MEM_SYSCALLS.index("pkey_mprotect"), alert=4, dump=2,
    )  # fmt: skip
    assert records.decode_mem_event(raw) == records.MemEvent(
        header(records.REC_MEM_EVENT), 21, 0x7F00_0000_1000, 8000, 8192, 4096, 22, 23, 24, 25,
        3, 5, "pkey_mprotect", "Protection changed from W to E!", "repeat",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("alert", "text"),
    [
        (0, ""),
        (1, "Mmaped region with W+E permissions!"),
        (2, "Protection changed to Executable!"),
        (3, "Protection changed from E to W+E!"),
        (4, "Protection changed from W to E!"),
    ],
)
def test_mem_alerts_are_tracees_texts(alert, text):
    """Tracee v0.17's types/trace MemProtAlert: the same numbers, the same strings."""
    assert records.decode_mem_event(build.mem_event(alert=alert)).alert == text


@pytest.mark.parametrize("dump", range(len(records.MEM_DUMPS)))
def test_mem_dump_status(dump):
    ev = records.decode_mem_event(build.mem_event(dump=dump))
    assert ev.dump == ("none", "sent", "repeat", "budget")[dump]


def test_mem_skipped_entry():
    key = (4242).to_bytes(4, "little")
    value = build.pack(
        records.TC_MEM_PROC, refill_ns=1, events=-2, bytes=-3, skipped_events=91,
        skipped_dumps=92, skipped_bytes=93, cgroup_id=94, uid=95, rwx_regions=96,
    )  # fmt: skip
    assert records.decode_mem_skipped(key, value) == records.MemSkipped(4242, 95, 94, 91, 92, 93)


def test_mem_counters_sum_the_cpus():
    n = len(records.MEM_COUNTERS)
    cpu0, cpu1 = list(range(n)), [100] * n
    out = records.decode_mem_counters([cpu0, cpu1])
    assert list(out) == [f"mem.{name}" for name in records.MEM_COUNTERS]
    assert out["mem.alerts"] == 100 and out["mem.table_full"] == n - 1 + 100


def test_module_event_keeps_signs_and_cuts_at_lengths():
    raw = build.module_event(
        **HDR, obj_id=31, ret=-17, len=32, captured=33, inode=34, dev=35, fd=-100,
        syscall=records.MODULE_SYSCALLS.index("finit_module"), params=b"debug=1",
        path=b"/lib/modules/x.ko", load_flags=2,
    )  # fmt: skip
    assert records.decode_module_event(raw) == records.ModuleEvent(
        header(records.REC_MODULE_EVENT), 31, -17, 32, 33, 34, 35, -100, "finit_module",
        b"debug=1", b"/lib/modules/x.ko", load_flags=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "mapping"),
    [
        (0, None),
        (records.MOD_MAPPED, records.ModuleMapping(0x7000, 0x9000, 3, False, False)),
        (records.MOD_MAPPED | records.MOD_MAP_SHARED, records.ModuleMapping(0x7000, 0x9000, 3,
                                                                            True, False)),
        (records.MOD_MAPPED | records.MOD_MAP_WRITTEN, records.ModuleMapping(0x7000, 0x9000, 3,
                                                                             False, True)),
        (records.MOD_MAP_SHARED, None),  # no file mapped: the other bits mean nothing
    ],
)  # fmt: skip
def test_init_module_event_names_the_mapping_that_holds_the_image(flags, mapping):
    raw = build.module_event(
        **HDR, obj_id=31, ret=-38, len=100, captured=100, inode=34, dev=35, flags=flags,
        addr=0x7010, map_start=0x7000, map_end=0x9000, map_pgoff=3, ctime=5, mtime=6, size=7,
        syscall=records.MODULE_SYSCALLS.index("init_module"), path=b"/tmp/x.ko",
    )  # fmt: skip
    ev = records.decode_module_event(raw)
    assert (ev.addr, ev.ctime, ev.mtime, ev.size, ev.path) == (0x7010, 5, 6, 7, b"/tmp/x.ko")
    assert ev.mapping == mapping


def test_bpf_event():
    raw = build.bpf_event(
        **HDR,
        obj_id=41,
        ret=3,
        captured=43,
        insn_cnt=44,
        prog_type=45,
        prog_name=b"probe\0x",
        prog_id=46,
    )
    assert records.decode_bpf_event(raw) == records.BpfEvent(
        header(records.REC_BPF_EVENT), 41, 3, 43, 44, 45, b"probe", 46
    )


def test_packet_and_its_bytes():
    raw = build.packet(
        b"\x45\x00payload", ts=51, cookie=52, cgroup_id=53, owner_start=54, orig_len=1500,
        ifindex=56, direction=records.PKT_DIRECTIONS.index("ingress"), owner_pid=57,
        owner_tid=58, owner_ppid=59, owner_uid=60, owner_comm=b"curl",
    )  # fmt: skip
    assert records.decode_packet(raw) == records.Packet(
        51, 52, 53, 54, 1500, 56, "ingress", 57, 58, 59, 60, b"curl", b"\x45\x00payload"
    )


def test_packet_errors():
    with pytest.raises(RecordError, match="unknown direction 2"):
        records.decode_packet(build.packet(b"x", direction=2))
    with pytest.raises(RecordError, match="says 4 bytes, record holds 3"):
        records.decode_packet(build.packet(b"abcd")[:-1])


def test_sock_owner():
    raw = build.sock_owner(**HDR, cookie=61, start_time=62, in_scope=1)
    assert records.decode_sock_owner(raw) == records.SockOwner(
        header(records.REC_SOCK_OWNER), 61, 62, True
    )


def test_dropped_io():
    key, value = build.dropped_io(
        inode=71, cgroup_id=72, dev=73, direction=records.DIR_READ, bytes=74, lo=75, hi=76,
        ios=77, append=1, unsized=78,
    )  # fmt: skip
    assert records.decode_dropped_io(key, value) == records.DroppedIo(
        71, 72, 73, records.DIR_READ, 74, 75, 76, 77, True, 78
    )


@pytest.mark.parametrize(
    ("decode", "raw", "message"),
    [
        (records.decode_mem_event, build.mem_event(syscall=5), "unknown syscall 5"),
        (records.decode_mem_event, build.mem_event(alert=5), "unknown alert 5"),
        (records.decode_mem_event, build.mem_event(dump=4), "unknown dump status 4"),
        (records.decode_module_event, build.module_event(syscall=2), "unknown syscall 2"),
    ],
    ids=["mem", "mem-alert", "mem-dump", "module"],
)
def test_unknown_syscall(decode, raw, message):
    with pytest.raises(RecordError, match=message):
        decode(raw)


@pytest.mark.parametrize(
    ("decode", "raw", "what"),
    [
        (records.decode_exec_event, build.exec_event(), "exec event"),
        (records.decode_mem_event, build.mem_event(), "mem event"),
        (records.decode_module_event, build.module_event(), "module event"),
        (records.decode_bpf_event, build.bpf_event(), "bpf event"),
        (records.decode_packet, build.packet(), "packet"),
        (records.decode_sock_owner, build.sock_owner(), "socket owner"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_short_record_raises(decode, raw, what):
    with pytest.raises(RecordError, match=f"{what} of {len(raw) - 1} bytes, expected {len(raw)}"):
        decode(raw[:-1])
