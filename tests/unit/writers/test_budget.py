"""The disk budget: a real output tree in tmp_path, a fake clock and a fake statvfs.

The tree is measured from the disk (st_blocks), so sizes are compared with what ``lstat`` says
rather than with exact byte counts: file systems round allocations differently.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.envelopes import file_env, mem_env, message, packet_env
from tests.support.writer_harness import FakeClock, OutputTree
from tracecap import bus
from writers.budget import DEFAULT_FLOOR_BYTES, DiskBudget, tree_usage
from writers.file import FileWriter
from writers.memory import MemoryWriter
from writers.pcap import PcapWriter
from writers.ratelog import RateLimitedLog
from writers.runner import WRITER_KINDS

KIB, MIB = 1 << 10, 1 << 20
PLENTY = 1 << 40  # free bytes that never trip the floor


@dataclass
class FakeStatvfs:
    """``os.statvfs`` with a free-space figure the test sets; ``fail`` raises instead."""

    free: int = PLENTY
    f_frsize: int = 4096
    fail: bool = False
    calls: int = 0

    @property
    def f_bavail(self) -> int:
        return self.free // self.f_frsize

    def __call__(self, fd: int) -> FakeStatvfs:
        self.calls += 1
        if self.fail:
            raise OSError(5, "statvfs failed")
        return self


class Tree(OutputTree):
    """An output directory with its index, a budget over it, and a log captured in memory."""

    def __init__(self, root: Path, limit: int | None, floor: int = 0, **kwargs: Any) -> None:
        super().__init__(root)
        self.clock = FakeClock()
        self.statvfs = FakeStatvfs()
        self.stream = io.StringIO()
        log = RateLimitedLog("test", stream=self.stream, clock=self.clock)
        self.budget = DiskBudget(
            self.out.root_fd,
            limit,
            floor,
            self.clock,
            statvfs=self.statvfs,
            index=self.index,
            name="file",
            log=log,
            **kwargs,
        )

    def put(self, rel: str, size: int) -> Path:
        """A file of ``size`` real (non-sparse) bytes in the tree, as another writer would."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        return path

    def usage(self) -> int:
        return sum(p.lstat().st_blocks * 512 for p in self.root.rglob("*"))

    def later(self, seconds: float = 1.5) -> None:
        self.clock.now += seconds

    def budget_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == "budget"]

    def log_lines(self, category: str) -> list[str]:
        return [ln for ln in self.stream.getvalue().splitlines() if f": {category}: " in ln]

    def close(self) -> None:
        self.budget.close()
        super().close()


@pytest.fixture
def tree(tmp_path: Path):
    t = Tree(tmp_path, limit=1 * MIB)
    yield t
    t.close()


# -- measuring ------------------------------------------------------------------------------


def test_tree_usage_is_the_allocated_size_of_everything_below(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "host").mkdir(parents=True)
    (root / "pcap" / "processes" / "abc").mkdir(parents=True)
    (root / "host" / "a").write_bytes(b"a" * 100_000)
    (root / "pcap" / "processes" / "abc" / "b.pcap").write_bytes(b"b" * 50_000)
    with open(root / "host" / "sparse", "wb") as f:
        f.truncate(10 * MIB)  # costs (almost) nothing on disk, so counts (almost) nothing
    expected = sum(p.lstat().st_blocks * 512 for p in root.rglob("*"))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tree_usage(fd) == (expected, False)
        assert 150_000 <= expected < 1 * MIB
    finally:
        os.close(fd)


