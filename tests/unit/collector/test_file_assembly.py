"""FileAssembler: kernel file events + data chunks -> bus messages with explicit lost ranges."""

import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf import records
from bpf.records import CHUNK, DIR_READ, DIR_WRITE, EV_APPEND, EV_PATH_TRUNCATED
from collector.file_assembly import (
    IO_TIMEOUT_NS,
    MAX_MESSAGE_PAYLOAD,
    STREAM_TIMEOUT_NS,
    FileAssembler,
    Outgoing,
    display_path,
)
from tests.support.records import file_cont, file_data
from tracecap import bus

BOOT_TO_EPOCH = 1_700_000_000_000_000_000
REGULAR = stat.S_IFREG | 0o644
FIFO = stat.S_IFIFO | 0o600
SOCK = stat.S_IFSOCK | 0o777

#: A deterministic, non-repeating-looking byte pattern, large enough for every test io.
PATTERN = bytes((i * 7 + i // 251) % 256 for i in range(2 * 1024 * 1024))


def header(
    ts: int = 5_000, cgroup_id: int = 99, comm: bytes = b"dd", tid: int = 101
) -> records.Header:
    return records.Header(
        kind=records.REC_FILE_EVENT, cpu=3, ts=ts, pid=100, tid=tid, ppid=50, uid=1000,
        cgroup_id=cgroup_id, comm=comm,
    )  # fmt: skip


def event(
    io_len: int,
    *,
    io_id: int = 7,
    pos: int = 4096,
    direction: int = DIR_WRITE,
    syscall: str = "write",
    flags: int = 0,
    mode: int = REGULAR,
    path: bytes = b"/tmp/out.bin",
    inode: int = 555,
    ts: int = 5_000,
    tid: int = 101,
) -> records.FileEvent:
    return records.FileEvent(
        hdr=header(ts=ts, tid=tid), io_id=io_id, io_len=io_len, pos=pos, inode=inode, dev=0x800001,
        mode=mode, fd=3, syscall=syscall, direction=direction, flags=flags, path=path,
    )  # fmt: skip


def chunk(io_off: int, size: int, *, io_id: int = 7) -> records.FileData:
    return records.FileData(io_id, io_off, size, False, PATTERN[io_off : io_off + size])


def unreadable(io_off: int, size: int, *, io_id: int = 7) -> records.FileData:
    """What the kernel sends when it cannot read user memory: want bytes, no data."""
    return records.FileData(io_id, io_off, size, True, b"")


def polled(asm: FileAssembler, data: records.FileData, now_ns: int) -> list[Outgoing]:
    """One chunk, then what the collector does after every ring-buffer poll: flush the runs."""
    return asm.on_data(data, now_ns) + asm.flush_runs()


def data_msgs(out: list[Outgoing]) -> list[Outgoing]:
    return [m for m in out if m.payload is not None]


def lost_msgs(out: list[Outgoing]) -> list[Outgoing]:
    return [m for m in out if m.payload is None]


def summary(out: list[Outgoing]) -> list[tuple]:
    """(kind, io_off, off, size-or-range) per message, in order."""
    rows = []
    for m in out:
        if m.payload is None:
            rows.append(("lost", m.env["io_off"], m.env["off"], m.env["lost"]))
        else:
            assert "lost" not in m.env
            rows.append(("data", m.env["io_off"], m.env["off"], len(m.payload)))
    return rows


# --- single and merged chunks ---


def test_single_chunk_io_gives_one_message_with_full_envelope():
    asm = FileAssembler(BOOT_TO_EPOCH, container_of=lambda cg: f"ctr-{cg}")
    assert asm.on_event(event(10), now_ns=0) == []
    out = polled(asm, chunk(0, 10), now_ns=1)
    assert len(out) == 1
    msg = out[0]
    assert msg.topic == bus.TOPIC_FILE_WRITE
    assert msg.payload == PATTERN[:10]
    assert msg.env == {
        "ts": 5_000 + BOOT_TO_EPOCH,
        "cpu": 3,
        "io_req": 0,
        "mnt_ns": 0,
        "pid_ns": 0,
        "thread_start": 0,
        "pid": 100,
        "tid": 101,
        "ppid": 50,
        "uid": 1000,
        "ns_pid": 0,
        "ns_tid": 0,
        "ns_ppid": 0,
        "comm": b"dd",
        "cgroup_id": 99,
        "container_id": "ctr-99",
        "syscall": "write",
        "fd": 3,
        "path": b"/tmp/out.bin",
        "path_truncated": False,
        "dev": 0x800001,
        "inode": 555,
        "generation": 0,
        "mode": REGULAR,
        "io_id": 7,
        "io_len": 10,
        "io_count": 1,
        "ts_last": 5_000 + BOOT_TO_EPOCH,
        "append": False,
        "io_off": 0,
        "off": 4096,
    }
    assert asm.lost_bytes == 0
    assert asm.orphan_chunks == 0


def test_message_envelope_passes_the_bus_decoder():
    asm = FileAssembler(BOOT_TO_EPOCH)
    asm.on_event(event(10), 0)
    (msg,) = polled(asm, chunk(0, 10), 1)
    frames = bus.encode(msg.topic, dict(msg.env, v=bus.VERSION, epoch=1, seq=1), msg.payload)
    decoded = bus.decode(frames)
    assert decoded.env["off"] == 4096
    assert decoded.env["container_id"] == ""
    assert decoded.payload == PATTERN[:10]


@pytest.mark.parametrize("syscall", sorted(records.MAPPING_SYSCALLS))
def test_a_mappings_dirty_pages_say_they_came_from_the_mapping(syscall: str):
    """msync, munmap and exit records carry a shared mapping's dirty pages (mappings.bpf.h):
    their messages say so, and pass the bus decoder with that source."""
    asm = FileAssembler(BOOT_TO_EPOCH)
    asm.on_event(event(10, syscall=syscall), 0)
    (msg,) = polled(asm, chunk(0, 10), 1)
    assert msg.env["source"] == bus.SOURCE_MAPPING and msg.env["syscall"] == syscall
    frames = bus.encode(msg.topic, dict(msg.env, v=bus.VERSION, epoch=1, seq=1), msg.payload)
    assert bus.parse_source(bus.decode(frames).env) == bus.SOURCE_MAPPING


def test_bytes_from_a_user_buffer_name_no_source():
    asm = FileAssembler(BOOT_TO_EPOCH)
    asm.on_event(event(10), 0)
    (msg,) = polled(asm, chunk(0, 10), 1)
    assert "source" not in msg.env


def test_completed_io_is_forgotten_so_a_late_chunk_is_an_orphan():
    asm = FileAssembler(BOOT_TO_EPOCH)
    asm.on_event(event(10), 0)
    assert len(polled(asm, chunk(0, 10), 1)) == 1
    assert polled(asm, chunk(0, 10), 2) == []
    assert asm.orphan_chunks == 1
    assert asm.expire(0, force=True) == []


def test_multi_chunk_io_is_merged_into_one_message():
    io_len = 2 * CHUNK + 123
    asm = FileAssembler(0)
    asm.on_event(event(io_len), 0)
    assert polled(asm, chunk(0, CHUNK), 1) == []
    assert polled(asm, chunk(CHUNK, CHUNK), 2) == []
    out = polled(asm, chunk(2 * CHUNK, 123), 3)
    assert summary(out) == [("data", 0, 4096, io_len)]
    assert out[0].payload == PATTERN[:io_len]


def test_io_larger_than_max_payload_is_split_with_right_offsets():
    assert MAX_MESSAGE_PAYLOAD % CHUNK == 0
    per_msg = MAX_MESSAGE_PAYLOAD // CHUNK
    io_len = 2 * MAX_MESSAGE_PAYLOAD + 3 * CHUNK + 17
    pos = 1_000_000
    asm = FileAssembler(0)
    asm.on_event(event(io_len, pos=pos), 0)
    out: list[Outgoing] = []
    emitted_after: list[int] = []
    for i, off in enumerate(range(0, io_len, CHUNK)):
        got = polled(asm, chunk(off, min(CHUNK, io_len - off)), i)
        if got:
            emitted_after.append(i)
        out += got
    # flushed as soon as MAX_MESSAGE_PAYLOAD are gathered, then the remainder at the end of the io
    assert emitted_after == [per_msg - 1, 2 * per_msg - 1, 2 * per_msg + 3]
    m = MAX_MESSAGE_PAYLOAD
    assert summary(out) == [
        ("data", 0, pos, m),
        ("data", m, pos + m, m),
        ("data", 2 * m, pos + 2 * m, 3 * CHUNK + 17),
    ]
    assert b"".join(msg.payload for msg in out) == PATTERN[:io_len]
    assert all(msg.env["io_len"] == io_len for msg in out)


# --- losses ---


def test_missing_middle_chunk_gives_lost_range_in_file_offsets():
    pos = 8192
    asm = FileAssembler(0)
    asm.on_event(event(3 * CHUNK, pos=pos), 0)
    assert polled(asm, chunk(0, CHUNK), 1) == []
    # chunk 1 was dropped by the kernel (ring buffer full); chunk 2 arrives
    out = polled(asm, chunk(2 * CHUNK, CHUNK), 2)
    assert summary(out) == [
        ("data", 0, pos, CHUNK),
        ("lost", CHUNK, pos + CHUNK, [[pos + CHUNK, pos + 2 * CHUNK]]),
        ("data", 2 * CHUNK, pos + 2 * CHUNK, CHUNK),
    ]
    assert out[0].payload == PATTERN[:CHUNK]
    assert out[2].payload == PATTERN[2 * CHUNK : 3 * CHUNK]
    assert asm.lost_bytes == CHUNK
    assert all(m.topic == bus.TOPIC_FILE_WRITE for m in out)


def test_unreadable_chunk_gives_lost_range():
    pos = 100
    asm = FileAssembler(0)
    asm.on_event(event(2 * CHUNK + 10, pos=pos), 0)
    polled(asm, chunk(0, CHUNK), 1)
    out = polled(asm, unreadable(CHUNK, CHUNK), 2)
    assert summary(out) == [
        ("data", 0, pos, CHUNK),
        ("lost", CHUNK, pos + CHUNK, [[pos + CHUNK, pos + 2 * CHUNK]]),
    ]
    out = polled(asm, chunk(2 * CHUNK, 10), 3)
    assert summary(out) == [("data", 2 * CHUNK, pos + 2 * CHUNK, 10)]
    assert asm.lost_bytes == CHUNK
    assert asm.expire(0, force=True) == []  # the io is complete


def test_unreadable_last_chunk_completes_the_io():
    asm = FileAssembler(0)
    asm.on_event(event(CHUNK + 5, pos=0), 0)
    polled(asm, chunk(0, CHUNK), 1)
    out = polled(asm, unreadable(CHUNK, 5), 2)
    assert summary(out) == [("data", 0, 0, CHUNK), ("lost", CHUNK, CHUNK, [[CHUNK, CHUNK + 5]])]
    assert polled(asm, chunk(0, 1), 3) == []
    assert asm.orphan_chunks == 1


def test_io_times_out_and_the_rest_is_lost():
    pos = 50
    asm = FileAssembler(0)
    asm.on_event(event(3 * CHUNK, pos=pos), now_ns=1_000)
    polled(asm, chunk(0, CHUNK), 2_000)
    assert asm.expire(1_000 + IO_TIMEOUT_NS - 1) == []
    out = asm.expire(1_000 + IO_TIMEOUT_NS)
    assert summary(out) == [
        ("data", 0, pos, CHUNK),
        ("lost", CHUNK, pos + CHUNK, [[pos + CHUNK, pos + 3 * CHUNK]]),
    ]
    assert asm.lost_bytes == 2 * CHUNK
    # a chunk arriving after the timeout no longer has an io to join
    assert polled(asm, chunk(CHUNK, CHUNK), 1_000 + IO_TIMEOUT_NS + 1) == []
    assert asm.orphan_chunks == 1


def test_expire_only_closes_ios_older_than_the_timeout():
    asm = FileAssembler(0)
    asm.on_event(event(10, io_id=1, pos=0), now_ns=0)
    asm.on_event(event(20, io_id=2, pos=0, tid=102), now_ns=IO_TIMEOUT_NS // 2)
    out = asm.expire(IO_TIMEOUT_NS)
    assert [(m.env["io_id"], m.env["lost"]) for m in out] == [(1, [[0, 10]])]
    out = polled(asm, chunk(0, 20, io_id=2), IO_TIMEOUT_NS + 1)
    assert summary(out) == [("data", 0, 0, 20)]


def test_force_expiry_closes_every_pending_io():
    asm = FileAssembler(0)
    asm.on_event(event(CHUNK + 40, io_id=1, pos=1000), now_ns=0)
    read = event(30, io_id=2, pos=0, direction=DIR_READ, syscall="read", tid=102)
    asm.on_event(read, now_ns=0)
    polled(asm, chunk(0, CHUNK, io_id=1), 1)
    assert asm.expire(2) == []
    out = asm.expire(2, force=True)
    assert [(m.env["io_id"], m.topic, m.payload is None) for m in out] == [
        (1, bus.TOPIC_FILE_WRITE, False),
        (1, bus.TOPIC_FILE_WRITE, True),
        (2, bus.TOPIC_FILE_READ, True),
    ]
    assert out[0].payload == PATTERN[:CHUNK]
    assert out[1].env["lost"] == [[1000 + CHUNK, 1000 + CHUNK + 40]]
    assert out[2].env["lost"] == [[0, 30]]
    assert out[2].env["io_off"] == 0
    assert asm.lost_bytes == 70
    assert asm.expire(3, force=True) == []


def test_orphan_chunk_is_counted_and_dropped():
    asm = FileAssembler(0)
    assert polled(asm, chunk(0, 10, io_id=42), 0) == []
    assert polled(asm, unreadable(10, 10, io_id=42), 0) == []
    assert asm.orphan_chunks == 2
    assert asm.lost_bytes == 0
    assert asm.expire(0, force=True) == []


# --- streams, topics, names, times ---


def test_append_mode_pipe_uses_io_offsets_and_pipe_name():
    asm = FileAssembler(0)
    ev = event(3 * CHUNK, pos=987_654, flags=EV_APPEND, mode=FIFO, path=b"", inode=4242)
    asm.on_event(ev, 0)
    polled(asm, chunk(0, CHUNK), 1)
    out = polled(asm, chunk(2 * CHUNK, CHUNK), 2)
    assert summary(out) == [
        ("data", 0, 0, CHUNK),
        ("lost", CHUNK, CHUNK, [[CHUNK, 2 * CHUNK]]),
        ("data", 2 * CHUNK, 2 * CHUNK, CHUNK),
    ]
    for m in out:
        assert m.env["append"] is True
        assert m.env["path"] == b"pipe:[4242]"


def test_read_direction_uses_read_topic():
    asm = FileAssembler(0)
    asm.on_event(event(4, direction=DIR_READ, syscall="pread64"), 0)
    (msg,) = polled(asm, chunk(0, 4), 0)
    assert msg.topic == bus.TOPIC_FILE_READ
    assert msg.env["syscall"] == "pread64"


def test_write_direction_uses_write_topic_also_for_lost_ranges():
    asm = FileAssembler(0)
    asm.on_event(event(4, direction=DIR_WRITE, syscall="pwritev2"), 0)
    (msg,) = polled(asm, unreadable(0, 4), 0)
    assert msg.topic == bus.TOPIC_FILE_WRITE
    assert msg.payload is None


def test_timestamp_is_boot_time_plus_offset_and_path_truncated_flag():
    asm = FileAssembler(boot_to_epoch_ns=1_000_000_000)
    asm.on_event(event(1, ts=123_456, flags=EV_PATH_TRUNCATED), 0)
    (msg,) = polled(asm, chunk(0, 1), 0)
    assert msg.env["ts"] == 1_000_123_456
    assert msg.env["path_truncated"] is True
    assert msg.env["append"] is False


@pytest.mark.parametrize(
    ("mode", "path", "expected"),
    [
        (FIFO, b"", b"pipe:[77]"),
        (SOCK, b"", b"socket:[77]"),
        (REGULAR, b"", b""),
        (stat.S_IFCHR | 0o666, b"", b""),
        (FIFO, b"/run/my.fifo", b"/run/my.fifo"),
        (REGULAR, b"/etc/\xffpasswd", b"/etc/\xffpasswd"),
    ],
)
def test_display_path(mode, path, expected):
    assert display_path(event(1, mode=mode, path=path, inode=77)) == expected


# --- property: payload + lost ranges tile the io exactly ---

_FATES = st.sampled_from(["ok", "ok", "ok", "drop", "unreadable"])


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, CHUNK), min_size=1, max_size=24),
    fates_seed=st.data(),
    pos=st.integers(0, 2**40),
    append=st.booleans(),
    by_timeout=st.booleans(),
)
def test_payload_and_lost_ranges_tile_the_io(sizes, fates_seed, pos, append, by_timeout):
    fates = fates_seed.draw(st.lists(_FATES, min_size=len(sizes), max_size=len(sizes)))
    io_len = sum(sizes)
    asm = FileAssembler(0)
    ev = event(io_len, pos=pos, flags=EV_APPEND if append else 0)
    asm.on_event(ev, now_ns=0)
    out: list[Outgoing] = []
    off = 0
    for size, fate in zip(sizes, fates, strict=True):
        if fate == "ok":
            out += polled(asm, chunk(off, size), now_ns=1)
        elif fate == "unreadable":
            out += polled(asm, unreadable(off, size), now_ns=1)
        off += size
    out += asm.expire(IO_TIMEOUT_NS, force=not by_timeout)
    assert asm.expire(2 * IO_TIMEOUT_NS, force=True) == []

    base = 0 if append else pos
    spans = []
    for m in out:
        assert m.env["io_len"] == io_len
        assert m.env["off"] == base + m.env["io_off"]
        if m.payload is None:
            ((start, end),) = m.env["lost"]
            assert start == m.env["off"]
            assert end > start
            spans.append((start, end, None))
        else:
            assert 0 < len(m.payload) < MAX_MESSAGE_PAYLOAD + CHUNK
            spans.append((m.env["off"], m.env["off"] + len(m.payload), m.payload))
    # messages come out in file order, and cover [base, base + io_len) without gap or overlap
    cursor = base
    for start, end, payload in spans:
        assert start == cursor
        if payload is not None:
            io_off = start - base
            assert payload == PATTERN[io_off : io_off + len(payload)]
        cursor = end
    assert cursor == base + io_len
    lost_total = sum(end - start for start, end, payload in spans if payload is None)
    expected_lost = sum(s for s, f in zip(sizes, fates, strict=True) if f != "ok")
    assert lost_total == expected_lost == asm.lost_bytes


