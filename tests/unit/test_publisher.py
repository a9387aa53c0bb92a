"""Publisher: the collector's XPUB socket, over a real ipc socket in a temporary run dir."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zmq

from collector import bus
from collector.publisher import BACKLOG_BYTES, ZERO_COPY_MIN, Publisher


@pytest.fixture
def pub(tmp_path: Path):
    p = Publisher(str(tmp_path / "run"), epoch=5)
    yield p
    p._sock.setsockopt(zmq.LINGER, 0)
    p.close()


def subscriber(pub: Publisher, topic: bytes, rcvhwm: int = 1000) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(pub.endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    pub.wait_for({topic: 1}, timeout=10)
    return sock


def drain(sock: zmq.Socket) -> list[dict]:
    """Every envelope the subscriber can still receive."""
    out = []
    while sock.poll(500):
        out.append(msgpack.unpackb(sock.recv_multipart()[1]))
    return out


def test_messages_carry_version_epoch_and_a_seq_per_topic(pub: Publisher) -> None:
    sock = subscriber(pub, b"")
    pub.publish(bus.TOPIC_STATS, {"ts": 1}, None)
    pub.publish(b"proc.", {"ts": 2}, None)
    pub.publish(bus.TOPIC_STATS, {"ts": 3}, None)
    frames = [sock.recv_multipart() for _ in range(3)]
    envs = [msgpack.unpackb(f[1]) for f in frames]
    assert [(e["v"], e["epoch"], e["seq"]) for e in envs] == [(1, 5, 0), (1, 5, 0), (1, 5, 1)]
    assert pub.published() == {"stats.": 2, "proc.": 1}
    sock.close()


def test_large_payloads_behind_a_stalled_subscriber_are_bounded_and_dropped_visibly(
    pub: Publisher,
) -> None:
    sock = subscriber(pub, b"file.write.", rcvhwm=1)  # never reads until the end
    size = 1 << 20
    sent = 4 * BACKLOG_BYTES // size
    for i in range(sent):
        pub.publish(bus.TOPIC_FILE_WRITE, {"i": i}, bytearray(size))
        assert pub.backlog_bytes() <= BACKLOG_BYTES
    assert pub.dropped_messages > 0
    assert pub.dropped_bytes == pub.dropped_messages * size
    assert pub.sent_messages + pub.dropped_messages == sent
    seqs = [env["seq"] for env in drain(sock)]
    # what was not sent is exactly what the subscriber sees missing from seq
    assert len(seqs) == pub.sent_messages
    assert sent - len(seqs) == pub.dropped_messages
    assert seqs == sorted(seqs) and seqs[-1] <= sent - 1
    assert pub.backlog_bytes() == 0
    sock.close()


def test_small_payloads_are_not_held_against_the_budget(pub: Publisher) -> None:
    sock = subscriber(pub, b"file.write.", rcvhwm=1)
    for i in range(200):
        pub.publish(bus.TOPIC_FILE_WRITE, {"i": i}, b"x" * (ZERO_COPY_MIN - 1))
    assert pub.backlog_bytes() == 0 and pub.dropped_messages == 0
    assert len(drain(sock)) == 200
    sock.close()
