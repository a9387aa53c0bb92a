"""Subscribers: the bus's subscription table and the per-connection bounds, over fake sockets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgpack
import pytest

from tracecap import bus
from tracecap import subscribers as subs
from tracecap.subscribers import PeerSocket, Subscribers, topic_prefixes

MS = 1_000_000
SNDBUF = 212_992
WRITER_UID = 990


@dataclass
class FakeSockets:
    """Connections by fd: the socket each fd names now, its unread bytes, and who was shut."""

    socks: dict[int, PeerSocket] = field(default_factory=dict)
    unread_bytes: dict[int, int] = field(default_factory=dict)
    shut: list[int] = field(default_factory=list)

    def connect(
        self, fd: int, uid: int = 1000, pid: int | None = None, ino: int = 0, ppid: int = 0
    ) -> None:
        self.socks[fd] = PeerSocket(ino or 10_000 + fd, uid, pid or 500 + fd, SNDBUF, ppid)
        self.unread_bytes[fd] = 0

    def close(self, fd: int) -> None:
        del self.socks[fd]

    def identify(self, fd: int, claim: object) -> PeerSocket | None:
        """As on ipc: the claim (a pid here) must name the socket's peer."""
        sock = self.socks.get(fd)
        if sock is None or (claim is not None and claim != sock.pid):
            return None
        return sock

    def unread(self, fd: int, ino: int) -> int | None:
        sock = self.socks.get(fd)
        return self.unread_bytes[fd] if sock is not None and sock.ino == ino else None

    def disconnect(self, fd: int, ino: int) -> bool:
        sock = self.socks.get(fd)
        if sock is None or sock.ino != ino:
            return False
        self.shut.append(fd)
        return True


@pytest.fixture
def kernel() -> FakeSockets:
    return FakeSockets()


@pytest.fixture
def table(kernel: FakeSockets) -> Subscribers:
    return Subscribers(kernel, exempt_uids=[WRITER_UID])


def sub(table: Subscribers, kernel: FakeSockets, fd: int, prefix: bytes, now: int = 0) -> None:
    table.on_frame(b"\x01" + prefix, fd, kernel.socks[fd].pid, now)


def unsub(table: Subscribers, kernel: FakeSockets, fd: int, prefix: bytes, now: int = 0) -> None:
    table.on_frame(b"\x00" + prefix, fd, kernel.socks[fd].pid, now)