def test_a_dropped_syscall_becomes_a_loss_notice_over_its_span():
    asm = FileAssembler(boot_to_epoch_ns=0)
    drop = records.DroppedIo(
        inode=7, cgroup_id=1, dev=2049, direction=records.DIR_WRITE, bytes=8192, lo=4096,
        hi=16384, ios=2, append=False,
    )  # fmt: skip
    out = asm.on_dropped(drop, now_ns=5)
    assert out.topic == bus.TOPIC_FILE_WRITE and out.payload is None
    assert out.env["lost"] == [[4096, 16384]] and out.env["lost_bytes"] == 8192
    assert (out.env["dev"], out.env["inode"], out.env["off"]) == (2049, 7, 4096)
    assert asm.lost_bytes == 8192
    bus.decode(bus.encode(out.topic, {**out.env, "v": 1, "epoch": 1, "seq": 0}))


def test_a_dropped_stream_write_is_a_loss_of_its_byte_count():
    asm = FileAssembler(boot_to_epoch_ns=0)
    drop = records.DroppedIo(
        inode=7, cgroup_id=1, dev=12, direction=records.DIR_READ, bytes=100, lo=0, hi=0,
        ios=1, append=True,
    )  # fmt: skip
    out = asm.on_dropped(drop, now_ns=5)
    assert out.topic == bus.TOPIC_FILE_READ and out.env["lost"] == [[0, 100]]


