"""The file writer, fed decoded bus messages directly (no socket)."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.envelopes import file_env
from tests.support.writer_harness import FakeClock, OutputTree, WriterHarness, byte_equation
from tracecap import bus
from writers.file import FileWriter
from writers.ranges import RangeSet


class Harness(WriterHarness[FileWriter]):
    """A file writer on a fake clock; ``send`` is a ``file.write.`` message."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        clock = self.clock = FakeClock()
        super().__init__(root, lambda out, index: FileWriter(out, index, clock=clock, **kwargs))

    def io(self, payload: bytes, *, off: int, io_id: int, topic=bus.TOPIC_FILE_WRITE, **kw):
        """One whole syscall in one chunk."""
        kw.setdefault("io_len", len(payload))
        self.send(payload, file_env(off=off, io_id=io_id, **kw), topic)

    def idle(self, seconds: float = 2.0) -> None:
        self.clock.now += seconds
        self.writer.tick(self.clock.now)

    def latest(self, path: str) -> dict[str, Any]:
        return [r for r in self.records() if r["path"] == path][-1]


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


W = "host/write.dev-2049.inode-77"


def test_positional_writes_land_at_their_offsets(h: Harness) -> None:
    h.io(b"world", off=5, io_id=2)
    h.io(b"hello", off=0, io_id=1)
    h.idle()
    data = (h.root / W).read_bytes()
    assert data == b"helloworld"
    rec = h.latest(W)
    assert rec["size"] == 10
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["complete"] is True and rec["missing"] == []
    assert rec["ios"] == 2 and rec["kind"] == "write"
    assert rec["syscalls"] == ["write"]
    assert rec["source_path"] == "/tmp/target"
    assert (rec["dev"], rec["inode"], rec["pid"], rec["tid"], rec["uid"]) == (
        2049,
        77,
        100,
        101,
        1000,
    )
    assert rec["comm"] == "bash" and "comm_hex" not in rec


def test_one_syscall_in_several_chunks(h: Harness) -> None:
    payload = bytes(range(256)) * 4
    for io_off in (512, 0, 256, 768):  # out of order
        env = file_env(off=4096 + io_off, io_id=9, io_len=1024, io_off=io_off)
        h.send(payload[io_off : io_off + 256], env)
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is True and rec["ios"] == 1
    assert (h.root / W).read_bytes()[4096:] == payload
    assert rec["size"] == 4096 + 1024  # the hole before 4096 is sparse, not missing


def test_append_mode_concatenates(h: Harness) -> None:
    for i, chunk in enumerate([b"one ", b"two ", b"three"]):
        h.io(chunk, off=0, io_id=i, append=True, path=b"pipe:[1234]", inode=1234)
    h.idle()
    path = "host/write.dev-2049.inode-1234"
    assert (h.root / path).read_bytes() == b"one two three"
    rec = h.latest(path)
    assert rec["append"] is True and rec["size"] == 13 and rec["ios"] == 3


def test_dev_null_writes_are_split_per_pid(h: Harness) -> None:
    h.io(b"from 100", off=0, io_id=1, path=b"/dev/null", inode=5, append=True)
    h.io(b"from 200", off=0, io_id=2, path=b"/dev/null", inode=5, pid=200, append=True)
    h.io(b"x", off=0, io_id=3, path=b"/dev/null", inode=5, append=True, topic=bus.TOPIC_FILE_READ)
    h.idle()
    assert (h.root / "host/write.dev-2049.inode-5.pid-100").read_bytes() == b"from 100"
    assert (h.root / "host/write.dev-2049.inode-5.pid-200").read_bytes() == b"from 200"
    assert (h.root / "host/read.dev-2049.inode-5").read_bytes() == b"x"


def test_lost_ranges_make_the_artifact_incomplete(h: Harness) -> None:
    h.io(b"A" * 10, off=0, io_id=1)
    env = file_env(off=10, io_id=2, io_len=4096, lost=[[10, 4106]])
    h.send(None, env)
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is False
    assert rec["missing"] == [[10, 4106]]
    assert rec["ios"] == 2
    assert rec["size"] == 10


