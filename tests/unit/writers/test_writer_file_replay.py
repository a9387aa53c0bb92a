"""The file writer fed from JetStream (``replay``): what it holds without an index line, and a
killed writer's successor that gets the same messages again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.writer_harness import byte_equation
from tests.unit.writers.test_writer_file import Harness
from tracecap import bus

W = "host/write.dev-2049.inode-77"
KEY = "7:file.write."


def replay(tmp_path: Path) -> Harness:
    return Harness(tmp_path, replay=True)


def test_what_has_no_index_line_is_held_until_it_has_one(tmp_path: Path) -> None:
    h = replay(tmp_path)
    try:
        h.io(b"abc", off=0, io_id=1, seq=4)
        h.io(b"def", off=3, io_id=2, seq=5)
        h.io(b"x", off=0, io_id=3, seq=6, inode=78)
        assert h.writer.unindexed() == {KEY: 4}
        h.idle()
        assert h.writer.unindexed() == {}
        h.io(b"ghi", off=6, io_id=4, seq=9)
        assert h.writer.unindexed() == {KEY: 9}
        h.writer.make_durable()
        assert h.writer.unindexed() == {}
        assert h.latest(W)["size"] == 9
    finally:
        h.close()


def test_a_local_writer_holds_nothing_for_acknowledgements(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.io(b"abc", off=0, io_id=1, seq=4)
        assert h.writer.unindexed() == {}
    finally:
        h.close()


def test_a_killed_writer_s_successor_is_complete_once_the_messages_come_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from writers import file as file_mod

    monkeypatch.setattr(file_mod, "CHECKPOINT_BYTES", 8192)
    data = os.urandom(40_000)
    h = replay(tmp_path)
    try:
        for n, off in enumerate(range(0, 20_000, 1000)):
            h.io(data[off : off + 1000], off=off, io_id=n + 1, seq=n)
        h.kill()  # nothing acknowledged: every message is delivered again
        assert h.writer.counters["reconciled"] == 1
        for n, off in enumerate(range(0, len(data), 1000)):
            h.io(data[off : off + 1000], off=off, io_id=n + 1, seq=n)
        h.idle()
        rec = h.latest(W)
        assert rec["complete"] is True and rec["missing"] == [] and "interrupted" not in rec
        byte_equation(data, (h.root / W).read_bytes(), rec["missing"])
    finally:
        h.close()


def test_a_stream_s_bytes_come_again_but_land_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe's artifact is appended to: bytes its journal knows are skipped when they come
    again, and bytes on disk past the last journal state are cut off and appended again."""
    from writers import file as file_mod

    monkeypatch.setattr(file_mod, "CHECKPOINT_BYTES", 3000)
    data = os.urandom(10_000)

    def pipe(h: Harness, upto: int) -> None:
        for n, off in enumerate(range(0, upto, 1000)):
            h.io(data[off : off + 1000], off=off, io_id=n + 1, seq=n, append=True, mode=0o10644)

    h = replay(tmp_path)
    try:
        pipe(h, 5000)  # journal state after 3000 bytes; 5000 on disk
        h.kill()
        assert (h.root / W).stat().st_size == 3000  # cut back to what the journal knows
        pipe(h, len(data))
        h.idle()
        rec = h.latest(W)
        assert (h.root / W).read_bytes() == data
        assert rec["complete"] is True and rec["missing"] == []
        assert h.writer.counters["replayed_bytes_skipped"] == 3000
    finally:
        h.close()


def test_without_replay_a_killed_writer_s_artifact_stays_interrupted(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.io(b"abc", off=0, io_id=1)
        h.writer.tick(h.clock.now)
        h.kill()
        h.io(b"abc", off=0, io_id=1)
        h.idle()
        assert h.latest(W)["interrupted"] is True
        assert bus.TOPIC_FILE_WRITE in h.writer.topics
    finally:
        h.close()