@pytest.mark.parametrize(("nbytes", "lost"), [(0, []), (300, [[0, 300]])])
def test_a_transfer_of_unknown_size_is_counted_not_given_a_range(nbytes: int, lost: list) -> None:
    """A sendmmsg message whose header was unmapped by exit: its file is known, its byte count
    is not. The notice names no range for it (a made-up one would break bytes written = bytes
    present + bytes missing) and says how many such transfers were lost; with sized drops of
    the same file beside it, their bytes are the range."""
    asm = FileAssembler(boot_to_epoch_ns=0)
    drop = records.DroppedIo(
        inode=7, cgroup_id=1, dev=12, direction=records.DIR_WRITE, bytes=nbytes, lo=0, hi=0,
        ios=2, append=True, unsized=1,
    )  # fmt: skip
    out = asm.on_dropped(drop, now_ns=5)
    env = out.env
    assert env["lost"] == lost and env["io_len"] == nbytes and env["lost_unsized"] == 1
    assert (env["lost_bytes"], env["lost_ios"]) == (nbytes, 2)
    assert (asm.lost_bytes, asm.lost_unsized) == (nbytes, 1)
    decoded = bus.decode(bus.encode(out.topic, {**env, "v": 1, "epoch": 1, "seq": 0})).env
    # what the file writer checks before taking it
    assert bus.parse_lost(decoded.get("lost")) == [tuple(r) for r in lost]
    assert bus.parse_lost_unsized(decoded) == 1
    bus.check_transfer(decoded, 0)


