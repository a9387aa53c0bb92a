"""bpf/records.py: ring-buffer record decoders and the .rodata config encoder (pure bytes)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpf import records
from bpf.records import (
    CONFIG,
    COUNTERS,
    FILE_DATA,
    FILE_EVENT,
    FILE_FILTER,
    HDR,
    MAX_PREFIXES,
    PATH_BUF,
    PREFIX_LEN,
    SYSCALLS,
    RecordError,
)
from tests.support.records import file_cont, file_data, file_event

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


#: The file event the tests below decode, unless they override some of it.
EVENT = {
    "ts": 123, "pid": 10, "tid": 11, "ppid": 1, "uid": 0, "cgroup_id": 77, "comm": b"bash",
    "io_id": 5, "io_len": 100, "pos": 4096, "inode": 9, "dev": 0x800001, "mode": 0o100644,
    "fd": 3, "path": b"/etc/passwd", "cpu": 2,
}  # fmt: skip


def raw_event(**values) -> bytes:
    return file_event(**{**EVENT, **values})


def test_struct_sizes():
    assert HDR.size == 88
    assert FILE_EVENT.size == 88 + 64 + PATH_BUF + records.NAME_SLACK
    assert FILE_DATA.size == 32
    assert FILE_FILTER.size == 32 + MAX_PREFIXES * PREFIX_LEN
    assert CONFIG.size == 8 + 2 * FILE_FILTER.size + 8 + 24
    assert records.SIZES["tc_file_event"] == FILE_EVENT.size


def test_decode_file_event_fields():
    ev = records.decode_file_event(
        raw_event(syscall=SYSCALLS.index("pwritev2"), direction=1, flags=3, fd=-100)
    )
    assert ev.hdr == records.Header(records.REC_FILE_EVENT, 2, 123, 10, 11, 1, 0, 77, b"bash")
    in_ns = records.decode_file_event(raw_event(ns_pid=1, ns_tid=2, ns_ppid=0)).hdr
    assert (in_ns.ns_pid, in_ns.ns_tid, in_ns.ns_ppid) == (1, 2, 0)
    assert (ev.io_id, ev.io_len, ev.pos, ev.inode, ev.dev, ev.mode) == (
        5, 100, 4096, 9, 0x800001, 0o100644,
    )  # fmt: skip
    assert ev.fd == -100
    assert ev.syscall == "pwritev2"
    assert ev.direction == 1
    assert ev.flags == 3
    assert ev.append is True
    assert ev.path == b"/etc/passwd"


@given(
    ts=U64, pid=U32, tid=U32, ppid=U32, uid=U32, cgroup_id=U64,
    comm=st.binary(max_size=16).map(lambda b: b.replace(b"\0", b"")),
    io_id=U64, io_len=U64, pos=U64, inode=U64, dev=U32, mode=U32,
    fd=st.integers(-(2**31), 2**31 - 1), syscall=st.integers(0, len(SYSCALLS) - 1),
    direction=st.integers(0, 1), flags=st.integers(0, 255),
    path=st.binary(max_size=PATH_BUF).map(lambda b: b.replace(b"\0", b"")),
)  # fmt: skip
def test_decode_file_event_round_trip(**fields):
    ev = records.decode_file_event(raw_event(**fields))
    assert ev.hdr.ts == fields["ts"]
    assert ev.hdr.pid == fields["pid"]
    assert ev.hdr.tid == fields["tid"]
    assert ev.hdr.ppid == fields["ppid"]
    assert ev.hdr.uid == fields["uid"]
    assert ev.hdr.cgroup_id == fields["cgroup_id"]
    assert ev.hdr.comm == fields["comm"]
    assert ev.io_id == fields["io_id"]
    assert ev.io_len == fields["io_len"]
    assert ev.pos == fields["pos"]
    assert ev.inode == fields["inode"]
    assert ev.dev == fields["dev"]
    assert ev.mode == fields["mode"]
    assert ev.fd == fields["fd"]
    assert ev.syscall == SYSCALLS[fields["syscall"]]
    assert ev.direction == fields["direction"]
    assert ev.flags == fields["flags"]
    assert ev.append == bool(fields["flags"] & records.EV_APPEND)
    assert ev.path == fields["path"]


def test_path_is_cut_at_path_len_nul_and_path_buf():
    assert records.decode_file_event(raw_event(path=b"/a/bcdef", path_len=4)).path == b"/a/b"
    assert records.decode_file_event(raw_event(path=b"/ab\0cd", path_len=6)).path == b"/ab"
    long = b"/" + b"x" * (PATH_BUF + 100)
    assert (
        records.decode_file_event(raw_event(path=long, path_len=len(long))).path == long[:PATH_BUF]
    )
    assert records.decode_file_event(raw_event(path=b"", path_len=0)).path == b""


def test_comm_is_nul_terminated():
    ev = records.decode_file_event(raw_event(comm=b"abc\0junk"))
    assert ev.hdr.comm == b"abc"
    ev = records.decode_file_event(raw_event(comm=b"0123456789abcdef"))
    assert ev.hdr.comm == b"0123456789abcdef"


def test_trailing_bytes_after_event_are_ignored():
    assert records.decode_file_event(raw_event() + b"\xff" * 8).path == b"/etc/passwd"


def test_unknown_syscall_raises():
    with pytest.raises(RecordError, match=f"unknown syscall {len(SYSCALLS)}"):
        records.decode_file_event(raw_event(syscall=len(SYSCALLS)))
    with pytest.raises(RecordError):
        records.decode_file_event(raw_event(syscall=0xFFFF))


@pytest.mark.parametrize("size", [0, 1, 71, FILE_EVENT.size - 1])
def test_short_file_event_raises(size):
    with pytest.raises(RecordError, match=f"file event of {size} bytes"):
        records.decode_file_event(raw_event()[:size])


@given(io_id=U64, io_off=U64, data=st.binary(max_size=200), flags=st.integers(0, 1))
def test_decode_file_data_round_trip(io_id, io_off, data, flags):
    chunk = records.decode_file_data(file_data(io_id, io_off, data, want=len(data), flags=flags))
    assert chunk == records.FileData(io_id, io_off, len(data), bool(flags), data)


def test_decode_unreadable_chunk_keeps_want():
    chunk = records.decode_file_data(file_data(1, 32768, b"", want=32768, flags=1))
    assert chunk.unreadable is True
    assert chunk.want == 32768
    assert chunk.data == b""


def test_file_data_ignores_bytes_past_len():
    chunk = records.decode_file_data(file_data(1, 0, b"abcdef", length=3))
    assert chunk.data == b"abc"


@pytest.mark.parametrize("size", [0, 3, 4, FILE_DATA.size - 1])
def test_short_file_data_header_raises(size):
    with pytest.raises(RecordError, match="expected at least 32"):
        records.decode_file_data(file_data(1, 0, b"xyz")[:size])


def test_file_data_shorter_than_its_len_raises():
    with pytest.raises(RecordError, match="says 10 bytes, record holds 4"):
        records.decode_file_data(file_data(1, 0, b"abcd", length=10))


def cont_head(io_id: int, prev: int, io_len: int, pos: int, ts=9) -> bytes:
    return file_cont(cpu=1, ts=ts, io_id=io_id, prev_io_id=prev, io_len=io_len, pos=pos)


def raw_cont(io_id: int, prev: int, io_len: int, pos: int, data: bytes, ts=9) -> bytes:
    """A continuation and its first chunk, ``data``, as the kernel sends them."""
    return cont_head(io_id, prev, io_len, pos, ts) + file_data(io_id, 0, data)


@given(io_id=U64, prev=U64, io_len=U64, pos=U64, data=st.binary(max_size=200))
def test_decode_file_cont_round_trip_with_its_first_chunk(io_id, prev, io_len, pos, data):
    cont = records.decode_file_cont(raw_cont(io_id, prev, io_len, pos, data))
    first = records.FileData(io_id, 0, len(data), False, data)
    assert cont == records.FileCont(9, io_id, prev, io_len, pos, first)


@pytest.mark.parametrize("size", [0, 4, records.FILE_CONT.size, records.FILE_CONT.size + 31])
def test_short_file_cont_raises(size):
    with pytest.raises(RecordError, match="expected at least 88"):
        records.decode_file_cont(raw_cont(1, 0, 3, 0, b"xyz")[:size])


def test_file_cont_with_another_syscalls_data_raises():
    raw = cont_head(5, 4, 3, 0) + file_data(6, 0, b"x")
    with pytest.raises(RecordError, match="carries data of 6"):
        records.decode_file_cont(raw)


def test_record_kind():
    assert records.record_kind(raw_event()) == records.REC_FILE_EVENT
    assert records.record_kind(file_data(1, 0, b"")) == records.REC_FILE_DATA
    assert records.record_kind(b"\x07\x00\x00\x00") == 7
    with pytest.raises(RecordError):
        records.record_kind(b"\x01\x00\x00")


# --- config encoding ---


def test_encode_file_filter_layout():
    raw = records.encode_file_filter(
        True, (b"/tmp/", b"/var/log/x"), frozenset({"pipe", "elf"}), frozenset({1, 2})
    )
    assert len(raw) == FILE_FILTER.size
    enabled, types, fds, npaths, l0, l1, l2, pad, blob = FILE_FILTER.unpack(raw)
    assert (enabled, types, fds, npaths) == (1, 2 | 8, 0b110, 2)
    assert (l0, l1, l2, pad) == (5, 10, 0, 0)
    assert blob[:PREFIX_LEN] == b"/tmp/".ljust(PREFIX_LEN, b"\0")
    assert blob[PREFIX_LEN : 2 * PREFIX_LEN] == b"/var/log/x".ljust(PREFIX_LEN, b"\0")
    assert blob[2 * PREFIX_LEN :] == bytes(PREFIX_LEN)


def test_encode_empty_file_filter():
    raw = records.encode_file_filter(False, (), frozenset(), frozenset())
    assert raw == bytes(FILE_FILTER.size)


def test_encode_file_filter_all_types():
    raw = records.encode_file_filter(True, (), frozenset(records.TYPE_BITS), frozenset({0}))
    assert FILE_FILTER.unpack(raw)[1:3] == (15, 1)


def test_encode_file_filter_accepts_limits():
    prefixes = (b"a" * (PREFIX_LEN - 1), b"b", b"c")
    raw = records.encode_file_filter(True, prefixes, frozenset(), frozenset())
    assert FILE_FILTER.unpack(raw)[3:7] == (3, PREFIX_LEN - 1, 1, 1)


def test_encode_file_filter_rejects_too_many_prefixes():
    with pytest.raises(ValueError, match="at most 3 path prefixes"):
        records.encode_file_filter(True, (b"/a", b"/b", b"/c", b"/d"), frozenset(), frozenset())


def test_encode_file_filter_rejects_long_prefix():
    with pytest.raises(ValueError, match="under 64 bytes"):
        records.encode_file_filter(True, (b"/" * PREFIX_LEN,), frozenset(), frozenset())


def test_encode_config():
    write = records.encode_file_filter(True, (b"/tmp/",), frozenset(), frozenset())
    read = records.encode_file_filter(False, (), frozenset(), frozenset())
    raw = records.encode_config(
        -1, records.SCOPE_PID | records.SCOPE_FOLLOW, write, read, net_ifindex=3, snaplen=96
    )
    assert len(raw) == CONFIG.size
    uid, scope, filters, ifindex, snaplen, mem_events, mem_bytes, seed, fput = CONFIG.unpack(raw)
    assert (ifindex, snaplen, mem_events, mem_bytes, seed, fput) == (3, 96, 0, 0, 0, 0)
    assert CONFIG.unpack(records.encode_config(0, 0, write, read))[3:5] == (0, -1)
    mem = records.encode_config(0, 0, write, read, mem_budget=(64, 1 << 22), mem_hash_seed=7)
    assert CONFIG.unpack(mem)[5:] == (64, 1 << 22, 7, 0)
    fput = records.encode_config(0, 0, write, read, fput_addr=0xFFFFFFFF8143A2F0)
    assert CONFIG.unpack(fput)[-1] == 0xFFFFFFFF8143A2F0
    assert uid == 0xFFFFFFFF
    assert scope == 4 | 16
    assert filters[: FILE_FILTER.size] == write
    assert filters[FILE_FILTER.size :] == read
    assert records.encode_config(1000, 0, write, read)[:4] == (1000).to_bytes(4, "little")


# --- counters ---


def test_decode_counters_names_and_sums():
    n, kinds = len(COUNTERS), len(records.COUNTER_KINDS)
    cpu0 = list(range(kinds * n))
    cpu1 = [100 * (i + 1) for i in range(kinds * n)]
    out = records.decode_counters([cpu0, cpu1])
    assert list(out) == [f"{k}.{c}" for k in records.COUNTER_KINDS for c in COUNTERS]
    assert out["write.events"] == 0 + 100
    assert out["write.pending_full"] == 6 + 100 * 7
    assert out["read.events"] == n + 100 * (n + 1)
    assert out["read.dropped_bytes"] == (n + 5) + 100 * (n + 6)
    assert out["bpf.chunk_drops"] == (5 * n + 3) + 100 * (5 * n + 4)
    assert records.NUM_COUNTERS == kinds * n == 72


def test_decode_counters_no_cpus():
    out = records.decode_counters([])
    assert len(out) == records.NUM_COUNTERS
    assert set(out.values()) == {0}


@given(io_id=U64, prev=U64, pos=U64, data=st.binary(min_size=1, max_size=200))
def test_a_whole_continuation_gives_its_fields_and_its_bytes_in_place(io_id, prev, pos, data):
    raw = memoryview(raw_cont(io_id, prev, len(data), pos, data))
    ts, got_id, got_prev, got_pos, _req, got = records.whole_file_cont(raw)
    assert (ts, got_id, got_prev, got_pos, bytes(got)) == (9, io_id, prev, pos, data)
    assert isinstance(got, memoryview) and got.obj is raw.obj  # not a copy


@pytest.mark.parametrize(
    "raw",
    [
        raw_cont(1, 0, 5, 0, b"abc"),  # more bytes to come in other chunks
        cont_head(1, 0, 3, 0) + file_data(1, 0, b"", want=3, flags=records.DATA_UNREADABLE),
        cont_head(5, 4, 1, 0) + file_data(6, 0, b"x"),
        raw_cont(1, 0, 3, 0, b"xyz")[:-1],  # truncated
        raw_cont(1, 0, 3, 0, b"xyz")[:40],
    ],
    ids=["partial", "unreadable", "other-syscall", "short-data", "short-header"],
)
def test_any_other_continuation_is_left_to_the_full_decoder(raw):
    assert records.whole_file_cont(raw) is None