def test_a_transfer_lost_of_unknown_size_makes_the_artifact_incomplete(h: Harness) -> None:
    """The collector's notice for a socket message whose size could not be read: no range,
    ``lost_unsized``. The artifact holds every byte that came (none listed missing, since no
    offset is known for them) and is not complete, kept when rebuilt from its index line."""
    path = "host/write.dev-2049.inode-1234"
    stream = {"append": True, "path": b"socket:[1234]", "inode": 1234}
    h.io(b"one ", off=0, io_id=1, **stream)
    notice = file_env(off=0, io_id=1 << 62, io_len=0, lost=[], lost_unsized=2, **stream)
    h.send(None, notice)
    h.io(b"two", off=4, io_id=2, **stream)
    h.idle()
    rec = h.latest(path)
    assert (rec["complete"], rec["missing"], rec["lost_unsized"]) == (False, [], 2)
    assert rec["size"] == 7 and (h.root / path).read_bytes() == b"one two"
    byte_equation(b"one two", (h.root / path).read_bytes(), rec["missing"])
    assert h.writer._artifacts == {}  # released: the next message rebuilds it from the line
    h.io(b"!", off=7, io_id=3, **stream)
    h.idle()
    rec = h.latest(path)
    assert (rec["complete"], rec["lost_unsized"], rec["size"]) == (False, 2, 8)
    assert h.writer.counters["rebuilt"] == 1


def test_a_whole_stream_has_no_unsized_field(h: Harness) -> None:
    h.io(b"x", off=0, io_id=1, append=True, path=b"socket:[9]", inode=9)
    h.idle()
    rec = h.latest("host/write.dev-2049.inode-9")
    assert rec["complete"] is True and "lost_unsized" not in rec


def test_an_incomplete_io_is_recorded_as_missing(h: Harness) -> None:
    env = file_env(off=1000, io_id=3, io_len=100, io_off=0)
    h.send(b"x" * 40, env)
    env = file_env(off=1080, io_id=3, io_len=100, io_off=80)
    h.send(b"y" * 20, env)
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is False
    assert rec["missing"] == [[1040, 1080]]


def test_idle_flush_then_later_records_for_the_same_path(h: Harness) -> None:
    h.io(b"first", off=0, io_id=1)
    h.idle(0.5)
    assert h.records() == []  # not idle long enough
    h.idle(0.6)
    assert len(h.records()) == 1
    h.idle()
    assert len(h.records()) == 1  # nothing new, no new record
    h.clock.now += 1
    h.io(b"+more", off=5, io_id=2, ts=2_000)
    h.writer.close()
    records = h.records()
    assert len(records) == 2
    last = records[-1]
    data = (h.root / W).read_bytes()
    assert data == b"first+more"
    assert last["sha256"] == hashlib.sha256(data).hexdigest()
    assert (last["first_ts"], last["last_ts"], last["ios"]) == (1_000, 2_000, 2)


def test_hostile_strings_are_kept_visible(h: Harness) -> None:
    h.io(b"x", off=0, io_id=1, comm=b"ev\xffil\n", path=b"/tmp/\xfe\nname")
    h.idle()
    rec = h.latest(W)
    assert rec["comm"] == "ev\\xffil\n" and rec["comm_hex"] == b"ev\xffil\n".hex()
    assert rec["source_path_hex"] == b"/tmp/\xfe\nname".hex()
    assert len((h.root / "index.jsonl").read_text().splitlines()) == 1


def test_container_artifacts_go_under_the_container_id(h: Harness) -> None:
    cid = "ab" * 32
    h.io(b"in a container", off=0, io_id=1, container_id=cid)
    h.idle()
    assert (h.root / cid / "write.dev-2049.inode-77").read_bytes() == b"in a container"
    assert h.latest(f"{cid}/write.dev-2049.inode-77")["container_id"] == cid


