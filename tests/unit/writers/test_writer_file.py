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
from tests.support.writer_harness import FakeClock, OutputTree, WriterHarness
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