def test_a_sized_drop_carries_no_unsized_count() -> None:
    asm = FileAssembler(boot_to_epoch_ns=0)
    drop = records.DroppedIo(
        inode=7, cgroup_id=1, dev=12, direction=records.DIR_READ, bytes=100, lo=0, hi=0,
        ios=1, append=True,
    )  # fmt: skip
    assert "lost_unsized" not in asm.on_dropped(drop, now_ns=5).env
    assert asm.lost_unsized == 0


# --- continuations and runs ---


def cont(
    io_id: int,
    prev: int,
    io_len: int,
    pos: int,
    data: bytes = b"",
    ts: int = 6_000,
    req: int = 0,
) -> records.FileCont:
    """A continuation, carrying its first chunk (`data`, at io offset 0)."""
    first = records.FileData(io_id, 0, len(data), False, data)
    return records.FileCont(ts, io_id, prev, io_len, pos, first, req)


def ring_view(c: records.FileCont) -> memoryview:
    """The continuation as the kernel sends it, lent as a view the way the ring reader lends
    records (the assembler must copy what it keeps: the test then overwrites the memory)."""
    f = c.first
    flags = records.DATA_UNREADABLE if f.unreadable else 0
    raw = bytearray(
        file_cont(
            ts=c.ts, io_id=c.io_id, prev_io_id=c.prev_io_id, io_len=c.io_len, pos=c.pos, req=c.req
        )
        + file_data(f.io_id, f.io_off, f.data, want=f.want, flags=flags)
    )
    RING_MEMORY.append(raw)
    return memoryview(raw)


