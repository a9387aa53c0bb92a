"""FileAssembler keeps bounded state over unbounded runs: one stream per thread, not per file."""

import stat

from bpf import records
from collector import file_assembly
from collector.file_assembly import FileAssembler

REGULAR = stat.S_IFREG | 0o644
#: Files written in the long-run test, as in scripts/bench_state.py.
FILES = 100_000
THREADS = 4


def event(io_id: int, tid: int, inode: int, size: int) -> records.FileEvent:
    hdr = records.Header(
        kind=records.REC_FILE_EVENT, cpu=0, ts=io_id, pid=tid, tid=tid, ppid=1, uid=0,
        cgroup_id=9, comm=b"writer",
    )  # fmt: skip
    return records.FileEvent(
        hdr=hdr, io_id=io_id, io_len=size, pos=0, inode=inode, dev=0x800001, mode=REGULAR,
        fd=3, syscall="write", direction=records.DIR_WRITE, flags=0, path=b"/w/f%d" % inode,
    )  # fmt: skip


def whole_cont(io_id: int, prev: int, pos: int, data: bytes) -> records.FileCont:
    first = records.FileData(io_id, 0, len(data), False, data)
    return records.FileCont(io_id, io_id, prev, len(data), pos, first)


def small_file(asm: FileAssembler, io_id: int, tid: int, now_ns: int) -> int:
    """One distinct small file: a full event and its one chunk; the bytes published."""
    data = b"%08d small file\n" % io_id
    out = asm.on_event(event(io_id, tid, 1_000_000 + io_id, len(data)), now_ns)
    out += asm.on_data(records.FileData(io_id, 0, len(data), False, data), now_ns)
    return sum(len(m.payload or b"") for m in out)


def test_100k_distinct_files_leave_one_stream_per_thread_without_any_expiry():
    """The collector's tables must not follow the number of files: with no expiry at all (a
    file every few microseconds, well inside STREAM_TIMEOUT_NS), 100,000 files written by 4
    threads leave 4 streams, nothing pending and no run once flushed."""
    asm = FileAssembler(0)
    published = 0
    for i in range(FILES):
        published += small_file(asm, i + 1, 1000 + i % THREADS, i * 1000)
        if i % 32 == 31:
            published += sum(len(m.payload or b"") for m in asm.flush_runs())
        assert asm.streams <= THREADS
    published += sum(len(m.payload or b"") for m in asm.flush_runs())
    assert published == sum(len(b"%08d small file\n" % (i + 1)) for i in range(FILES))
    assert asm.streams == THREADS
    assert (len(asm._pending), len(asm._runs), len(asm._stream_of_tid)) == (0, 0, THREADS)
    assert asm.streams_evicted == asm.orphan_ios == asm.lost_bytes == 0


def test_a_full_event_forgets_the_stream_it_replaces_and_the_latest_one_still_continues():
    asm = FileAssembler(0)
    size = small_file(asm, 1, 7, 0) + sum(len(m.payload or b"") for m in asm.flush_runs())
    small_file(asm, 2, 7, 0)  # thread 7's next file: the kernel's io_streams now names io 2
    assert asm.streams == 1
    assert asm.on_cont(whole_cont(3, 2, size, b"y" * 10), 0) == []  # joins io 2's run
    assert asm.on_cont(whole_cont(4, 1, size, b"z" * 10), 0) == []  # io 1's stream is gone
    (msg,) = asm.flush_runs()
    assert (msg.env["io_id"], msg.env["io_count"], msg.env["inode"]) == (2, 2, 1_000_002)
    assert (asm.orphan_ios, asm.lost_bytes) == (1, 10)


def test_a_replaced_streams_pending_syscall_is_closed_with_its_missing_bytes_lost():
    asm = FileAssembler(0)
    asm.on_event(event(1, 7, 50, 100), 0)
    asm.on_data(records.FileData(1, 0, 40, False, b"a" * 40), 0)
    out = asm.on_event(event(2, 7, 51, 10), 0)
    assert [m.env["io_id"] for m in out] == [1, 1]
    assert out[0].payload == b"a" * 40 and out[1].env["lost"] == [[40, 100]]
    assert asm.streams == 1 and len(asm._pending) == 1


def test_more_threads_than_the_bound_evict_the_oldest_counted(monkeypatch):
    monkeypatch.setattr(file_assembly, "MAX_STREAMS", 64)
    asm = FileAssembler(0)
    for i in range(1000):
        small_file(asm, i + 1, 10_000 + i, 0)  # every file from a thread of its own
        asm.flush_runs()
    assert asm.streams == 64 and len(asm._stream_of_tid) == 64
    assert asm.streams_evicted == 1000 - 64
    asm.on_cont(whole_cont(2000, 1, 20, b"q"), 0)  # the first thread's stream was evicted
    assert asm.orphan_ios == 1
    # the tables were copied afresh on the way (every 256 evictions): the newest 64 remain
    for io_id in range(937, 1001):
        assert asm.on_cont(whole_cont(3000 + io_id, io_id, 20, b"r"), 0) == []
    assert asm.orphan_ios == 1 and len(asm.flush_runs()) == 64


def test_force_expiry_forgets_every_stream_and_thread():
    asm = FileAssembler(0)
    for i in range(10):
        small_file(asm, i + 1, 100 + i, 0)
    asm.expire(0, force=True)
    assert asm.streams == 0 and asm._stream_of_tid == {}