def test_tree_usage_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big").write_bytes(b"z" * MIB)
    root = tmp_path / "out"
    root.mkdir()
    (root / "dir-link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "big")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        used, truncated = tree_usage(fd)
    finally:
        os.close(fd)
    assert used < 64 * KIB and not truncated


def test_tree_usage_is_bounded_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "out"
    deep = root.joinpath(*[f"d{i}" for i in range(5)])
    deep.mkdir(parents=True)
    for i in range(20):
        (root / f"f{i}").write_bytes(b"x")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tree_usage(fd, max_entries=10)[1] is True
        assert tree_usage(fd, max_depth=2)[1] is True
        assert tree_usage(fd)[1] is False
    finally:
        os.close(fd)


# -- the limit ------------------------------------------------------------------------------


def test_writes_are_allowed_under_the_limit_and_counted_until_the_next_walk(tree: Tree) -> None:
    assert tree.budget.allow(400 * KIB)
    assert tree.budget.allow(400 * KIB)
    # 800 KiB of our own writes are counted though nothing reached the disk: 300 more do not fit
    assert not tree.budget.allow(300 * KIB)
    assert tree.budget.counters["budget_refused_bytes"] == 300 * KIB
    assert tree.budget.counters["budget_refused_writes"] == 1


def test_the_limit_covers_what_other_writers_put_in_the_tree(tree: Tree) -> None:
    assert tree.budget.allow(4 * KIB)
    tree.put("pcap/single.pcap", 900 * KIB)  # another writer process
    # not seen before the next walk: the documented overshoot of up to a second
    assert tree.budget.allow(200 * KIB)
    tree.later()
    expected = tree.usage()  # before the refusing record grows the index
    assert not tree.budget.allow(200 * KIB)
    assert tree.budget.used_bytes() == expected
    [record] = tree.budget_records()
    assert record["state"] == "refusing" and record["writer"] == "file"
    assert record["reason"] == f"limit {MIB} bytes reached (used {expected} bytes)"
    assert record["limit_bytes"] == MIB and isinstance(record["ts"], int)


def test_one_warning_and_one_record_per_refusing_period(tree: Tree) -> None:
    big = tree.put("host/big", 1 * MIB)
    tree.later()
    for _ in range(50):
        assert not tree.budget.allow(32 * KIB)
        tree.later(0.3)  # walks happen, the log's rate limit expires: still one line
    assert len(tree.log_lines("budget_refusing")) == 1
    assert [r["state"] for r in tree.budget_records()] == ["refusing"]
    assert tree.budget.counters["budget_refused_writes"] == 50
    assert tree.budget.counters["budget_refusing_periods"] == 1

    big.unlink()  # space returns
    tree.later()
    assert tree.budget.allow(32 * KIB)
    assert tree.budget.allow(32 * KIB)
    states = [r["state"] for r in tree.budget_records()]
    assert states == ["refusing", "resumed"]
    resumed = tree.budget_records()[1]
    assert resumed["refused_bytes"] == 50 * 32 * KIB and resumed["refused_writes"] == 50
    assert len(tree.log_lines("budget_resumed")) == 1

    # a second period gets its own warning and record
    tree.put("host/big2", 1 * MIB)
    tree.later()
    assert not tree.budget.allow(32 * KIB)
    assert [r["state"] for r in tree.budget_records()] == ["refusing", "resumed", "refusing"]
    assert len(tree.log_lines("budget_refusing")) == 2
    assert tree.budget.counters["budget_refusing_periods"] == 2


def test_resuming_needs_a_margin_so_a_full_tree_does_not_flap(tree: Tree) -> None:
    filler = tree.put("host/filler", 1 * MIB - 40 * KIB)
    tree.later()
    assert not tree.budget.allow(64 * KIB)  # refusing
    margin = MIB // 16
    room = MIB - tree.usage()
    assert 0 < room < margin
    # a write that would fit under the limit is still refused until the margin is free
    assert not tree.budget.allow(min(room, 4 * KIB))
    assert [r["state"] for r in tree.budget_records()] == ["refusing"]
    filler.unlink()
    tree.later()
    assert tree.budget.allow(4 * KIB)
    assert [r["state"] for r in tree.budget_records()] == ["refusing", "resumed"]


def test_a_single_write_bigger_than_the_limit_is_refused(tree: Tree) -> None:
    assert not tree.budget.allow(2 * MIB)
    # the tree is nearly empty: the next ordinary write fits, margin included
    assert tree.budget.allow(4 * KIB)
    assert [r["state"] for r in tree.budget_records()] == ["refusing", "resumed"]


def test_the_tree_is_walked_at_most_once_a_second(tree: Tree) -> None:
    for _ in range(100):
        tree.budget.allow(1)
    assert tree.budget.counters["budget_walks"] == 1
    assert tree.statvfs.calls == 1
    tree.later(0.5)
    tree.budget.allow(1)
    assert tree.budget.counters["budget_walks"] == 1
    tree.later(0.6)
    tree.budget.allow(1)
    assert tree.budget.counters["budget_walks"] == 2


# -- the floor ------------------------------------------------------------------------------


def test_the_floor_applies_without_a_limit(tmp_path: Path) -> None:
    t = Tree(tmp_path, limit=None, floor=64 * MIB)
    try:
        t.statvfs.free = 64 * MIB + 100 * KIB
        assert t.budget.allow(64 * KIB)
        assert not t.budget.allow(64 * KIB)  # our own 64 KiB since the statvfs count
        [record] = t.budget_records()
        assert record["state"] == "refusing" and record["limit_bytes"] is None
        assert record["reason"].startswith(f"free space below {64 * MIB} bytes (free ")
        assert t.budget.counters["budget_walks"] == 0  # no limit, no walk
        assert len(t.log_lines("budget_refusing")) == 1

        t.statvfs.free = 200 * MIB  # someone freed space
        t.later()
        assert t.budget.allow(64 * KIB)
        assert [r["state"] for r in t.budget_records()] == ["refusing", "resumed"]
    finally:
        t.close()


def test_both_conditions_apply(tmp_path: Path) -> None:
    t = Tree(tmp_path, limit=1 * MIB, floor=DEFAULT_FLOOR_BYTES)
    try:
        t.statvfs.free = DEFAULT_FLOOR_BYTES  # the tree is small, the disk is not
        assert not t.budget.allow(1)
        assert "free space below" in t.budget_records()[0]["reason"]
    finally:
        t.close()


def test_an_unknown_free_space_does_not_stop_capture(tmp_path: Path) -> None:
    t = Tree(tmp_path, limit=None, floor=64 * MIB)
    try:
        t.statvfs.fail = True
        assert t.budget.allow(MIB)
        assert t.budget_records() == []
        assert t.log_lines("budget_statvfs")
    finally:
        t.close()


def test_a_path_root_is_opened_without_following_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        DiskBudget(str(tmp_path / "link"), MIB)
    budget = DiskBudget(str(tmp_path / "real"), MIB, 0)
    try:
        assert budget.allow(KIB)
    finally:
        budget.close()


def test_counters_are_shared_with_the_writer(tree: Tree) -> None:
    counters: dict[str, int] = {"records": 3}
    tree.budget.bind_counters(counters)
    assert not tree.budget.allow(2 * MIB)
    assert counters["budget_refused_bytes"] == 2 * MIB and counters["records"] == 3


# -- the writers ----------------------------------------------------------------------------


def file_message(payload: bytes, off: int, io_id: int) -> bus.Message:
    env = file_env(seq=io_id, io_id=io_id, io_len=len(payload), off=off)
    return message(bus.TOPIC_FILE_WRITE, env, payload)


def test_the_file_writer_records_refused_bytes_as_missing(tree: Tree) -> None:
    writer = FileWriter(tree.out, tree.index, clock=tree.clock, budget=tree.budget)
    chunk = 256 * KIB
    for i in range(6):
        writer.handle(file_message(bytes([i]) * chunk, i * chunk, i + 1))
    writer.close()
    [record] = [r for r in tree.records() if r["kind"] == "write"]
    kept = (tree.root / record["path"]).read_bytes()
    assert len(kept) <= MIB and kept == b"".join(
        bytes([i]) * chunk for i in range(len(kept) // chunk)
    )
    assert record["complete"] is False
    assert record["missing"] == [[len(kept), 6 * chunk]]
    assert writer.counters["budget_refused_bytes"] == 6 * chunk - len(kept)
    assert writer.counters["bytes_written"] == len(kept)
    assert [r["state"] for r in tree.budget_records()] == ["refusing"]


def test_the_object_writer_loses_refused_bytes_and_says_incomplete(tree: Tree) -> None:
    writer = MemoryWriter(tree.out, tree.index, clock=tree.clock, budget=tree.budget)
    size = 2 * MIB
    env = mem_env(obj_len=size, last=False, len=size)
    half = size // 2
    writer.handle(message(MemoryWriter.topic, env, b"a" * (half - 8 * KIB)))
    env.update(seq=1, obj_off=half - 8 * KIB, last=True)
    writer.handle(message(MemoryWriter.topic, env, b"b" * (half + 8 * KIB)))
    writer.close()
    [record] = [r for r in tree.records() if r["kind"] == "mem"]
    assert record["complete"] is False
    assert record["missing"] == [[half - 8 * KIB, size]]
    assert writer.counters["budget_refused_writes"] == 1
    assert writer.counters["budget_refused_bytes"] == half + 8 * KIB


def test_the_pcap_writer_drops_whole_packets_and_says_so(tmp_path: Path) -> None:
    t = Tree(tmp_path, limit=64 * KIB)
    try:
        writer = PcapWriter(t.out, t.index, ("single",), budget=t.budget)
        payload = bytes(1400)
        for seq in range(80):  # ~118 KiB of blocks into a 64 KiB budget
            env = packet_env(seq=seq, ts=1_700_000_000_000_000_000 + seq, orig_len=len(payload))
            writer.handle(message(bus.TOPIC_NET_PACKET, env, payload))
        writer.close()
        [record] = [r for r in t.records() if r["kind"] == "pcap"]
        assert record["budget_dropped"] > 0 and record["complete"] is False
        assert record["packets"] + record["budget_dropped"] == 80
        assert writer.counters["budget_dropped"] == record["budget_dropped"]
        # only whole blocks reached the file: its size is what the record accounts for
        assert (t.root / "pcap" / "single.pcap").stat().st_size == record["size"]
        assert record["size"] <= 64 * KIB
    finally:
        t.close()


@pytest.mark.parametrize("kind", sorted(WRITER_KINDS))
def test_every_kind_takes_a_budget(tree: Tree, kind: str) -> None:
    writer = WRITER_KINDS[kind](tree.out, tree.index, budget=tree.budget)
    assert "budget_refused_bytes" in writer.counters
    writer.close()
