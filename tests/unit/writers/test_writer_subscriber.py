"""The subscriber loop over a real ZeroMQ socket: hostile input is counted, never fatal."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import writers.base as writers_base
from tests.support.envelopes import file_env
from tests.support.writer_harness import OutputTree
from tracecap import bus
from tracecap.link import MAX_FRAME_BYTES, BusLink
from writers.base import Subscriber
from writers.file import FileWriter
from writers.gaps import Gap, GapTracker

TOPIC = bus.TOPIC_FILE_WRITE


def make_env(**overrides: Any) -> dict[str, Any]:
    """A file.write envelope with this module's values (its artifacts are dev 1, inode 2)."""
    mine = {"epoch": 1, "tid": 100, "uid": 0, "comm": b"sh", "cgroup_id": 1, "fd": 1,
            "path": b"/tmp/f", "dev": 1, "inode": 2, "io_id": 0}  # fmt: skip
    return file_env(**{**mine, **overrides})


def write_frames(data: bytes, off: int, seq: int, **kw: Any) -> list:
    env = make_env(seq=seq, off=off, io_id=seq, io_len=len(data), **kw)
    return bus.encode(kw.pop("topic", TOPIC), env, data)


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


PROBE = [TOPIC, b"\xc1"]  # never valid msgpack: seen as one more malformed message


class Bus:
    """A PUB socket, and a Subscriber + FileWriter running in a thread."""

    def __init__(self, tmp_path: Path, writer: type[FileWriter] = FileWriter) -> None:
        self.sockdir = tempfile.mkdtemp(prefix="tcbus")  # ipc paths must stay short
        self.endpoint = f"ipc://{self.sockdir}/bus.sock"
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.bind(self.endpoint)
        self.tree = OutputTree(tmp_path)
        self.root = self.tree.root
        self.stats_dir = tmp_path / "run"
        self.writer = writer(self.tree.out, self.tree.index)
        self.sub = Subscriber(
            self.writer, self.endpoint, index=self.tree.index, stats_dir=str(self.stats_dir)
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sub.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.handshake()

    def handshake(self) -> None:
        """PUB drops everything until the subscription arrives: probe until one is seen."""
        seen = self.sub.counters["malformed"]
        deadline = time.monotonic() + 10
        while self.sub.counters["malformed"] == seen:
            assert time.monotonic() < deadline, "subscriber never connected"
            self.pub.send_multipart(PROBE)
            time.sleep(0.02)
        wait_until(lambda: self.quiet_for(0.1))
        self.baseline = dict(self.sub.counters)

    def quiet_for(self, seconds: float) -> bool:
        before = dict(self.sub.counters)
        time.sleep(seconds)
        return before == self.sub.counters

    def delta(self, key: str) -> int:
        return self.sub.counters[key] - self.baseline[key]

    def send(self, frames: list) -> None:
        self.pub.send_multipart(frames)

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.tree.records() if r["kind"] == kind]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        if not self.pub.closed:
            self.pub.close(0)
        self.ctx.term()
        self.tree.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def zbus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(tmp_path)
    yield b
    b.close()


def malformed_messages() -> list[list]:
    good = make_env()
    missing = dict(good)
    del missing["inode"]
    return [
        [TOPIC, b"\xc1\xc1 not msgpack"],
        [TOPIC, msgpack.packb([1, 2, 3])],
        [TOPIC, msgpack.packb(make_env(v=2))],
        [TOPIC, msgpack.packb(missing)],
        [TOPIC, msgpack.packb(make_env(dev="1"))],
        [TOPIC, msgpack.packb(make_env(seq=True))],
        [TOPIC, msgpack.packb(make_env(comm="not bytes"))],
        [TOPIC, msgpack.packb({1: 2})],
        [TOPIC, b"\xdd\xff\xff\xff\xff"],  # a 4-billion-element array header
        [TOPIC],
        [TOPIC, msgpack.packb(good), b"a", b"b"],
        [TOPIC, msgpack.packb(good), b"x" * (bus.MAX_PAYLOAD_BYTES + 1)],
        [TOPIC, b"\x00" * (bus.MAX_ENVELOPE_BYTES + 1)],
    ]


def test_malformed_messages_are_counted_and_dropped(zbus: Bus) -> None:
    bad = malformed_messages()
    chunks = [b"alpha-", b"bravo-", b"charlie"]
    off = 0
    for seq, chunk in enumerate(chunks):
        zbus.send(bad[seq])
        zbus.send(write_frames(chunk, off, seq))
        off += len(chunk)
    for frames in bad[len(chunks) :]:
        zbus.send(frames)
    wait_until(lambda: zbus.delta("messages") == 3 and zbus.delta("malformed") == len(bad))
    assert zbus.thread.is_alive()
    assert zbus.delta("handler_errors") == 0
    assert zbus.delta("gap_messages") == 0
    zbus.stop.set()
    zbus.thread.join(5)
    assert not zbus.thread.is_alive()
    assert (zbus.root / "host/write.dev-1.inode-2").read_bytes() == b"alpha-bravo-charlie"
    [record] = zbus.records("write")
    assert record["complete"] is True and record["size"] == 19


