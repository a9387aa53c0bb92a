"""The collector's end of the bus: one XPUB socket on ipc, group-readable, never on the network.

XPUB rather than PUB because it reports subscriptions: the collector waits until the writers it
needs have subscribed before it attaches any probe, so nothing is published into the void. Each
report names its connection, which is how a subscriber that floods subscriptions or stops
reading is found and disconnected (tracecap/subscribers.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import zmq

from collector.backlog import MARK_BYTES, Backlog
from tracecap import bus
from tracecap.privileges import RunDirError, prepare_run_dir
from tracecap.subscribers import (
    MAX_PREFIX_BYTES,
    SAMPLE_NS,
    KernelSocketOps,
    SocketOps,
    Subscribers,
    frame_origin,
)
from tracecap.zmq_monitor import recv_event

#: Messages queued per subscriber before ZeroMQ drops for that subscriber alone (so a slow tap
#: never costs a writer anything). A writer sees a drop as a seq gap, and `tracecap run`
#: counts the drops at the very end, which no later message reveals, from ``published()``.
#: It is large on purpose: a writer's gap can be recorded but not attributed to the artifacts
#: it hit, so the queue absorbs bursts rather than drop (4000 made a flood test lose bytes the
#: index could not list). The price is memory when a writer stays behind (NOTES.md).
SEND_HWM = 200_000
#: Bytes that ZeroMQ may still hold for subscribers that are behind, per budget: the payload
#: messages of file and object data (every topic that carries payload but those in
#: OWN_BUDGETS). SEND_HWM counts messages, and file data travels in messages of up to
#: 256 KiB, so it alone would let a stalled writer grow the collector by gigabytes. Large
#: payloads are tracked one by one, copied ones by markers (collector/backlog.py). Past this, a
#: payload message is replaced by its loss notice (the same envelope with the bytes as a
#: ``lost`` range, see bus.loss_notice; packets are skipped and show as a seq gap), and counted
#: (``bus_dropped_*`` in stats). Only subscribers of payload topics hold such messages, so a
#: slow `proc.` tap costs nothing.
BACKLOG_BYTES = 16 * 1024 * 1024
#: Charged per payload message besides its envelope and payload: libzmq's pipe holds each of
#: the three frames in a 64-byte msg_t, and each frame over 33 bytes (the envelope, the
#: payload) in a malloc'd block with a 40-byte header (content_t) and malloc's own 16.
MESSAGE_OVERHEAD = 3 * 64 + 2 * (40 + 16)
#: At a stop, how long the collector waits for its subscribers to take what was sent to them
#: (supervisord stops the writers only after the collector has exited, and kills it after 30 s).
LINGER_S = 25.0
#: Subscribers' sockets empty this long: ZeroMQ has nothing more queued for them either.
QUIET_S = 0.1
#: Smaller payloads are copied into ZeroMQ's own messages (cheaper than tracking each of them),
#: and a marker among them is tracked (collector/backlog.py).
ZERO_COPY_MIN = 65536
#: Topics charged to a budget of their own (BACKLOG_BYTES each), with the bytes between two
#: markers (collector/backlog.py; 0: every message tracked). A packet batch is copied-size (at
#: most 60 KiB), but SEND_HWM of them behind a stalled pcap writer would be up to 12 GB; the
#: single packets go only to third-party subscribers. Their own budgets, so that neither a
#: stalled pcap writer (never disconnected) nor a stalled tap of packets takes the file data's
#: room and starves the file writer.
OWN_BUDGETS = {bus.TOPIC_NET_PACKETS: 0, bus.TOPIC_NET_PACKET: MARK_BYTES}
#: Past this much of BACKLOG_BYTES, a subscriber whose socket takes nothing more is what holds
#: the payloads: it is disconnected after subscribers.STALL_NS rather than make every
#: subscriber of the topic lose the next payloads (writers' uid excepted, see subscribers.py).
PRESSURE_BYTES = BACKLOG_BYTES // 4
#: The largest frame a peer may send (a subscription is one byte and its prefix; a SUB's
#: handshake frame is 25 bytes). libzmq drops a connection that sends a longer one.
MAX_INBOUND_BYTES = MAX_PREFIX_BYTES + 16
#: (Un)subscriptions read from the socket in one call, so that a flood cannot hold the loop.
MAX_FRAMES_PER_POLL = 4096


#: The send flags as plain ints: ``send_multipart`` combines pyzmq's enum flags for every
#: frame, which took a fifth of a packet's publishing (cProfile, 30,000 packet messages).
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


class BusError(RuntimeError):
    """The bus cannot be served: the run directory is unsafe, another collector holds its lock,
    or the writers did not subscribe in time (or the collector was stopped while waiting for
    them). The collector reports it and exits with 1."""


class Publisher:
    """The one XPUB socket of a run and the only thing that sends on the bus. It stamps every
    envelope with the bus version, the run's epoch and a per-topic seq (so a subscriber sees any
    drop as a gap), never blocks on a send, and keeps the data messages ZeroMQ holds under
    BACKLOG_BYTES (collector/backlog.py). ``maintain`` keeps each subscriber within its bounds
    (Subscribers). It holds ``collector.lock`` in the run directory until ``close``.

    ``exempt_uids`` are never disconnected for being slow (default: the ``tracecap`` user's
    processes started by our parent, the supervisord that runs the writers); ``socket_ops`` is
    the kernel access on the peers' sockets (faked in tests)."""

    def __init__(
        self,
        run_dir: str,
        epoch: int | None = None,
        *,
        exempt_uids: Iterable[int] | None = None,
        socket_ops: SocketOps | None = None,
    ) -> None:
        try:
            prepare_run_dir(run_dir)
        except RunDirError as exc:
            raise BusError(str(exc)) from None
        self.endpoint = f"ipc://{run_dir}/bus.sock"
        # A second collector binding the same ipc path would silently steal the bus: lock first.
        self._lock = os.open(os.path.join(run_dir, "collector.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise BusError(f"another collector is running on {run_dir}") from None
            raise
        # Its own context, terminated at close: only term() waits out LINGER, and pyzmq does
        # not terminate a context at interpreter exit, so what ZeroMQ still queued for a writer
        # that was behind died with the collector (a quarter of a 200,000-packet flood, bench).
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        # VERBOSER: every subscription and unsubscription of every connection is passed up,
        # each with its connection's metadata (tracecap/subscribers.py)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        # at a stop under load, a slow writer may still be taking what was sent; supervisord
        # stops writers only after the collector has exited, and kills after 30 s
        self._sock.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
        # accepted connections by fd, so that one that never subscribes is bounded too
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_ACCEPTED)
        old = os.umask(0o117)
        try:
            self._sock.bind(self.endpoint)
        finally:
            os.umask(old)
        self.epoch = epoch if epoch is not None else secrets.randbits(63)
        self._seq: Counter[bytes] = Counter()
        exempt_parent = None
        if exempt_uids is None:
            # the writers: the tracecap user's processes that our supervisord started
            exempt_uids, exempt_parent = _writers_uid(), os.getppid()
        self.peers = Subscribers(
            socket_ops or KernelSocketOps(), exempt_uids, exempt_parent=exempt_parent
        )
        self._next_maintain = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.dropped_messages = 0
        self.dropped_bytes = 0
        # budgets of their own (OWN_BUDGETS); the other payload topics share BACKLOG_BYTES
        self._own = {topic: Backlog(mark) for topic, mark in OWN_BUDGETS.items()}
        self._data: dict[bytes, Backlog] = {}
        self._data_upper = 0

    @property
    def subscriptions(self) -> Counter[bytes]:
        """Live subscriptions per prefix that can match a topic (the others match nothing)."""
        return self.peers.counts

    def poll_subscriptions(self) -> None:
        """Read pending (un)subscription frames; they tell who is listening to what."""
        now = time.monotonic_ns()
        for _ in range(MAX_FRAMES_PER_POLL):
            try:
                frame = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            fd, claim = frame_origin(frame)
            self.peers.on_frame(frame.bytes, fd, claim, now)

    def maintain(self) -> None:
        """Take pending (un)subscriptions and check the subscribers' sockets, at most every
        SAMPLE_NS: cheap enough for every turn of the collector's loop."""
        now = time.monotonic_ns()
        if now < self._next_maintain:
            return
        self._next_maintain = now + SAMPLE_NS
        while self._monitor.poll(0):
            event, fd = recv_event(self._monitor)
            if event == zmq.EVENT_ACCEPTED:
                self.peers.on_accept(fd, now)
        if self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.poll_subscriptions()
        piling_up = max(self._data_held(), *(b.held() for b in self._own.values()))
        self.peers.sample(now, piling_up >= PRESSURE_BYTES)

    def subscribers(self, topic: bytes) -> int:
        """Subscriptions that receive ``topic`` (a prefix subscription covers it too)."""
        return sum(n for prefix, n in self.subscriptions.items() if topic.startswith(prefix))

    def wait_for(self, wanted: Counter[bytes], timeout: float, stop: Any = None) -> None:
        """Block until every topic in ``wanted`` has at least that many subscriptions."""
        deadline = time.monotonic() + timeout
        while any(self.subscribers(t) < n for t, n in wanted.items()):
            if stop is not None and stop():
                raise BusError("stopped while waiting for subscribers")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = {
                    t.decode(): n - self.subscribers(t)
                    for t, n in wanted.items()
                    if self.subscribers(t) < n
                }
                raise BusError(f"subscribers did not arrive within {timeout:.0f}s: {missing}")
            if self._sock.poll(min(200, int(remaining * 1000) + 1), zmq.POLLIN):
                self.poll_subscriptions()

    def publish(
        self,
        topic: bytes,
        env: dict[str, Any],
        payload: bytes | bytearray | None = None,
        *,
        waited: bool = False,
    ) -> None:
        """Send one message. ``waited``: its sender waited for ``backlog_room`` first (the
        collector's own reads of files), so it is charged but never dropped for the budget:
        the room is counted in payload bytes, and a message's envelope and overhead
        (MESSAGE_OVERHEAD) would otherwise push the last ones of a pump over it."""
        env["v"] = bus.VERSION
        env["epoch"] = self.epoch
        env["seq"] = self._seq[topic]
        self._seq[topic] += bus.seq_width(topic, env)
        size = len(payload) if payload is not None else 0
        backlog = self._own.get(topic)
        if backlog is None and size:
            backlog = self._data.get(topic) or self._data.setdefault(topic, Backlog())
        frames = bus.encode(topic, env, payload)
        # Never block the drain loop: past the HWM ZeroMQ drops per subscriber, which the
        # subscriber sees as a gap in seq.
        if backlog is None:
            send = self._sock.send
            for frame in frames[:-1]:
                send(frame, _MORE)
            send(frames[-1], _LAST)
        else:
            charge = size + len(frames[1]) + MESSAGE_OVERHEAD
            marker = size >= ZERO_COPY_MIN or backlog.wants_marker(charge)
            if marker:
                # one turn of the collector's loop may publish more than BACKLOG_BYTES: a
                # subscriber that holds them must be found while they are sent, not after
                self.maintain()
            own = topic in self._own
            # the data count is refreshed (its markers checked) only when it matters: a
            # message costs a few microseconds, summing every topic's count one more
            held = backlog.held() if own else self._data_upper
            if held + charge > BACKLOG_BYTES and not own and not waited:
                held = self._data_held()
            if held + charge > BACKLOG_BYTES and not waited:
                self.dropped_messages += 1
                self.dropped_bytes += size
                notice = bus.loss_notice(topic, env, size)
                if notice is not None:
                    self._sock.send_multipart(bus.encode(topic, notice), flags=zmq.NOBLOCK)
                return
            if not own:
                self._data_upper = held + charge
            send = self._sock.send
            send(frames[0], _MORE)
            send(frames[1], _MORE)
            if marker:
                # an explicit Frame: send(copy=False) copies anything under zmq.COPY_THRESHOLD
                # (64 KiB) and hands back a tracker that is already done
                frame = zmq.Frame(frames[2], track=True, copy=False)
                backlog.add_marker(send(frame, _LAST, copy=False, track=True), charge)
            else:
                send(frames[2], _LAST)
                backlog.add_copied(charge)
        self.sent_messages += 1
        self.sent_bytes += size

    def backlog_room(self) -> int:
        """Bytes of file and object data messages that can still be sent before the budget
        drops them: what the collector reads from files on its own (binaries, module
        files) waits for it, since unlike kernel records it can wait."""
        return max(0, BACKLOG_BYTES - self._data_held())

    def backlog_bytes(self) -> int:
        """Bytes charged to every budget that ZeroMQ may still hold (not yet taken by everyone;
        an upper bound, see collector/backlog.py)."""
        return self._data_held() + sum(b.held() for b in self._own.values())

    def _data_held(self) -> int:
        """What the data topics hold, their markers checked; ``_data_upper`` is this, plus
        what was charged since (an upper bound)."""
        self._data_upper = sum(b.held() for b in self._data.values())
        return self._data_upper

    def published(self) -> dict[str, int]:
        """Messages published so far per topic (the next seq of each)."""
        return {t.decode("ascii", "backslashreplace"): n for t, n in self._seq.items()}

    def peer_stats(self) -> dict[str, Any]:
        """The subscribers' part of the ``stats.`` message (bounded, see Subscribers.stats)."""
        return self.peers.stats()

    def close(self) -> None:
        """Close the bus: returns once the subscribers took what was queued for them, or after
        LINGER (supervisord stops the writers only after the collector has exited)."""
        self._await_readers(time.monotonic() + LINGER_S)
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close()
        self._ctx.term()
        os.close(self._lock)

    def _await_readers(self, deadline: float) -> None:
        """Wait until the subscribers have read what the kernel holds for them (their sockets'
        unread bytes at zero for QUIET_S), at most until ``deadline``. A SUB drops what it had
        not read from its socket when the publisher's end closes (measured: the last 1,300 of
        20,000 messages to a reader 1,000 behind); what ZeroMQ queues here flows on meanwhile."""
        quiet_since = None
        while (now := time.monotonic()) < deadline:
            self.maintain()
            if self.peers.unread():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= QUIET_S:
                return
            time.sleep(0.005)


def _writers_uid() -> list[int]:
    """The uid the writers run as (``tracecap``), if the user exists."""
    try:
        return [pwd.getpwnam("tracecap").pw_uid]
    except KeyError:
        return []