#: Records lent by ring_view; clobber_ring_memory overwrites them as the kernel would.
RING_MEMORY: list[bytearray] = []


def clobber_ring_memory() -> None:
    for raw in RING_MEMORY:
        raw[:] = b"\xee" * len(raw)
    RING_MEMORY.clear()


def stream_of(asm: FileAssembler, sizes: list[int], *, pos: int = 0, first_id: int = 7) -> list:
    """A full event and continuations for `sizes`, each io's bytes in one chunk, all in one
    poll: what the collector publishes after it."""
    out: list[Outgoing] = []
    off = pos
    for i, size in enumerate(sizes):
        io_id = first_id + i
        data = PATTERN[off - pos : off - pos + size]
        if i == 0:
            out += asm.on_event(event(size, io_id=io_id, pos=off), 0)
            out += asm.on_data(records.FileData(io_id, 0, size, False, data), 1)
        else:
            out += asm.on_cont(cont(io_id, io_id - 1, size, off, data, ts=6_000 + i), 1)
        off += size
    return out + asm.flush_runs()


def test_consecutive_syscalls_of_a_stream_are_one_message():
    asm = FileAssembler(BOOT_TO_EPOCH)
    (msg,) = stream_of(asm, [4096, 4096, 100], pos=8192)
    assert msg.payload == PATTERN[: 4096 * 2 + 100]
    env = msg.env
    assert (env["io_id"], env["io_len"], env["io_off"], env["off"]) == (7, 8292, 0, 8192)
    assert env["io_count"] == 3
    assert env["ts"] == 5_000 + BOOT_TO_EPOCH and env["ts_last"] == 6_002 + BOOT_TO_EPOCH
    assert env["path"] == b"/tmp/out.bin" and env["pid"] == 100
    bus.decode(bus.encode(msg.topic, dict(env, v=bus.VERSION, epoch=1, seq=1), msg.payload))


