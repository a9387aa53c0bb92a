"""Publisher: the collector's XPUB socket, over a real ipc socket in a temporary run dir."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from collector.backlog import MARK_BYTES
from collector.publisher import BACKLOG_BYTES, ZERO_COPY_MIN, Publisher
from tracecap import bus
from tracecap import subscribers as subs


@pytest.fixture
def pub(tmp_path: Path):
    """A publisher whose subscribers (all of the test's uid) are treated as writers: never
    disconnected for being slow, so that a stalled one exercises the payload budget."""
    p = Publisher(str(tmp_path / "run"), epoch=5, exempt_uids=[os.getuid()])
    yield p
    p._sock.setsockopt(zmq.LINGER, 0)
    p.close()


def subscriber(pub: Publisher, topic: bytes, rcvhwm: int = 1000) -> zmq.Socket:
    """A SUB of ``topic`` whose subscription the publisher has taken: one more than it had,
    since another's wider prefix (``b""``) already counts for ``topic``, and a message sent
    before the XPUB has the subscription never reaches it."""
    before = pub.subscribers(topic)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(pub.endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    pub.wait_for({topic: before + 1}, timeout=10)
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


def test_a_packet_batch_moves_its_seq_by_its_packets(pub: Publisher) -> None:
    """A ``net.packets.`` seq numbers packets: a lost batch is a gap of its packets."""
    sock = subscriber(pub, bus.TOPIC_NET_PACKETS)
    for count in (3, 1, 256):
        pub.publish(bus.TOPIC_NET_PACKETS, {"ts": 1, "packets": [[0]] * count}, b"")
    assert [env["seq"] for env, _ in drain(sock)] == [0, 3, 4]
    assert pub.published() == {"net.packets.": 260}
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


def test_what_waited_for_room_is_sent_though_its_overhead_passes_the_budget(
    pub: Publisher,
) -> None:
    """The collector's own reads take as many payload bytes as ``backlog_room`` says; each
    message also carries its envelope and MESSAGE_OVERHEAD, which must not drop the last."""
    sock = subscriber(pub, b"exec.", rcvhwm=1)  # never reads until the end
    size = 1 << 20
    while (room := pub.backlog_room()) >= size:
        pub.publish(bus.TOPIC_EXEC, {"obj_off": 0}, bytearray(size), waited=True)
    assert pub.dropped_messages == 0 and 0 <= room < size
    pub.publish(bus.TOPIC_EXEC, {"obj_off": 0}, bytearray(size), waited=True)
    assert pub.dropped_messages == 0 and pub.backlog_room() == 0
    assert pub.backlog_bytes() > BACKLOG_BYTES  # charged: nothing else gets in meanwhile
    pub.publish(bus.TOPIC_EXEC, {"obj_off": 0}, bytearray(size))
    assert pub.dropped_messages == 1
    received = drain(sock)
    assert [p is not None for _, p in received] == [True] * pub.sent_messages + [False]
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


def test_small_payloads_behind_a_stalled_subscriber_become_loss_notices(pub: Publisher) -> None:
    """Copied payloads count against the budget too (collector/backlog.py): behind a writer
    that stops reading, the collector's count never passes BACKLOG_BYTES, what did not fit
    goes out as notices naming exactly its bytes, and bytes sent = present + listed."""
    sock = subscriber(pub, b"file.write.", rcvhwm=1)  # never reads until the end
    size = 4096
    sent = 2 * BACKLOG_BYTES // size
    for i in range(sent):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * size}, bytes([i % 251]) * size)
        assert pub.backlog_bytes() <= BACKLOG_BYTES
    assert 0 < pub.dropped_messages < sent
    assert pub.dropped_bytes == pub.dropped_messages * size
    received = drain(sock)
    assert [env["seq"] for env, _ in received] == list(range(sent))
    present = missing = 0
    for env, payload in received:
        i = env["off"] // size
        if payload is None:
            assert env["lost"] == [[env["off"], env["off"] + size]]
            missing += size
        else:
            assert "lost" not in env and payload == bytes([i % 251]) * size
            present += size
    assert missing == pub.dropped_bytes
    assert present + missing == sent * size
    # taken by the reader: all but the messages after the last marker are released
    maintain_until(pub, lambda: pub.backlog_bytes() <= MARK_BYTES)
    sock.close()


def test_small_payloads_leave_the_count_once_taken(pub: Publisher) -> None:
    """A reader that keeps up: nothing is dropped however much is sent, and a large payload
    (tracked itself) releases the copied ones before it."""
    sock = subscriber(pub, b"file.write.", rcvhwm=100_000)
    got: list[int] = []

    def read() -> None:
        while sock.poll(2000):
            frames = sock.recv_multipart()
            got.append(len(frames[2]))

    thread = threading.Thread(target=read)
    thread.start()
    sent = 3 * BACKLOG_BYTES // 4096
    for i in range(sent):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * 4096}, bytes(4096))
        while pub.backlog_bytes() > BACKLOG_BYTES // 2:
            time.sleep(0.001)  # as the collector's ring drain does (backlog_room)
    pub.publish(bus.TOPIC_FILE_WRITE, {"off": sent * 4096}, bytes(ZERO_COPY_MIN))
    thread.join(30)
    assert pub.dropped_messages == 0
    assert got == [4096] * sent + [ZERO_COPY_MIN]
    maintain_until(pub, lambda: pub.backlog_bytes() == 0)
    sock.close()


def test_a_marker_held_by_a_subscriber_that_leaves_is_released(pub: Publisher) -> None:
    """Its connection closed, ZeroMQ drops what it queued for it, markers included."""
    sock = subscriber(pub, b"file.", rcvhwm=1)
    for i in range(4 * MARK_BYTES // 4096):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * 4096}, bytes(4096))
    assert pub.backlog_bytes() > 2 * MARK_BYTES
    sock.close()
    maintain_until(pub, lambda: pub.backlog_bytes() <= MARK_BYTES)


def test_a_stalled_subscriber_of_other_topics_holds_no_payload(pub: Publisher) -> None:
    sock = subscriber(pub, b"proc.", rcvhwm=1)
    for i in range(2 * BACKLOG_BYTES // 4096):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * 4096}, bytes(4096))
    assert pub.dropped_messages == 0
    maintain_until(pub, lambda: pub.backlog_bytes() <= MARK_BYTES)
    sock.close()


def test_packet_batches_behind_a_stalled_writer_are_bounded_by_their_own_budget(
    pub: Publisher,
) -> None:
    """Batches are copied-size, yet SEND_HWM of them would be gigabytes: they are charged to a
    budget of their own, past which a batch is a seq gap of its packets, and the file data's
    room is untouched (a stalled pcap writer must not starve the file writer)."""
    sock = subscriber(pub, bus.TOPIC_NET_PACKETS, rcvhwm=1)  # never reads until the end
    size, packets = 60 * 1024, 200
    sent = 2 * BACKLOG_BYTES // size
    for _ in range(sent):
        pub.publish(bus.TOPIC_NET_PACKETS, {"packets": [[0]] * packets}, bytes(size))
        assert pub.backlog_bytes() <= BACKLOG_BYTES
    assert pub.dropped_messages > 0
    assert pub.dropped_bytes == pub.dropped_messages * size
    assert pub.backlog_room() == BACKLOG_BYTES
    seqs = [env["seq"] for env, _ in drain(sock)]
    assert len(seqs) == sent - pub.dropped_messages
    assert seqs == [i * packets for i in range(len(seqs))]
    assert pub.backlog_bytes() == 0
    sock.close()


def test_single_packets_behind_a_stalled_tap_are_bounded_by_their_own_budget(
    pub: Publisher,
) -> None:
    """`net.packet.` goes only to third-party subscribers: a tap that stops reading is bounded
    like anything else, on a budget of its own, so the file data's room is untouched."""
    sock = subscriber(pub, bus.TOPIC_NET_PACKET, rcvhwm=1)  # never reads until the end
    size = 1500
    for _ in range(2 * BACKLOG_BYTES // size):
        pub.publish(bus.TOPIC_NET_PACKET, {"ts": 0}, bytes(size))
    assert pub.dropped_messages > 0
    assert pub.backlog_bytes() <= BACKLOG_BYTES
    assert pub.backlog_room() == BACKLOG_BYTES
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


# -- hostile subscribers ------------------------------------------------------------------------


def maintain_until(pub: Publisher, done, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out: {pub.peer_stats()}"
        pub.maintain()
        time.sleep(0.002)


def test_subscriptions_name_their_connection(pub: Publisher) -> None:
    sock = subscriber(pub, b"proc.")
    assert len(pub.peers) == 1
    (peer,) = pub.peers._peers.values()
    assert (peer.sock.pid, peer.sock.owner) == (os.getpid(), os.getuid())
    assert pub.subscriptions == {b"proc.": 1}
    sock.close()
    maintain_until(pub, lambda: len(pub.peers) == 0 and not pub.subscriptions)


def test_a_subscription_flood_disconnects_the_flooder_only(tmp_path: Path) -> None:
    pub = Publisher(str(tmp_path / "run"), epoch=5, exempt_uids=())
    good = subscriber(pub, b"proc.")
    flood = zmq.Context.instance().socket(zmq.SUB)
    flood.setsockopt(zmq.LINGER, 0)
    flood.connect(pub.endpoint)
    for i in range(20_000):
        flood.setsockopt(zmq.SUBSCRIBE, b"flood.%d." % i)
    maintain_until(pub, lambda: pub.peers.dropped["subscriptions"] >= 1)
    flood.close()
    maintain_until(pub, lambda: len(pub.peers) == 1)
    assert pub.subscriptions == {b"proc.": 1}
    assert pub.peer_stats()["bus_subscriptions_ignored"] >= subs.MAX_PEER_SUBSCRIPTIONS
    pub.publish(b"proc.", {"ts": 1}, None)
    assert good.poll(5000)
    assert msgpack.unpackb(good.recv_multipart()[1])["ts"] == 1
    good.close()
    pub._sock.setsockopt(zmq.LINGER, 0)
    pub.close()


def test_a_peer_sending_messages_up_is_disconnected(pub: Publisher) -> None:
    xsub = zmq.Context.instance().socket(zmq.XSUB)
    xsub.setsockopt(zmq.LINGER, 0)
    xsub.connect(pub.endpoint)
    xsub.send(b"\x01proc.")
    maintain_until(pub, lambda: pub.subscriptions == {b"proc.": 1})
    xsub.send(b"not a subscription")
    maintain_until(pub, lambda: pub.peers.dropped["messages"] == 1)
    xsub.close()


def test_a_subscription_longer_than_any_topic_ends_the_connection(pub: Publisher) -> None:
    sock = subscriber(pub, b"proc.")
    sock.setsockopt(zmq.SUBSCRIBE, b"x" * 1000)  # libzmq itself refuses the frame
    maintain_until(pub, lambda: len(pub.peers) == 0 and not pub.subscriptions)
    sock.close()


class SecondIsAWriter(subs.KernelSocketOps):
    """The real sockets, but the second connection seen is said to be a writer's: a test's
    subscribers all have the test's uid, and a reader starved of CPU on a busy host must not
    be taken for the stalled one."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def identify(self, fd: int, claim: str | None) -> subs.PeerSocket | None:
        sock = super().identify(fd, claim)
        if sock is not None and sock.ino not in self.seen:
            self.seen.append(sock.ino)
        if sock is not None and self.seen.index(sock.ino) == 1:
            return dataclasses.replace(sock, owner=WRITER_UID)
        return sock


WRITER_UID = 2**31 - 2


def test_a_stalled_subscriber_costs_the_others_nothing(tmp_path: Path) -> None:
    """A subscriber that never reads is disconnected before the payloads it holds fill the
    budget: the one that reads gets every byte, none goes out as a loss notice."""
    pub = Publisher(
        str(tmp_path / "run"), epoch=5, exempt_uids=[WRITER_UID], socket_ops=SecondIsAWriter()
    )
    stalled = subscriber(pub, b"", rcvhwm=1)
    reader = subscriber(pub, b"file.write.", rcvhwm=100_000)
    size, sent = 1 << 20, 6 * BACKLOG_BYTES // (1 << 20)
    got: list[int] = []

    def read() -> None:
        while len(got) < sent and reader.poll(10_000):
            frames = reader.recv_multipart()
            got.append(len(frames[2]) if len(frames) == 3 else -1)

    thread = threading.Thread(target=read)
    thread.start()
    for i in range(sent):
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i * size}, bytearray(size))
        deadline = time.monotonic() + 0.005  # 200 MB/s
        while time.monotonic() < deadline:
            pub.maintain()
            time.sleep(0.0005)
    thread.join(30)
    assert pub.peers.dropped["stalled"] >= 1, (dict(pub.peers.dropped), len(got))
    assert pub.subscriptions[b"file.write."] == 1  # the reader was never disconnected
    assert pub.dropped_messages == 0
    assert got == [size] * sent, (dict(pub.peers.dropped), len(got), got.count(size))
    maintain_until(pub, lambda: pub.backlog_bytes() == 0)
    stalled.close()
    reader.close()
    pub._sock.setsockopt(zmq.LINGER, 0)
    pub.close()


def test_a_disconnected_subscriber_that_reads_again_is_served_again(tmp_path: Path) -> None:
    """Disconnecting a stalled tap costs it only a gap: its SUB socket reconnects by itself and
    receives again once it reads."""
    pub = Publisher(str(tmp_path / "run"), epoch=5, exempt_uids=())
    tap = subscriber(pub, b"file.write.", rcvhwm=1)
    deadline, i = time.monotonic() + 10, 0
    while not pub.peers.dropped["stalled"]:
        assert time.monotonic() < deadline, "the stalled subscriber was not disconnected"
        pub.publish(bus.TOPIC_FILE_WRITE, {"off": i}, bytearray(1 << 20))
        i += 1
        pub.maintain()
        time.sleep(0.002)
    seqs = [env["seq"] for env, _ in drain(tap)]
    # reading again, the tap sees the connection ended, reconnects and subscribes again (a
    # SUB socket does that only while its owner uses it)
    deadline = time.monotonic() + 10
    while pub.subscriptions != {b"file.write.": 1}:
        assert time.monotonic() < deadline, f"no resubscription: {dict(pub.peers.dropped)}"
        tap.poll(5)
        pub.maintain()
    pub.publish(bus.TOPIC_FILE_WRITE, {"off": 0, "again": True}, b"x")
    assert tap.poll(5000)
    env = msgpack.unpackb(tap.recv_multipart()[1])
    assert env["again"] is True
    assert env["seq"] == i > seqs[-1] + 1  # the messages it missed show as a gap
    tap.close()
    pub._sock.setsockopt(zmq.LINGER, 0)
    pub.close()


def test_connections_that_never_subscribe_are_bounded_too(tmp_path: Path) -> None:
    """Each costs the collector an fd: past MAX_PEERS_PER_OWNER of one uid they are cut off,
    though not one of them ever sent a frame."""
    pub = Publisher(str(tmp_path / "run"), epoch=5, exempt_uids=())
    extra = 5
    socks = []
    try:
        for _ in range(subs.MAX_PEERS_PER_OWNER + extra):
            sock = zmq.Context.instance().socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pub.endpoint)
            socks.append(sock)
        maintain_until(pub, lambda: sum(pub.peers.dropped.values()) >= extra)
        assert len(pub.peers) == subs.MAX_PEERS_PER_OWNER
        assert pub.subscriptions == {}
    finally:
        for sock in socks:
            sock.close()
        pub._sock.setsockopt(zmq.LINGER, 0)
        pub.close()


_EXITING_PUBLISHER = """
import sys
from collections import Counter
sys.path.insert(0, {root!r})
from collector.publisher import Publisher
from tracecap import bus
pub = Publisher({run_dir!r}, epoch=5, exempt_uids=())
pub.wait_for(Counter({{bus.TOPIC_PROC: 1}}), 30)
for i in range({n}):
    pub.publish(bus.TOPIC_PROC, {{"i": i}})
print("sent", flush=True)
pub.close()
"""


def test_what_a_slow_reader_was_sent_reaches_it_after_the_collector_exits(tmp_path: Path):
    """The collector exits right after close: what ZeroMQ still holds for a writer that is
    behind must reach it first (pyzmq does not terminate a context at exit, and an
    unterminated context drops its queues whatever LINGER says)."""
    n = 20_000
    run_dir = str(tmp_path / "run")
    root = str(Path(__file__).resolve().parents[3])
    code = _EXITING_PUBLISHER.format(root=root, run_dir=run_dir, n=n)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1000)  # the rest waits on the publisher's side
    sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_PROC)
    sock.connect(f"ipc://{run_dir}/bus.sock")
    try:
        assert child.stdout.readline().strip() == "sent"
        got = 0
        seen: list[int] = []
        while sock.poll(5000):
            seen.append(msgpack.unpackb(sock.recv_multipart()[1])["i"])
            got += 1
            if got == n:
                break
        assert child.wait(30) == 0
        assert seen == list(range(n))
    finally:
        child.kill()
        sock.close(linger=0)