def test_a_stop_after_the_publisher_closed_writes_what_is_queued_and_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector exits only once its subscribers read their sockets empty; supervisord
    then stops the writers. What the writer has queued is all there is: it is written, and the
    stop waits no quiet period for more (a minute here: the join would time out)."""
    monkeypatch.setattr(writers_base, "DRAIN_QUIET_MS", 60_000)
    gate = threading.Event()

    class Gated(FileWriter):
        def handle(self, msg: bus.Message) -> None:
            gate.wait(10)  # behind: the rest of the messages stay queued in ZeroMQ
            super().handle(msg)

    zbus = Bus(tmp_path, Gated)
    try:
        chunks = [b"%03d," % n for n in range(50)]
        for seq, chunk in enumerate(chunks):
            zbus.send(write_frames(chunk, seq * 4, seq))
        zbus.pub.close(linger=5_000)  # the publisher's end closes with everything sent
        time.sleep(0.3)  # libzmq reads the connection to its end and reports the disconnect
        zbus.stop.set()
        gate.set()
        zbus.thread.join(10)
        assert not zbus.thread.is_alive(), "the stop waited for more after the publisher left"
        assert zbus.delta("messages") == len(chunks) and zbus.delta("gap_messages") == 0
        assert (zbus.root / "host/write.dev-1.inode-2").read_bytes() == b"".join(chunks)
    finally:
        zbus.close()


def test_the_link_knows_the_publisher_left_while_libzmq_retries(tmp_path: Path) -> None:
    """What the stop's drain relies on: once the publisher's end closed, the link says so,
    and libzmq's reconnect attempts (every 100 ms) do not make it look connected again."""
    sockdir = tempfile.mkdtemp(prefix="tcbus")
    ctx = zmq.Context()
    endpoint = f"ipc://{sockdir}/bus.sock"
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    link = BusLink(ctx, endpoint, [TOPIC])
    try:
        wait_until(lambda: not link.disconnected(time.monotonic()))
        pub.close(linger=0)
        wait_until(lambda: link.disconnected(time.monotonic()))
        time.sleep(0.35)  # several reconnect attempts
        assert link.disconnected(time.monotonic())
    finally:
        link.close()
        pub.close(linger=0)
        ctx.term()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_a_byte_on_the_wake_fd_ends_the_links_wait_and_is_taken(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="tcbus")
    ctx = zmq.Context()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pub = ctx.socket(zmq.PUB)  # connected and silent: only the wake byte can end the wait
    pub.bind(f"ipc://{sockdir}/bus.sock")
    link = BusLink(ctx, f"ipc://{sockdir}/bus.sock", [TOPIC], wake_fd=wake_r)
    try:
        wait_until(lambda: not link.disconnected(time.monotonic()))
        time.sleep(0.1)
        link.check(time.monotonic())  # the rest of the connection's events
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(link.poll(3_600_000)))
        waiter.start()
        os.write(wake_w, b"\0\0")
        waiter.join(10)
        assert waited == [False], "the wake byte did not end the wait"
        with pytest.raises(BlockingIOError):
            os.read(wake_r, 1)  # taken by the poll
    finally:
        link.close()
        pub.close(linger=0)
        os.close(wake_r)
        os.close(wake_w)
        ctx.term()
        shutil.rmtree(sockdir, ignore_errors=True)


class FakeLink:
    """A link whose publisher left with ``queued`` messages still here."""

    def __init__(self, queued: list[list[bytes]]) -> None:
        self.queued = queued
        self.timeouts: list[int] = []

    def disconnected(self, now: float) -> bool:
        return True

    def poll(self, timeout_ms: int) -> bool:
        self.timeouts.append(timeout_ms)
        return bool(self.queued)

    def recv(self) -> list[bytes] | None:
        return self.queued.pop(0) if self.queued else None