@pytest.mark.parametrize("from_ring", [False, True])
def test_a_run_lists_each_syscalls_time_size_and_request(from_ring):
    """Tracee prints one event per syscall with the size it asked for: a run says each."""
    asm = FileAssembler(BOOT_TO_EPOCH)
    out = asm.on_event(event(4096, io_id=7, pos=0)._replace(req=65536), 0)
    out += asm.on_data(records.FileData(7, 0, 4096, False, PATTERN[:4096]), 1)
    second = cont(8, 7, 100, 4096, PATTERN[4096:4196], ts=6_000, req=131072)
    out += asm.on_cont_record(ring_view(second), 1) if from_ring else asm.on_cont(second, 1)
    (msg,) = out + asm.flush_runs()
    assert msg.env["ios"] == [
        [5_000 + BOOT_TO_EPOCH, 4096, 65536],
        [6_000 + BOOT_TO_EPOCH, 100, 131072],
    ]
    assert "io_req" not in msg.env
    asm = FileAssembler(BOOT_TO_EPOCH)
    out = asm.on_event(event(10, io_id=7, pos=0)._replace(req=4), 0)
    out += asm.on_data(records.FileData(7, 0, 10, False, PATTERN[:10]), 1)
    (single,) = out + asm.flush_runs()
    assert (single.env["io_req"], "ios" in single.env) == (4, False)


