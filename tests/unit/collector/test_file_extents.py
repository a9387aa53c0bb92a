"""FileExtents and the assembler's announcements at stop: how far each file artifact reaches."""

from __future__ import annotations

from typing import Any

from bpf.records import DIR_READ, EV_APPEND
from collector.file_assembly import FileAssembler
from collector.file_extents import FileExtents
from tests.support.envelopes import file_env
from tests.unit.collector.test_file_assembly import BOOT_TO_EPOCH, FIFO, chunk, event
from tracecap import bus


def _env(**kw: Any) -> dict[str, Any]:
    env = file_env(**kw)
    for key in ("v", "epoch", "seq", "ts"):
        del env[key]  # what a stream's envelope holds
    return env


def decoded(topic: bytes, env: dict[str, Any]) -> bus.Message:
    """An announcement as a writer receives it (the publisher adds v, epoch and seq)."""
    frames = bus.encode(topic, {"v": bus.VERSION, "epoch": 1, "seq": 0, **env})
    return bus.decode(frames)


def test_the_end_is_the_furthest_byte_named_and_the_envelope_the_latest() -> None:
    ext = FileExtents()
    ext.note(bus.TOPIC_FILE_WRITE, _env(pid=1), 300, 10)
    ext.note(bus.TOPIC_FILE_WRITE, _env(pid=2), 100, 20)  # a rewrite of the start
    (msg,) = ext.announce(1000)
    m = decoded(msg.topic, msg.env)
    assert bus.parse_extent(m.env) == 300 and m.env["off"] == 300 and msg.payload is None
    assert (m.env["pid"], m.env["ts"], m.env["io_id"], m.env["io_len"]) == (2, 20, 1000, 0)
    bus.check_transfer(m.env, 0)
    assert len(ext) == 0  # forgotten once announced


def test_artifacts_are_told_apart_as_writers_name_them() -> None:
    """Per direction, file, inode generation and container: never one artifact's end for
    another's."""
    ext = FileExtents()
    ext.note(bus.TOPIC_FILE_WRITE, _env(container_id="a" * 64), 100, 1)
    ext.note(bus.TOPIC_FILE_WRITE, _env(container_id=""), 200, 2)
    ext.note(bus.TOPIC_FILE_READ, _env(syscall="read"), 300, 3)
    ext.note(bus.TOPIC_FILE_WRITE, _env(generation=9), 400, 4)
    ext.note(bus.TOPIC_FILE_WRITE, _env(inode=78), 500, 5)
    ends = {
        (m.topic, m.env["container_id"], m.env.get("generation"), m.env["inode"]): m.env["extent"]
        for m in ext.announce(1)
    }
    assert ends == {
        (bus.TOPIC_FILE_WRITE, "a" * 64, None, 77): 100,
        (bus.TOPIC_FILE_WRITE, "", None, 77): 200,
        (bus.TOPIC_FILE_READ, "", None, 77): 300,
        (bus.TOPIC_FILE_WRITE, "", 9, 77): 400,
        (bus.TOPIC_FILE_WRITE, "", None, 78): 500,
    }


def test_streams_are_not_tracked() -> None:
    ext = FileExtents()
    ext.note(bus.TOPIC_FILE_WRITE, _env(append=True), 100, 1)
    assert ext.announce(1) == []


def test_the_table_keeps_the_most_recently_written() -> None:
    ext = FileExtents(limit=3)
    for inode in (1, 2, 3, 1, 4):
        ext.note(bus.TOPIC_FILE_WRITE, _env(inode=inode), inode * 10, inode)
    assert [m.env["inode"] for m in ext.announce(1)] == [3, 1, 4]


def test_a_loss_notice_is_tracked_without_its_loss() -> None:
    ext = FileExtents()
    env = _env(lost=[[0, 50]], lost_bytes=50, lost_ios=1)
    ext.note(bus.TOPIC_FILE_WRITE, env, 50, 1)
    (msg,) = ext.announce(1)
    assert not {"lost", "lost_bytes", "lost_ios"} & msg.env.keys() and msg.env["extent"] == 50


def test_the_assembler_announces_what_it_published_after_its_last_flush() -> None:
    asm = FileAssembler(BOOT_TO_EPOCH)
    asm.on_event(event(4096, pos=8192), 0)
    out = asm.on_data(chunk(0, 4096), 0) + asm.flush_runs()
    asm.on_event(event(100, io_id=8, mode=FIFO, flags=EV_APPEND, inode=9), 0)  # a pipe
    asm.on_event(event(1000, io_id=9, direction=DIR_READ, syscall="read", inode=10, tid=5), 0)
    out += asm.on_data(chunk(0, 10, io_id=9), 0) + asm.expire(0, force=True)
    announced = asm.announce_extents()
    assert sorted((m.topic, m.env["inode"], m.env["extent"]) for m in announced) == [
        (bus.TOPIC_FILE_READ, 10, 4096 + 1000),  # 10 bytes arrived, the rest reported lost
        (bus.TOPIC_FILE_WRITE, 555, 8192 + 4096),
    ]
    last_ids = {m.env["io_id"] for m in out}
    assert len({m.env["io_id"] for m in announced} | last_ids) == len(last_ids) + 2
    assert asm.announce_extents() == []


def test_a_dropped_syscall_notice_counts_towards_the_end() -> None:
    from bpf import records

    asm = FileAssembler(BOOT_TO_EPOCH)
    drop = records.DroppedIo(
        direction=records.DIR_WRITE, dev=1, inode=2, cgroup_id=3, append=False,
        lo=100, hi=900, bytes=800, ios=2,
    )  # fmt: skip
    asm.on_dropped(drop, 5)
    (msg,) = asm.announce_extents()
    assert (msg.env["inode"], msg.env["extent"]) == (2, 900)
    decoded(msg.topic, msg.env)