def test_a_planted_symlink_is_counted_not_followed(h: Harness, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (h.root / "host").mkdir()
    (h.root / W).symlink_to(victim)
    h.io(b"overwrite!", off=0, io_id=1)
    h.idle()
    assert victim.read_bytes() == b"precious"
    assert h.writer.counters["write_errors"] >= 1
    rec = h.latest(W)
    assert rec["complete"] is False and rec["missing"] == [[0, 10]] and rec["sha256"] is None


def test_fd_lru_eviction_does_not_corrupt(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_open=2)
    try:
        expected = {inode: bytearray() for inode in range(1, 6)}
        io_id = 0
        for round_ in range(4):
            for inode in expected:
                chunk = f"[{inode}:{round_}]".encode()
                off = len(expected[inode])
                h.io(chunk, off=off, io_id=io_id, inode=inode)
                expected[inode] += chunk
                io_id += 1
        h.writer.close()
        for inode, data in expected.items():
            path = f"host/write.dev-2049.inode-{inode}"
            assert (h.root / path).read_bytes() == data
            assert h.latest(path)["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(h.writer._fds) == 0
    finally:
        h.index.close()
        h.out.close()


def test_a_run_of_merged_syscalls_counts_each_of_them(h: Harness) -> None:
    h.io(b"abcdef", off=0, io_id=1, io_count=3)
    h.io(b"gh", off=6, io_id=4)
    h.idle()
    rec = h.latest(W)
    assert (rec["ios"], rec["size"], rec["complete"]) == (4, 8, True)
    assert (h.root / W).read_bytes() == b"abcdefgh"


@pytest.mark.parametrize(
    "overrides",
    [
        {"container_id": "../../etc"},
        {"off": -1},
        {"io_off": 10, "io_len": 5},
        {"lost": "everything"},
        {"lost": [[5, 1]]},
        {"dev": -1},
        {"io_count": "3"},
        {"io_count": -1},
        {"io_count": 10**9, "io_len": 4},
        {"source": "guess"},
        {"lost_unsized": -1},
        {"lost_unsized": "2"},
        {"lost_unsized": 1 << 32},
    ],
)
def test_nonsense_is_rejected_and_counted(h: Harness, overrides: dict[str, Any]) -> None:
    h.send(b"data", file_env(**overrides))
    assert h.writer.counters["rejected"] == 1
    h.writer.close()
    assert not (h.root / "index.jsonl").read_text()


def test_only_enabled_directions(tmp_path: Path) -> None:
    h = Harness(tmp_path, directions=("write",))
    try:
        assert h.writer.topics == (bus.TOPIC_FILE_WRITE,)
        h.io(b"r", off=0, io_id=1, topic=bus.TOPIC_FILE_READ)
        h.writer.close()
        assert not (h.root / "host").exists()
    finally:
        h.index.close()
        h.out.close()


def test_unknown_direction_is_refused(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree, pytest.raises(ValueError):
        FileWriter(tree.out, tree.index, directions=("exec",))


def test_artifacts_are_0640(h: Harness) -> None:
    h.io(b"#!/bin/sh\n", off=0, io_id=1)
    h.writer.close()
    assert os.stat(h.root / W).st_mode & 0o777 == 0o640


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=30))
def test_range_set_matches_a_plain_set_of_bytes(chunks: list[tuple[int, int]]) -> None:
    ranges, plain = RangeSet(), set()
    for start, length in chunks:
        ranges.add(start, start + length)
        plain.update(range(start, start + length))
    assert ranges.total() == len(plain)
    pairs = ranges.ranges()
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(pairs))
    holes = {b for s, e in ranges.holes(0, 300) for b in range(s, e)}
    assert holes == set(range(300)) - plain
    assert ranges.covers(0, 300) == (plain >= set(range(300)))


def test_a_reused_inode_number_is_a_new_artifact(tmp_path):
    """Tracee #2888: a new file with a freed inode's number must not inherit its bytes."""
    h = Harness(tmp_path)
    h.io(b"OLD-OLD-OL", off=0, io_id=1, generation=11)
    h.io(b"new", off=0, io_id=2, generation=12)
    h.writer.close()
    base = h.root / "host" / "write.dev-2049.inode-77"
    assert base.read_bytes() == b"OLD-OLD-OL"
    assert (base.parent / (base.name + ".gen-12")).read_bytes() == b"new"


def test_a_bus_gap_marks_the_artifacts_being_written(tmp_path):
    from writers.gaps import Gap

    h = Harness(tmp_path)
    h.io(b"abc", off=0, io_id=1)
    h.writer.on_gap(Gap(7, bus.TOPIC_FILE_WRITE, 5, 9))
    h.writer.on_gap(Gap(7, bus.TOPIC_FILE_READ, 1, 2))  # another direction: not ours
    h.writer.close()
    (record,) = [r for r in h.records() if r.get("kind") == "write"]
    assert record["complete"] is False and record["bus_gaps"] == [[7, 5, 9]]
    assert record["missing"] == []  # which bytes, no one can know


# -- completeness across a writer's death, bus gaps and full disks --------------------------