def test_a_run_of_tiny_writes_is_cut_at_max_run_ios_so_its_envelope_stays_small():
    from collector.file_assembly import MAX_RUN_IOS

    asm = FileAssembler(BOOT_TO_EPOCH)
    out = stream_of(asm, [1] * (MAX_RUN_IOS + 10))
    assert [m.env["io_count"] for m in out] == [MAX_RUN_IOS, 10]
    for m in out:
        env = dict(m.env, v=bus.VERSION, epoch=1, seq=1, path=b"/" * 4096)
        assert len(bus.encode(m.topic, env, m.payload)[1]) < bus.MAX_ENVELOPE_BYTES


def test_a_run_is_cut_at_the_message_size_and_the_pieces_tile_the_file():
    asm = FileAssembler(0)
    sizes = [CHUNK] * 20
    out = stream_of(asm, sizes, pos=0)
    assert len(out) > 1
    cursor = 0
    for msg in out:
        assert len(msg.payload) <= MAX_MESSAGE_PAYLOAD
        assert msg.env["off"] == cursor and msg.env["io_len"] == len(msg.payload)
        assert msg.payload == PATTERN[cursor : cursor + len(msg.payload)]
        cursor += len(msg.payload)
    assert cursor == sum(sizes)
    assert sum(m.env["io_count"] for m in out) == len(sizes)


def test_a_continuation_of_a_forgotten_stream_is_counted_lost():
    asm = FileAssembler(0)
    assert asm.on_cont(cont(9, 8, 1000, 0, PATTERN[:500]), 0) == []
    assert polled(asm, chunk(500, 500, io_id=9), 1) == []
    assert (asm.orphan_ios, asm.lost_bytes, asm.orphan_chunks) == (1, 1000, 2)


def test_streams_are_forgotten_after_their_timeout():
    asm = FileAssembler(0)
    stream_of(asm, [10])
    asm.expire(STREAM_TIMEOUT_NS - 1)
    asm.on_cont(cont(8, 7, 10, 10), STREAM_TIMEOUT_NS - 1)
    asm.expire(2 * STREAM_TIMEOUT_NS)
    asm.on_cont(cont(9, 8, 10, 20), 2 * STREAM_TIMEOUT_NS)
    assert asm.orphan_ios == 1


def test_a_loss_in_a_run_publishes_the_run_first_then_the_loss_in_file_order():
    asm = FileAssembler(0)
    out = asm.on_event(event(100, io_id=1, pos=0), 0)
    out += asm.on_data(chunk(0, 100, io_id=1), 0)
    out += asm.on_cont(cont(2, 1, 300, 100, PATTERN[100:200]), 0)
    out += asm.on_data(records.FileData(2, 200, 100, False, PATTERN[300:400]), 0)
    out += asm.on_data(records.FileData(2, 100, 100, False, PATTERN[200:300]), 0)  # late
    out += asm.flush_runs()
    assert summary(out) == [
        ("data", 0, 0, 100),
        ("data", 0, 100, 100),
        ("lost", 100, 200, [[200, 300]]),
        ("data", 200, 300, 100),
    ]
    assert [m.env["io_id"] for m in out] == [1, 2, 2, 2]


def test_two_writers_of_one_pipe_keep_their_order():
    asm = FileAssembler(0)
    pipe = {"mode": FIFO, "flags": EV_APPEND, "path": b"", "inode": 77, "pos": 0}
    asm.on_event(event(3, io_id=1, **pipe), 0)
    out = asm.on_data(records.FileData(1, 0, 3, False, b"a1."), 0)
    asm.on_event(event(3, io_id=2, tid=102, **pipe), 0)  # another thread, same pipe
    out += asm.on_data(records.FileData(2, 0, 3, False, b"b1."), 0)
    out += asm.on_cont(cont(3, 1, 3, 0, b"a2."), 0)
    out += asm.on_cont(cont(4, 3, 3, 0, b"a3."), 0)
    out += asm.flush_runs()
    assert [m.payload for m in out] == [b"a1.", b"b1.", b"a2.a3."]
    assert [m.env["io_count"] for m in out] == [1, 1, 2]


