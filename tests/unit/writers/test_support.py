"""The writer tests' support: an envelope for every topic that the contract accepts, and the
harness's life cycle (restart over the same tree, close once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.envelopes import ENVELOPES, file_env, message
from tests.support.writer_harness import FakeClock, WriterHarness
from tracecap import bus
from writers.file import FileWriter


def test_every_topic_has_an_envelope() -> None:
    assert set(ENVELOPES) == set(bus.TOPICS)


@pytest.mark.parametrize("topic", bus.TOPICS, ids=lambda t: t.decode())
def test_each_envelope_is_valid_for_its_topic(topic: bytes) -> None:
    msg = message(topic, ENVELOPES[topic](seq=3), b"payload")
    assert msg.topic == topic and msg.env["seq"] == 3 and msg.payload == b"payload"


def test_file_read_envelopes_say_read() -> None:
    assert ENVELOPES[bus.TOPIC_FILE_READ]()["syscall"] == "read"


def test_the_harness_restarts_over_the_same_tree_and_closes_once(tmp_path: Path) -> None:
    clock = FakeClock()
    h = WriterHarness(tmp_path, lambda out, index: FileWriter(out, index, clock=clock))
    h.send(b"abc", file_env(io_len=3))
    first = h.writer
    h.restart()  # closing the first writer flushes its artifact's record
    assert h.writer is not first and h.topic == bus.TOPIC_FILE_WRITE
    assert [r["path"] for r in h.records()] == ["host/write.dev-2049.inode-77"]
    assert h.listing() == ["write.dev-2049.inode-77"]
    h.close()
    h.close()
    assert h.closed