def _stream(h: Harness, data: bytes, start: int, end: int, chunk: int, io_base: int = 1) -> None:
    """``data[start:end]`` written as positional syscalls of ``chunk`` bytes."""
    for off in range(start, end, chunk):
        piece = data[off : min(off + chunk, end)]
        h.io(piece, off=off, io_id=io_base + off // chunk)


def test_a_killed_writer_leaves_its_open_artifact_to_its_successor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file writer dies (SIGKILL) in the middle of a file; the messages sent while it was
    down are lost. Its successor reports the file with the gap and every byte it does not know
    written as missing, so the byte equation holds."""
    from writers import file as file_mod
    from writers.gaps import Gap

    monkeypatch.setattr(file_mod, "CHECKPOINT_BYTES", 8192)
    data = os.urandom(64 * 1024)
    h = Harness(tmp_path)
    try:
        _stream(h, data, 0, 20_000, 1000)  # journal states after 9000 and 18000 bytes
        h.kill()
        assert h.writer.counters["reconciled"] == 1
        # [20000, 30000) went to no one; the successor sees the loss as a gap first
        h.writer.on_gap(Gap(7, bus.TOPIC_FILE_WRITE, 20, 29))
        _stream(h, data, 30_000, len(data), 1000, io_base=100)
        h.idle()
        rec = h.latest(W)
        assert rec["complete"] is False and rec["bus_gaps"] == [[7, 20, 29]]
        figures = byte_equation(data, (h.root / W).read_bytes(), rec["missing"])
        # what the journal knew (18000 bytes) is present; the rest up to 30000 is listed
        assert rec["missing"] == [[18000, 30000]], rec["missing"]
        assert figures == {"wrote": 65536, "present": 65536 - 12000, "listed": 12000}
    finally:
        h.close()


def test_a_killed_writer_with_nothing_more_to_come_still_reports_it(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.io(b"A" * 100, off=0, io_id=1)
        h.clock.now += 0.1
        h.writer.tick(h.clock.now)  # the state after the write reaches the journal
        h.io(b"B" * 100, off=100, io_id=2)  # written, but the writer dies before saying so
        h.kill()
        assert h.records() == []
        h.idle()
        (rec,) = h.records()
        assert rec["complete"] is False and rec["missing"] == [[100, 200]], rec
        assert rec["size"] == 200 and rec["interrupted"] is True
        byte_equation(b"A" * 100 + b"B" * 100, (h.root / W).read_bytes(), rec["missing"])
        h.kill()  # its line is written: nothing is left open for a third process
        assert h.writer.counters["reconciled"] == 0
    finally:
        h.close()


def test_an_interrupted_artifact_is_never_called_complete(h: Harness) -> None:
    """Even when the journal knew every byte: what was sent while no writer listened is
    unknown, so the file stays incomplete, also after more of it arrives and is released."""
    h.io(b"A" * 100, off=0, io_id=1)
    h.clock.now += 0.1
    h.writer.tick(h.clock.now)
    h.kill()
    h.idle()
    assert h.latest(W)["complete"] is False and h.latest(W)["missing"] == []
    h.io(b"B" * 100, off=100, io_id=2)
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is False and rec["interrupted"] is True and rec["missing"] == []


def test_a_cleanly_closed_writer_leaves_nothing_open(h: Harness) -> None:
    h.io(b"whole", off=0, io_id=1)
    h.restart()
    assert h.writer.counters["reconciled"] == 0
    h.idle()
    assert len(h.records()) == 1 and h.records()[0]["complete"] is True


def test_state_is_released_after_the_index_line_and_rebuilt_from_it(h: Harness) -> None:
    h.io(b"A" * 10, off=0, io_id=1)
    h.send(None, file_env(off=10, io_id=2, io_len=5, lost=[[10, 15]]))
    h.idle()
    assert h.writer._artifacts == {} and h.writer.counters["released"] == 1
    h.io(b"C" * 5, off=15, io_id=3, ts=5_000, pid=300)
    h.idle()
    rec = h.latest(W)
    assert h.writer.counters["rebuilt"] == 1
    assert rec["missing"] == [[10, 15]] and rec["complete"] is False  # not forgotten
    assert (rec["ios"], rec["first_ts"], rec["last_ts"]) == (3, 1_000, 5_000)
    assert rec["pids"] == [100, 300]
    byte_equation(b"A" * 10 + b"B" * 5 + b"C" * 5, (h.root / W).read_bytes(), rec["missing"])


def test_many_files_leave_no_state_behind(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_open=8)
    try:
        for inode in range(1, 2001):
            h.io(b"x" * 20, off=0, io_id=inode, inode=inode)
            if inode % 100 == 0:
                h.idle()
        h.idle()
        w = h.writer
        assert (len(w._artifacts), len(w._dirty), len(w._unsynced), len(w._fds)) == (0, 0, 0, 8)
        assert w.counters["artifacts"] == 2000 and w.counters["records"] == 2000
        journal = (h.root / ".journal.file").stat().st_size
        assert journal < 4 << 20
    finally:
        h.close()


def test_a_burst_of_files_is_bounded_in_memory(tmp_path: Path) -> None:
    """Files arriving faster than they go idle: past ``max_resident`` the oldest eighth is
    flushed early (one index append for them), so no more than that many are ever held."""
    h = Harness(tmp_path, max_resident=100)
    try:
        peak = 0
        for inode in range(1, 3001):
            h.io(b"y" * 30, off=0, io_id=inode, inode=inode)
            peak = max(peak, len(h.writer._artifacts))
        h.idle()
        assert peak == 100 and h.writer._artifacts == {}
        # 2,900 past the bound, and up to one batch (100 // 8) flushed ahead of need
        assert 2900 <= h.writer.counters["early_flushes"] <= 2900 + 12
        records = h.records()
        assert len(records) == 3000 and all(r["complete"] for r in records)
    finally:
        h.close()


def test_a_reused_inode_number_is_recognised_after_release(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.io(b"OLD", off=0, io_id=1, generation=11)
        h.idle()
        assert h.writer._artifacts == {}
        h.io(b"new", off=0, io_id=2, generation=12)
        h.io(b"OLD+", off=0, io_id=3, generation=11)
        h.idle()
        base = h.root / W
        assert base.read_bytes() == b"OLD+"
        assert (base.parent / (base.name + ".gen-12")).read_bytes() == b"new"
        assert h.latest(W)["generation"] == 11
    finally:
        h.close()


def test_a_file_first_seen_just_after_a_gap_lists_what_came_before_it(h: Harness) -> None:
    from writers.gaps import Gap

    h.writer.on_gap(Gap(7, bus.TOPIC_FILE_WRITE, 0, 4))
    h.io(b"tail", off=4096, io_id=9)
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is False and rec["missing"] == [[0, 4096]]


def test_an_existing_file_without_an_index_line_is_never_called_whole(h: Harness) -> None:
    (h.root / "host").mkdir()
    (h.root / W).write_bytes(b"?" * 100)
    h.io(b"new", off=100, io_id=1)
    h.idle()
    rec = h.latest(W)
    assert h.writer.counters["rebuild_misses"] == 1
    assert rec["complete"] is False and rec["missing"] == [[0, 100]]


def test_a_file_known_only_by_a_loss_whose_line_is_out_of_reach_is_never_complete(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss notice can reach the writer before the file's first bytes (the collector drains
    the kernel's loss table while the bytes still wait in the ring): the notice's line lists
    [512, 4096) missing and leaves an empty file. When the bytes come after that line is out
    of the index scan's reach, the new line cannot repeat what it listed: it says so
    (``history_unknown``) and is not complete, where it used to claim 512 of 4096 bytes whole."""
    h.send(None, file_env(off=512, io_id=1 << 60, io_len=3584, lost=[[512, 4096]]))
    h.idle()
    assert h.latest(W)["missing"] == [[512, 4096]] and h.writer._artifacts == {}
    monkeypatch.setattr(h.index, "find_last", lambda needle, accept: None)  # scrolled away
    h.writer._released_lines.clear()  # and out of the recent lines (RELEASED_LINES)
    h.io(b"A" * 512, off=0, io_id=1)
    h.idle()
    rec = h.latest(W)
    assert h.writer.counters["rebuild_misses"] == 1
    assert (rec["complete"], rec["history_unknown"], rec["size"]) == (False, True, 512)
    monkeypatch.undo()
    h.io(b"B", off=4096, io_id=2)  # rebuilt from that line: still not complete
    h.idle()
    rec = h.latest(W)
    assert (rec["complete"], rec.get("history_unknown")) == (False, True)


@pytest.mark.parametrize("recent", [True, False])
def test_an_artifact_written_again_soon_is_rebuilt_from_its_recent_line_not_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recent: bool
) -> None:
    """Released, then written again: its state comes from the line the writer just wrote
    (RELEASED_LINES) without reading the index back, and is what the index scan gives."""
    h = Harness(tmp_path)
    try:
        h.io(b"A" * 100, off=0, io_id=1)
        h.send(None, file_env(off=200, io_id=2, io_len=50, lost=[[200, 250]]))
        h.idle()
        first = h.latest(W)
        if recent:

            def no_scan(needle: bytes, accept: object) -> None:
                raise AssertionError("the index was read back")

            monkeypatch.setattr(h.index, "find_last", no_scan)
        else:
            h.writer._released_lines.clear()
        h.io(b"B" * 10, off=100, io_id=3)
        h.idle()
        rec = h.latest(W)
        assert h.writer.counters["rebuilt"] == 1
        assert rec["missing"] == first["missing"] == [[200, 250]]
        assert (rec["size"], rec["end"], rec["complete"]) == (110, 250, False)
        assert rec["ios"] == first["ios"] + 1
        assert (h.root / W).read_bytes() == b"A" * 100 + b"B" * 10
    finally:
        h.close()


