"""The writer's end of the bus: a SUB socket that bounds memory and comes back after errors.

libzmq refuses a frame over ``MAXMSGSIZE`` by dropping the connection as a *protocol error*, and
after a protocol error it does not reconnect (``session_base_t::engine_error``): one oversized
frame would silently detach the writer for good. Ordinary disconnects (collector restart) are
followed by ``EVENT_CONNECT_RETRIED``; a disconnect that is not is a dead link, so the socket is
rebuilt. The monitor socket is how the two are told apart.

Over tcp (a writer on another box, fed by `tracecap bridge`) the socket is a CURVE client: the
bridge refuses anything else. Heartbeats and TCP keepalive are on there, because a peer that
vanished from the network sends no FIN and the link would otherwise look alive for good. A
refused handshake is counted (``handshake_failures``) so the writer can say why nothing comes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import zmq

from tracecap import bus
from tracecap.keys import CurveClient
from tracecap.zmq_monitor import recv_event

#: Queue depth on our side of the pipe, in messages, unless the writer asks for another (see
#: Writer.queue_messages). Our queue and the collector's (SEND_HWM) together absorb a burst
#: the writer takes longer to write than it took to arrive.
RCVHWM = 100_000
#: Any single frame larger than this is refused by libzmq itself, so a hostile peer cannot make
#: us allocate without limit. Legitimate frames are far smaller.
MAX_FRAME_BYTES = bus.MAX_PAYLOAD_BYTES + bus.MAX_ENVELOPE_BYTES + 4096
#: How long a disconnect may go without libzmq scheduling a reconnect before we rebuild.
DEAD_LINK_SECONDS = 1.0
#: tcp links only: a ping every HEARTBEAT_IVL_MS, and a peer silent for HEARTBEAT_TIMEOUT_MS is
#: disconnected (then reconnected as usual).
HEARTBEAT_IVL_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 10_000

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)

#: A connection is up (the rest of _ALIVE_EVENTS say libzmq is trying to make one).
_CONNECTED_EVENTS = (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED)

_ALIVE_EVENTS = (
    zmq.EVENT_CONNECTED,
    zmq.EVENT_CONNECT_DELAYED,
    zmq.EVENT_CONNECT_RETRIED,
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
)


class BusLink:
    """One SUB connection. Use from a single thread (zmq sockets are not thread-safe)."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        topics: Sequence[bytes],
        curve: CurveClient | None = None,
        rcvhwm: int = RCVHWM,
        wake_fd: int | None = None,
    ) -> None:
        self._context = context
        #: The read end of a non-blocking pipe whose bytes end a ``poll`` early (a stop signal).
        self._wake_fd = wake_fd
        self._endpoint = endpoint
        self._topics = tuple(topics)
        self._curve = curve
        self._rcvhwm = rcvhwm
        #: Handshakes the peer refused (CURVE: our key is not on its allow-list, or wrong keys).
        self.handshake_failures = 0
        self._dead_since: float | None = None
        #: A connection is up: CONNECTED or HANDSHAKE_SUCCEEDED seen since the last DISCONNECTED.
        self._connected = False
        #: Times the socket was rebuilt after a disconnect libzmq would not repair.
        self.rebuilds = 0
        self._open()

    def _open(self) -> None:
        self._connected = False
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if self._curve is not None:
            sock.curve_serverkey = self._curve.server_public
            sock.curve_publickey = self._curve.public
            sock.curve_secretkey = self._curve.secret
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CONNECTED
            | zmq.EVENT_CONNECT_DELAYED
            | zmq.EVENT_CONNECT_RETRIED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        sock.connect(self._endpoint)
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        if self._wake_fd is not None:
            self._poller.register(self._wake_fd, zmq.POLLIN)

    def _close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def poll(self, timeout_ms: int) -> bool:
        """Wait for data (or a byte on ``wake_fd``, which is taken); True when a message may be
        ready."""
        ready = dict(self._poller.poll(timeout_ms))
        if self._wake_fd is not None and self._wake_fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_fd, 64):
                    pass
        return self._sock in ready

    def recv(self) -> list[bytes] | None:
        """One multipart message, or None when nothing is queued."""
        try:
            return self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def _take_events(self, now: float) -> None:
        while self._monitor.poll(0):
            event, _value = recv_event(self._monitor)
            if event == zmq.EVENT_DISCONNECTED:
                self._dead_since = now
                self._connected = False
            elif event in _ALIVE_EVENTS:
                self._dead_since = None
                self._connected = self._connected or event in _CONNECTED_EVENTS
            elif event in _HANDSHAKE_FAILED:
                self.handshake_failures += 1

    def disconnected(self, now: float) -> bool:
        """Whether no publisher is connected: none yet, or its end closed and none since
        (libzmq retrying to connect every 100 ms does not change that). libzmq reports the
        close once it has read the connection to its end, so nothing more can come but what
        is already queued here."""
        self._take_events(now)
        return not self._connected

    def check(self, now: float) -> bool:
        """Process connection events; rebuild a dead link. Returns True when it rebuilt."""
        self._take_events(now)
        if self._dead_since is not None and now - self._dead_since >= DEAD_LINK_SECONDS:
            self._dead_since = None
            self._close()
            self._open()
            self.rebuilds += 1
            return True
        return False

    def close(self) -> None:
        self._close()