def test_the_stop_drain_takes_what_is_queued_and_waits_for_nothing(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        sub = Subscriber(FileWriter(tree.out, tree.index), "ipc:///nonexistent", index=tree.index)
        link = FakeLink([write_frames(b"%d" % n, n, n) for n in range(5)])
        sub._drain_before_stop(link)  # type: ignore[arg-type]
        assert sub.counters["messages"] == 5 and link.queued == []
        assert set(link.timeouts) == {0}, "the drain waited for a quiet period"
        sub.writer.close()


def test_a_frame_beyond_maxmsgsize_does_not_kill_the_writer(zbus: Bus) -> None:
    zbus.send([TOPIC, msgpack.packb(make_env()), b"x" * (MAX_FRAME_BYTES + 1)])
    zbus.handshake()  # libzmq drops the connection for good; the link must rebuild itself
    assert zbus.sub.counters["reconnects"] == 1
    zbus.send(write_frames(b"after", 0, 0, epoch=2))
    wait_until(lambda: zbus.delta("messages") == 1)
    assert zbus.thread.is_alive()


def test_seq_gaps_are_counted_and_recorded(zbus: Bus) -> None:
    for seq in (0, 1, 5):  # 2..4 lost
        zbus.send(write_frames(b"x", seq, seq, epoch=10))
    for seq in (0, 1):  # a new epoch starting at 0 is not a gap
        zbus.send(write_frames(b"y", seq, seq, epoch=11))
    zbus.send(write_frames(b"z", 0, 3, epoch=11, topic=bus.TOPIC_FILE_READ, inode=3))
    wait_until(lambda: zbus.delta("messages") == 6)
    assert zbus.delta("gap_messages") == 3 + 3
    assert zbus.delta("gaps") == 2
    gaps = sorted(
        ((g["epoch"], g["topic"], g["from_seq"], g["to_seq"]) for g in zbus.records("gap")),
    )
    assert gaps == [(10, "file.write.", 2, 4), (11, "file.read.", 0, 2)]
    assert all(isinstance(g["ts"], int) for g in zbus.records("gap"))


def test_stats_file_is_published(zbus: Bus) -> None:
    zbus.send(write_frames(b"x", 0, 0))
    wait_until(lambda: zbus.delta("messages") == 1)
    path = zbus.stats_dir / "writer-file.json"
    wait_until(lambda: path.exists() and json.loads(path.read_text())["counters"]["messages"] > 0)
    stats = json.loads(path.read_text())
    assert stats["name"] == "file" and stats["topics"] == ["file.write.", "file.read."]
    assert "write_errors" in stats["counters"]


def test_a_handler_exception_is_counted(tmp_path: Path) -> None:
    class Exploding(FileWriter):
        def handle(self, msg: bus.Message) -> None:
            raise RuntimeError("boom")

    with OutputTree(tmp_path) as tree:
        sub = Subscriber(Exploding(tree.out, tree.index), "ipc:///nonexistent", index=tree.index)
        sub.process(write_frames(b"x", 0, 0))
        sub.process(write_frames(b"x", 1, 1))
        assert sub.counters["handler_errors"] == 2 and sub.counters["messages"] == 2


def test_gap_tracker_rules() -> None:
    t = GapTracker()
    assert t.observe(1, TOPIC, 0) is None
    assert t.observe(1, TOPIC, 1) is None
    assert t.observe(1, TOPIC, 4) == Gap(1, TOPIC, 2, 3)
    assert t.observe(2, TOPIC, 0) is None  # new epoch
    assert t.observe(2, b"file.read.", 7) == Gap(2, b"file.read.", 0, 6)  # joined late
    assert t.observe(1, TOPIC, 5) is None  # the old epoch's numbering is kept apart
    assert t.observe(1, TOPIC, 5) is None and t.regressions == 1
    assert Gap(1, TOPIC, 2, 3).count == 2


def test_a_batch_covers_its_width_of_seq() -> None:
    """A packet batch numbers its packets (bus.seq_width): the next batch follows its last."""
    t, batches = GapTracker(), b"net.packets."
    assert t.observe(1, batches, 0, 3) is None
    assert t.observe(1, batches, 3, 256) is None and t.last(1, batches) == 258
    assert t.observe(1, batches, 300, 2) == Gap(1, batches, 259, 299)  # 41 packets lost
    assert t.observe(1, batches, 302) is None
    assert bus.seq_width(batches, {"packets": [[0]] * 5}) == 5
    assert bus.seq_width(b"file.write.", {"packets": [[0]] * 5}) == 1


def test_gap_tracker_is_bounded() -> None:
    t = GapTracker(max_keys=4)
    for epoch in range(100):
        t.observe(epoch, TOPIC, 0)
    assert len(t._last) == 4


def test_gap_state_survives_a_restart():
    from writers.gaps import GapTracker

    before = GapTracker()
    for seq in range(5):
        before.observe(7, b"file.write.", seq)
    after = GapTracker()
    after.restore(before.state())
    assert after.observe(7, b"file.write.", 5) is None  # nothing lost across the restart
    gap = after.observe(7, b"file.write.", 9)
    assert (gap.from_seq, gap.to_seq) == (6, 8)
    after.restore({"x": 1, "3:a.": -1, "nope": "x"})  # junk is ignored


def test_index_errors_of_the_writer_and_the_subscriber_add_up(tmp_path: Path) -> None:
    """A full disk loses a gap record (the subscriber's) and an artifact record (the
    writer's): the stats show both, not the subscriber's count over the writer's."""
    with OutputTree(tmp_path) as tree:
        clock = [100.0]
        writer = FileWriter(tree.out, tree.index, clock=lambda: clock[0])
        sub = Subscriber(writer, "ipc:///nonexistent", index=tree.index)
        tree.index._write = lambda fd, data: os.write(fd, data[:3])  # the disk is full
        sub.process(write_frames(b"x", 0, 0))
        sub.process(write_frames(b"y", 1, 5))  # seq 1..4 lost: a gap record
        clock[0] += 5
        writer.tick(clock[0])  # the artifact's line
        assert sub.counters["index_errors"] == 1 and writer.counters["index_errors"] == 1
        assert sub.snapshot()["counters"]["index_errors"] == 2
        assert (tree.root / "index.jsonl").read_bytes() == b""
        writer.close()