def test_an_index_line_that_cannot_be_written_keeps_the_artifact_and_is_retried(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    try:
        real = h.index._write
        h.index._write = lambda fd, data: os.write(fd, data[:7])  # the disk is full
        h.io(b"data", off=0, io_id=1)
        h.idle()
        assert h.writer.counters["index_errors"] == 1 and h.records() == []
        assert W.split("/", 1)[1] in {k[1] for k in h.writer._artifacts}
        h.index._write = real  # room again
        h.idle()
        assert h.latest(W)["complete"] is True and h.writer._artifacts == {}
    finally:
        h.close()


def test_a_planted_journal_link_is_counted_and_capture_goes_on(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".journal.file").symlink_to(victim)
    h = Harness(tmp_path)
    try:
        assert h.writer.counters["journal_errors"] == 1
        h.io(b"data", off=0, io_id=1)
        h.idle()
        assert h.latest(W)["complete"] is True
        assert victim.read_bytes() == b"precious"
    finally:
        h.close()


@pytest.mark.parametrize("error", ["budget", "enospc", "eio"])
def test_refused_and_failed_writes_keep_the_equation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """Disk budget, ENOSPC and EIO: the bytes that did not land are listed, the rest match."""
    import errno as errno_mod

    from writers import file as file_mod

    data = os.urandom(10_000)

    class Budget:
        def __init__(self) -> None:
            self.calls = 0

        def bind_counters(self, counters: dict[str, int]) -> None:
            pass

        def allow(self, nbytes: int) -> bool:
            self.calls += 1
            return self.calls % 3 != 0

    def failing(fd: int, view: memoryview, off: int, append: bool) -> int:
        if off % 3000 == 0 and off:
            return os.pwrite(fd, view[:100], off)  # a short write...
        if off % 3000 == 100:
            raise OSError(errno_mod.ENOSPC if error == "enospc" else errno_mod.EIO, error)
        return os.pwrite(fd, view, off)

    budget = Budget() if error == "budget" else None
    clock = FakeClock()
    h = WriterHarness(tmp_path, lambda o, i: FileWriter(o, i, clock=clock, budget=budget))
    if error != "budget":
        real = file_mod.write_all
        monkeypatch.setattr(
            file_mod, "write_all", lambda fd, buf, off, append: real(fd, buf, off, append, failing)
        )
    for n, off in enumerate(range(0, len(data), 1000)):
        h.send(data[off : off + 1000], file_env(off=off, io_id=n + 1, io_len=1000))
    h.writer.close()
    rec = [r for r in h.records() if r["path"] == W][-1]
    assert rec["complete"] is False
    figures = byte_equation(data, (h.root / W).read_bytes(), rec["missing"])
    assert 0 < figures["listed"] < figures["wrote"]
    h.close()


# -- the collector's extent announcements at stop ----------------------------------------------


def _extent(h: Harness, end: int, **kw: Any) -> None:
    """The collector's announcement that the artifact reaches ``end``."""
    h.send(None, file_env(off=end, io_id=1 << 56, io_len=0, io_count=0, extent=end, **kw))


def test_a_tail_lost_unseen_is_listed_once_the_extent_is_announced(tmp_path: Path) -> None:
    """The writer was killed while the last 300 bytes went by: its successor knows the first
    100 (journal) and nothing more; the announcement at stop names the rest missing."""
    data = os.urandom(400)
    h = Harness(tmp_path)
    try:
        h.io(data[:100], off=0, io_id=1)
        h.clock.now += 0.1
        h.writer.tick(h.clock.now)
        h.kill()  # [100, 400) went by while no writer listened
        _extent(h, 400)
        h.idle()
        rec = h.latest(W)
        assert rec["missing"] == [[100, 400]] and rec["complete"] is False, rec
        assert rec["ios"] == 1  # an announcement is no transfer
        assert h.writer.counters["tails_missing"] == 1
        figures = byte_equation(data, (h.root / W).read_bytes(), rec["missing"])
        assert figures == {"wrote": 400, "present": 100, "listed": 300}
    finally:
        h.close()


def test_an_extent_the_writer_already_reaches_changes_nothing(h: Harness) -> None:
    h.io(b"A" * 100, off=0, io_id=1)
    _extent(h, 100)  # in memory
    h.idle()
    _extent(h, 100)  # released: answered from memory, the index is not read back
    h.idle()
    (rec,) = h.records()
    assert rec["complete"] is True and rec["missing"] == []
    assert (h.writer.counters["rebuilt"], h.writer.counters["rebuild_misses"]) == (0, 0)
    assert h.writer.counters["tails_missing"] == 0


def test_a_released_artifact_is_continued_by_its_extent(h: Harness) -> None:
    h.io(b"A" * 100, off=0, io_id=1)
    h.idle()
    _extent(h, 250)
    h.idle()
    rec = h.latest(W)
    assert rec["missing"] == [[100, 250]] and rec["complete"] is False
    assert h.writer.counters["rebuilt"] == 1
    byte_equation(b"A" * 100 + b"?" * 150, (h.root / W).read_bytes(), rec["missing"])


def test_a_file_whose_every_message_was_lost_is_still_reported(h: Harness) -> None:
    _extent(h, 4096, inode=78)
    h.idle()
    rec = h.latest("host/write.dev-2049.inode-78")
    assert rec["missing"] == [[0, 4096]] and rec["complete"] is False and rec["size"] == 0


def test_an_extent_names_only_the_artifact_of_its_generation(h: Harness) -> None:
    """Another file on a reused inode number reaches further: the old one is not extended."""
    h.io(b"OLD", off=0, io_id=1, generation=11)
    h.idle()
    _extent(h, 500, generation=12)
    h.idle()
    assert h.latest(W)["complete"] is True and h.latest(W)["missing"] == []
    assert h.latest(W + ".gen-12")["missing"] == [[0, 500]]


@pytest.mark.parametrize("extent", [-1, "400", 1 << 63])
def test_a_bad_extent_is_rejected_and_counted(h: Harness, extent: Any) -> None:
    h.send(None, file_env(off=0, io_id=1, io_len=0, extent=extent))
    assert h.writer.counters["rejected"] == 1 and h.records() == []


def test_an_extent_with_a_transfer_is_rejected(h: Harness) -> None:
    h.send(b"xyz", file_env(off=0, io_id=1, io_len=3, extent=3))
    assert h.writer.counters["rejected"] == 1


# --- bytes the collector read back (copy_file_range, sendfile, splice) --------------------------


def test_read_back_bytes_are_listed_where_they_are_in_the_artifact(h: Harness) -> None:
    h.io(b"head", off=0, io_id=1)
    for io_off in (0, 6):
        env = file_env(off=4 + io_off, io_id=2, io_len=10, io_off=io_off, source="readback",
                       syscall="copy_file_range")  # fmt: skip
        h.send(b"0123456789"[io_off : io_off + 6 if io_off == 0 else 10], env)
    h.idle()
    rec = h.latest(W)
    assert (h.root / W).read_bytes() == b"head0123456789"
    assert rec["readback"] == [[4, 14]] and rec["complete"] is True
    assert rec["syscalls"] == ["copy_file_range", "write"]


def test_read_back_bytes_of_a_stream_are_listed_at_their_place_in_it(h: Harness) -> None:
    """Streams carry no file offsets: the ranges name where the bytes landed."""
    sock = {"append": True, "path": b"TCP", "inode": 1234}
    h.io(b"HTTP/1.0 200 OK\r\n\r\n", off=0, io_id=1, **sock)
    for io_id in (2, 3):  # two sendfile calls: each's offsets start at 0
        h.io(b"body" * 4, off=0, io_id=io_id, source="readback", syscall="sendfile", **sock)
    h.idle()
    rec = h.latest("host/write.dev-2049.inode-1234")
    assert rec["readback"] == [[19, 51]] and rec["size"] == 51


def test_a_range_that_could_not_be_read_back_is_missing(h: Harness) -> None:
    h.io(b"ab", off=0, io_id=1, io_len=6, source="readback")
    h.send(None, file_env(off=2, io_id=1, io_len=6, io_off=2, lost=[[2, 6]], source="readback",
                          readback_error="changed since the transfer"))  # fmt: skip
    h.idle()
    rec = h.latest(W)
    assert rec["complete"] is False and rec["missing"] == [[2, 6]] and rec["readback"] == [[0, 2]]
    byte_equation(b"ab????", (h.root / W).read_bytes(), rec["missing"])


def test_read_back_ranges_survive_the_release_of_the_artifact(h: Harness) -> None:
    h.io(b"xyz", off=0, io_id=1, source="readback")
    h.idle()
    h.io(b"w", off=3, io_id=2)
    h.idle()
    assert h.writer.counters["rebuilt"] == 1
    assert h.latest(W)["readback"] == [[0, 3]]


def test_a_mappings_pages_are_listed_apart_from_read_back_bytes(h: Harness) -> None:
    """Each source names its own index field; both survive the artifact's release."""
    h.io(b"page", off=0, io_id=1, source="mapping", syscall="msync")
    h.io(b"copy", off=8, io_id=2, source="readback", syscall="copy_file_range")
    h.idle()
    h.io(b"w", off=12, io_id=3)
    h.idle()
    rec = h.latest(W)
    assert rec["mapping"] == [[0, 4]] and rec["readback"] == [[8, 12]]
    assert rec["syscalls"] == ["copy_file_range", "msync", "write"]
    assert h.writer.counters["rebuilt"] == 1


def test_the_budget_refusing_read_back_bytes_lists_them_missing_not_read_back(
    tmp_path: Path,
) -> None:
    class Refusing:  # a disk budget that is spent
        def bind_counters(self, counters: Any) -> None:
            pass

        def allow(self, length: int) -> bool:
            return False

    h = Harness(tmp_path, budget=Refusing())
    try:
        h.io(b"xyz", off=0, io_id=1, source="readback")
        h.idle()
        rec = h.latest(W)
        assert rec["missing"] == [[0, 3]] and "readback" not in rec
    finally:
        h.close()


NAMED = {
    "container_name": "web",
    "container_image": "nginx:1",
    "container_image_digest": "sha256:11",
    "pod_name": "web-0",
    "pod_namespace": "shop",
    "pod_uid": "u-1",
}


def test_container_names_reach_the_index_from_a_later_message(h: Harness) -> None:
    cid = "ab" * 32
    h.io(b"hello", off=0, io_id=1, container_id=cid)  # before the collector knew the names
    h.io(b"world", off=5, io_id=2, container_id=cid, **NAMED)
    h.idle()
    rec = h.latest(f"{cid}/write.dev-2049.inode-77")
    assert {k: rec.get(k) for k in NAMED} == NAMED
    # an index line read back (the artifact written again later) keeps them
    from writers.fileartifact import FileArtifact

    again = FileArtifact.from_record(rec, 0.0).record(10, None)
    assert {k: again.get(k) for k in NAMED} == NAMED


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"comm": b"\xffbad\n", "path": b"/tmp/\xfe\x00x", "generation": 9},
        {"container_id": "ab" * 32, **NAMED, "append": True},
    ],
)
def test_a_new_artifacts_journal_state_is_its_identity_and_replays_the_same(
    overrides: dict[str, Any],
) -> None:
    """The state written before a new file's first byte names only who wrote which file (a
    shorter line than the full record); read back it is the same artifact a full state gives."""
    from writers.fileartifact import FileArtifact
    from writers.journal import encode_state, replay

    env = file_env(**overrides)
    art = FileArtifact(W, "write", bool(env["append"]), env, 0.0)
    short = art.state()
    assert set(short) == {"new"}
    full = {"record": art.record(0, None), "written": [], "extent": 0}
    assert len(encode_state(W, short)) < len(encode_state(W, full))
    (replayed,) = replay([encode_state(W, short)])[0].values()
    assert FileArtifact.from_state(replayed, 1.0).record(0, None) == FileArtifact.from_state(
        full, 1.0
    ).record(0, None)
    art.observe(env, 0.0)  # touched: from now on the full state
    assert set(art.state()) == {"record", "written", "extent"}


def test_a_writer_killed_after_a_new_files_first_state_reports_all_of_it_missing(
    tmp_path: Path,
) -> None:
    """Killed after the journal's ``new`` state and the bytes, before any later state: the
    successor reports the file with every byte listed missing, never as captured."""
    h = Harness(tmp_path)
    try:
        h.io(b"A" * 100, off=0, io_id=1)
        journal = (h.root / ".journal.file").read_bytes()
        assert b'"new"' in journal and b'"record"' not in journal
        h.kill()
        h.idle()
        (rec,) = h.records()
        assert rec["complete"] is False and rec["interrupted"] is True
        assert rec["missing"] == [[0, 100]] and rec["source_path"] == "/tmp/target", rec
        byte_equation(b"A" * 100, (h.root / W).read_bytes(), rec["missing"])
    finally:
        h.close()