def test_counts_per_prefix_that_can_match_a_topic(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    kernel.connect(4)
    sub(table, kernel, 3, b"file.write.")
    sub(table, kernel, 3, b"file.write.")  # the same connection again: still one
    sub(table, kernel, 4, b"file.write.")
    sub(table, kernel, 4, b"")
    sub(table, kernel, 4, b"no.such.topic.")
    assert table.counts == {b"file.write.": 2, b"": 1}
    assert table.ignored == 1
    unsub(table, kernel, 3, b"file.write.")
    unsub(table, kernel, 3, b"file.write.")  # not subscribed any more: nothing to take back
    assert table.counts == {b"file.write.": 1, b"": 1}
    assert len(table) == 2


def test_a_closed_connection_takes_its_subscriptions_along(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    sub(table, kernel, 3, b"proc.")
    sub(table, kernel, 3, b"stats.")
    kernel.close(3)
    # ZeroMQ reports the closed connection's prefixes without metadata
    table.on_frame(b"\x00proc.", None, None, 0)
    table.sample(1 * MS, payloads_piling_up=False)
    assert table.counts == {} and len(table) == 0


def test_an_fd_reused_by_another_connection_is_a_new_peer(table: Subscribers, kernel) -> None:
    kernel.connect(3, ino=1)
    sub(table, kernel, 3, b"proc.")
    kernel.connect(3, ino=2)  # closed, and the number reused
    sub(table, kernel, 3, b"exec.")
    assert table.counts == {b"exec.": 1}


def test_frames_whose_metadata_names_another_process_are_not_attributed(
    table: Subscribers, kernel
) -> None:
    kernel.connect(3, pid=77)
    table.on_frame(b"\x01proc.", 3, 78, 0)  # queued by a connection that has since gone
    assert table.counts == {} and len(table) == 0


def test_a_subscription_flood_disconnects_the_peer_and_the_table_stays_small(
    table: Subscribers, kernel
) -> None:
    kernel.connect(3)
    kernel.connect(4, uid=WRITER_UID)
    sub(table, kernel, 4, b"file.write.")
    for i in range(50_000):
        table.on_frame(b"\x01p%d." % i, 3, kernel.socks[3].pid, i * MS)
    assert kernel.shut == [3]
    assert table.dropped == {"subscriptions": 1}
    assert table.counts == {b"file.write.": 1}
    assert len(table) == 1
    assert table.ignored == subs.MAX_PEER_SUBSCRIPTIONS
    # the rest of what it queued before it was shut does not bring it back
    sub(table, kernel, 3, b"proc.")
    assert table.counts == {b"file.write.": 1} and table.dropped == {"subscriptions": 1}


def test_every_writer_uid_is_bound_by_the_subscription_limits(table: Subscribers, kernel) -> None:
    kernel.connect(4, uid=WRITER_UID)
    for i in range(subs.MAX_PEER_SUBSCRIPTIONS + 1):
        sub(table, kernel, 4, b"x%d" % i, now=i * 100 * MS)
    assert kernel.shut == [4] and table.dropped == {"subscriptions": 1}


def test_subscription_churn_past_the_rate_disconnects(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    now = 0
    for _ in range(subs.SUBSCRIBE_BURST // 2):  # a burst the size of the bucket is fine
        sub(table, kernel, 3, b"proc.", now)
        unsub(table, kernel, 3, b"proc.", now)
    assert kernel.shut == []
    for _ in range(10 * subs.SUBSCRIBE_RATE):  # then SUBSCRIBE_RATE a second is
        now += 1_000_000_000 // subs.SUBSCRIBE_RATE
        sub(table, kernel, 3, b"proc.", now)
    assert kernel.shut == []
    for _ in range(4):
        unsub(table, kernel, 3, b"proc.", now)
        sub(table, kernel, 3, b"proc.", now)
    assert kernel.shut == [3] and table.dropped == {"subscriptions": 1}
    assert table.counts == {}


def test_a_prefix_longer_than_any_topic_may_be_is_refused(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    sub(table, kernel, 3, b"x" * (subs.MAX_PREFIX_BYTES + 1))
    assert kernel.shut == [3]


def test_a_peer_sending_messages_upstream_is_disconnected(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    table.on_frame(b"hello", 3, kernel.socks[3].pid, 0)
    assert kernel.shut == [3] and table.dropped == {"messages": 1}


def test_connections_per_uid_are_bounded_but_not_the_writers(table: Subscribers, kernel) -> None:
    for fd in range(3, 3 + subs.MAX_PEERS_PER_OWNER + 1):
        kernel.connect(fd, uid=1000)
        sub(table, kernel, fd, b"proc.")
    assert kernel.shut == [3 + subs.MAX_PEERS_PER_OWNER]
    assert table.dropped == {"peers": 1}
    for fd in range(200, 200 + subs.MAX_PEERS_PER_OWNER + 1):
        kernel.connect(fd, uid=WRITER_UID)
        sub(table, kernel, fd, b"proc.")
    assert table.dropped == {"peers": 1}
    assert table.counts[b"proc."] == 2 * subs.MAX_PEERS_PER_OWNER + 1


def stuck(kernel: FakeSockets, fd: int) -> None:
    kernel.unread_bytes[fd] = SNDBUF // 4 + 1  # the kernel's test: unwritable


def run_samples(table: Subscribers, start: int, end: int, piling: bool) -> int:
    now = start
    while now <= end:
        table.sample(now, piling)
        now += subs.SAMPLE_NS
    return now


def test_a_stalled_peer_is_disconnected_once_payloads_pile_up(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    kernel.connect(4, uid=WRITER_UID)
    sub(table, kernel, 3, b"")
    sub(table, kernel, 4, b"file.write.")
    stuck(kernel, 3)
    stuck(kernel, 4)
    now = run_samples(table, 0, subs.STALL_NS // 2, piling=True)
    assert kernel.shut == []
    run_samples(table, now, now + subs.STALL_NS, piling=True)
    assert kernel.shut == [3]  # the writer is not: what it lacks is dropped with its bytes named
    assert table.dropped == {"stalled": 1}
    assert table.counts == {b"file.write.": 1}


def test_only_the_writers_supervisord_started_are_exempt(kernel) -> None:
    """A paused `tracecap tap` runs as the writers' user but is not their sibling."""
    supervisord = 4242
    table = Subscribers(kernel, exempt_uids=[WRITER_UID], exempt_parent=supervisord)
    kernel.connect(3, uid=WRITER_UID, ppid=1)  # tap, started from a shell
    kernel.connect(4, uid=WRITER_UID, ppid=supervisord)  # the file writer
    sub(table, kernel, 3, b"")
    sub(table, kernel, 4, b"file.write.")
    stuck(kernel, 3)
    stuck(kernel, 4)
    run_samples(table, 0, 2 * subs.STALL_NS, piling=True)
    assert kernel.shut == [3]
    assert table.dropped == {"stalled": 1}


def test_parent_of_reads_past_a_comm_with_parentheses(tmp_path) -> None:
    assert subs.parent_of(os.getpid()) == os.getppid()
    assert subs.parent_of(2**22 + 1) == 0  # above PID_MAX_LIMIT: no such process


def test_a_stalled_peer_is_disconnected_after_a_while_whatever_the_load(
    table: Subscribers, kernel
) -> None:
    kernel.connect(3)
    sub(table, kernel, 3, b"proc.")
    stuck(kernel, 3)
    now = run_samples(table, 0, subs.STALL_MAX_NS - subs.SAMPLE_NS, piling=False)
    assert kernel.shut == []
    run_samples(table, now, now + subs.SAMPLE_NS, piling=False)
    assert kernel.shut == [3] and table.dropped == {"stalled": 1}


def test_a_peer_that_reads_is_not_stalled(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    sub(table, kernel, 3, b"")
    now = 0
    for _ in range(3 * subs.STALL_MAX_NS // subs.SAMPLE_NS):
        # unwritable half of the time, but it takes what it is sent
        kernel.unread_bytes[3] = SNDBUF if (now // subs.SAMPLE_NS) % 2 else 0
        table.sample(now, payloads_piling_up=True)
        now += subs.SAMPLE_NS
    assert kernel.shut == [] and table.dropped == {}


def test_a_peer_that_receives_nothing_is_not_stalled(table: Subscribers, kernel) -> None:
    kernel.connect(3)
    sub(table, kernel, 3, b"nothing.matches.")
    stuck(kernel, 3)
    run_samples(table, 0, 2 * subs.STALL_MAX_NS, piling=True)
    assert kernel.shut == []


def test_subscriptions_without_metadata_are_counted(table: Subscribers) -> None:
    table.on_frame(b"\x01proc.", None, None, 0)
    table.on_frame(b"\x01proc.", None, None, 0)
    table.on_frame(b"\x01zzz", None, None, 0)
    table.on_frame(b"\x00proc.", None, None, 0)
    assert table.counts == {b"proc.": 1} and table.ignored == 1


def test_the_table_and_its_stats_are_bounded_whatever_peers_send(
    table: Subscribers, kernel
) -> None:
    for fd in range(3, 3 + 2 * subs.MAX_PEERS_PER_OWNER):
        kernel.connect(fd, uid=fd)
        for i in range(200):
            sub(table, kernel, fd, bytes([i]) + b"file.write."[: i % 12])
        for topic in bus.TOPICS:
            for i in range(len(topic) + 1):
                sub(table, kernel, fd, topic[:i])
    assert set(table.counts) <= topic_prefixes(bus.TOPICS)
    stats = dict(table.stats(), subscriptions={k.decode(): n for k, n in table.counts.items()})
    assert len(msgpack.packb(stats)) < 4096


def test_topic_prefixes() -> None:
    assert topic_prefixes([b"ab.", b"ac."]) == {b"", b"a", b"ab", b"ab.", b"ac", b"ac."}


def test_a_uid_just_disconnected_is_refused_for_a_while_then_let_back(
    table: Subscribers, kernel
) -> None:
    kernel.connect(3)
    table.on_frame(b"junk", 3, kernel.socks[3].pid, 0)
    assert table.dropped == {"messages": 1}
    # the same uid reconnects by itself every 100 ms: refused, without extending the penalty
    now = 0
    for fd in range(4, 4 + subs.PENALTY_NS // (100 * MS)):
        now += 100 * MS
        kernel.close(fd - 1)
        kernel.connect(fd)
        sub(table, kernel, fd, b"proc.", now)
        if now < subs.PENALTY_NS:
            assert table.counts == {}, now
    assert table.counts == {b"proc.": 1}
    assert table.dropped["penalty"] == subs.PENALTY_NS // (100 * MS) - 1
    kernel.connect(50, uid=2000)  # another uid was never refused
    sub(table, kernel, 50, b"proc.", 1)
    assert table.counts == {b"proc.": 2}


def test_an_accepted_connection_counts_before_its_first_frame(table: Subscribers, kernel) -> None:
    for fd in range(3, 3 + subs.MAX_PEERS_PER_OWNER + 1):
        kernel.connect(fd, uid=1000)
        table.on_accept(fd, 0)
    assert len(table) == subs.MAX_PEERS_PER_OWNER
    assert kernel.shut == [3 + subs.MAX_PEERS_PER_OWNER] and table.dropped["peers"] == 1
    table.on_frame(b"\x01proc.", 3, kernel.socks[3].pid, 0)  # the same connection, now known
    assert len(table) == subs.MAX_PEERS_PER_OWNER and table.counts[b"proc."] == 1
