"""Publisher: the collector's XPUB socket, over a real ipc socket in a temporary run dir."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zmq

from collector.publisher import BACKLOG_BYTES, ZERO_COPY_MIN, Publisher
from tracecap import bus


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


def drain(sock: zmq.Socket) -> list[tuple[dict, bytes | None]]:
    """Every (envelope, payload) the subscriber can still receive."""
    out = []
    while sock.poll(500):
        frames = sock.recv_multipart()
        out.append((msgpack.unpackb(frames[1]), frames[2] if len(frames) > 2 else None))
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


def test_large_payloads_behind_a_stalled_subscriber_become_loss_notices(pub: Publisher) -> None:
    sock = subscriber(pub, b"file.write.", rcvhwm=1)  # never reads until the end
    size = 1 << 20
    sent = 4 * BACKLOG_BYTES // size
    for i in range(sent):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * size}, bytearray(size))
        assert pub.backlog_bytes() <= BACKLOG_BYTES
    assert pub.dropped_messages > 0
    assert pub.dropped_bytes == pub.dropped_messages * size
    assert pub.sent_messages + pub.dropped_messages == sent
    received = drain(sock)
    # every seq arrives: the payloads that did not fit as notices naming exactly their bytes
    assert [env["seq"] for env, _ in received] == list(range(sent))
    notices = [env for env, payload in received if payload is None]
    assert len(notices) == pub.dropped_messages
    for env in notices:
        assert env["lost"] == [[env["off"], env["off"] + size]]
    assert all(len(p) == size for env, p in received if p is not None and "lost" not in env)
    assert pub.backlog_bytes() == 0
    sock.close()


def test_large_packets_that_do_not_fit_are_a_seq_gap(pub: Publisher) -> None:
    sock = subscriber(pub, b"net.packet.", rcvhwm=1)
    size = 1 << 20
    sent = 4 * BACKLOG_BYTES // size
    for i in range(sent):
        pub.publish(bus.TOPIC_NET_PACKET, {"i": i}, bytearray(size))
    seqs = [env["seq"] for env, _ in drain(sock)]
    assert pub.dropped_messages > 0
    assert len(seqs) == sent - pub.dropped_messages
    sock.close()


def test_small_payloads_are_not_held_against_the_budget(pub: Publisher) -> None:
    sock = subscriber(pub, b"file.write.", rcvhwm=1)
    for i in range(200):
        pub.publish(bus.TOPIC_FILE_WRITE, {"i": i}, b"x" * (ZERO_COPY_MIN - 1))
    assert pub.backlog_bytes() == 0 and pub.dropped_messages == 0
    assert len(drain(sock)) == 200
    sock.close()


@pytest.mark.parametrize(
    ("topic", "env", "lost"),
    [
        (bus.TOPIC_FILE_WRITE, {"off": 4096, "io_id": 3}, [[4096, 4096 + 70000]]),
        (bus.TOPIC_FILE_READ, {"off": 0}, [[0, 70000]]),
        (bus.TOPIC_EXEC, {"obj_off": 1 << 20, "last": False}, [[1 << 20, (1 << 20) + 70000]]),
        (bus.TOPIC_MODULE, {"obj_off": 0, "last": True}, [[0, 70000]]),
    ],
)
def test_a_loss_notice_keeps_the_envelope_and_names_the_bytes(topic, env, lost) -> None:
    notice = bus.loss_notice(topic, env, 70000)
    assert notice == dict(env, lost=lost)
    assert "lost" not in env


def test_packets_have_no_loss_notice() -> None:
    assert bus.loss_notice(bus.TOPIC_NET_PACKET, {"ts": 1}, 70000) is None