def test_the_threads_next_syscall_settles_the_missing_tail_at_once():
    """The kernel sends all of a syscall's records before the thread's next one: a chunk
    missing then is lost, and neither the loss nor the buffered bytes wait for the timeout."""
    asm = FileAssembler(0)
    asm.on_event(event(CHUNK + 10, io_id=1, pos=0), 0)
    assert asm.on_data(chunk(0, CHUNK, io_id=1), 0) == []  # the second chunk was dropped
    out = asm.on_cont(cont(2, 1, 5, CHUNK + 10, PATTERN[:5]), 0)
    assert summary(out) == [("data", 0, 0, CHUNK), ("lost", CHUNK, CHUNK, [[CHUNK, CHUNK + 10]])]
    out = asm.on_event(event(7, io_id=3, pos=0, inode=9), 0)  # same thread, another file
    assert summary(out) == [] and asm.flush_runs()[0].env["io_id"] == 2
    assert summary(asm.expire(0, force=True)) == [("lost", 0, 0, [[0, 7]])]


def test_a_new_full_event_starts_a_new_message():
    asm = FileAssembler(0)
    asm.on_event(event(10, io_id=1, pos=0), 0)
    out = asm.on_data(chunk(0, 10, io_id=1), 0)
    out += asm.on_event(event(10, io_id=2, pos=10), 0)  # the kernel's once-a-second refresh
    out += asm.on_data(records.FileData(2, 0, 10, False, PATTERN[10:20]), 0)
    out += asm.flush_runs()
    assert [(m.env["io_id"], m.env["off"], m.env["io_count"]) for m in out] == [
        (1, 0, 1),
        (2, 10, 1),
    ]


@settings(max_examples=150, deadline=None)
@given(
    ios=st.lists(
        st.tuples(
            st.integers(1, 3 * CHUNK),
            st.sampled_from(["whole", "lost_tail", "unreadable", "refresh"]),
        ),
        min_size=1,
        max_size=30,
    ),
    polls=st.sets(st.integers(0, 29)),
    as_records=st.booleans(),
)
def test_a_stream_of_syscalls_tiles_its_file(ios, polls, as_records):
    """Full events, continuations (whole, with their later chunks dropped, or unreadable) and
    the kernel's refresh, with polls at random points: the messages tile the file, bytes
    exact, every syscall counted once, every missing byte in a lost range. Continuations go
    in as decoded objects or, as the collector hands them over, as records in ring memory
    (which take the fast path when whole)."""
    asm = FileAssembler(0)
    out: list[Outgoing] = []
    pos, prev, expected_lost = 0, None, 0
    for i, (size, fate) in enumerate(ios):
        io_id = 100 + i
        data = PATTERN[pos : pos + size]
        want = min(size, CHUNK)
        if fate == "unreadable":
            first = records.FileData(io_id, 0, want, True, b"")
            expected_lost += want
        else:
            first = records.FileData(io_id, 0, want, False, data[:want])
        if prev is None or fate == "refresh":
            out += asm.on_event(event(size, io_id=io_id, pos=pos), 0)
            out += asm.on_data(first, 0)
        else:
            c = records.FileCont(7, io_id, prev, size, pos, first)
            out += asm.on_cont_record(ring_view(c), 0) if as_records else asm.on_cont(c, 0)
            clobber_ring_memory()  # the kernel reuses the space once the record is handled
        for off in range(CHUNK, size, CHUNK):
            if fate == "lost_tail":
                expected_lost += len(data[off : off + CHUNK])
                continue
            piece = data[off : off + CHUNK]
            out += asm.on_data(records.FileData(io_id, off, len(piece), False, piece), 0)
        if i in polls:
            out += asm.flush_runs()
        pos, prev = pos + size, io_id
    out += asm.expire(IO_TIMEOUT_NS, force=True)

    spans = []
    for m in out:
        if m.payload is None:
            ((start, end),) = m.env["lost"]
            spans.append((start, end, None))
        else:
            assert len(m.payload) <= MAX_MESSAGE_PAYLOAD
            spans.append((m.env["off"], m.env["off"] + len(m.payload), m.payload))
    cursor = 0
    for start, end, payload in sorted(spans, key=lambda span: span[0]):
        assert start == cursor
        if payload is not None:
            assert payload == PATTERN[start:end]
        cursor = end
    assert cursor == pos
    lost = sum(end - start for start, end, payload in spans if payload is None)
    assert lost == asm.lost_bytes == expected_lost
    assert sum(m.env["io_count"] for m in out if m.env["io_off"] == 0) == len(ios)
