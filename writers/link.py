"""The writer's end of the bus: a SUB socket that bounds memory and comes back after errors.

libzmq refuses a frame over ``MAXMSGSIZE`` by dropping the connection as a *protocol error*, and
after a protocol error it does not reconnect (``session_base_t::engine_error``): one oversized
frame would silently detach the writer for good. Ordinary disconnects (collector restart) are
followed by ``EVENT_CONNECT_RETRIED``; a disconnect that is not is a dead link, so the socket is
rebuilt. The monitor socket is how the two are told apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from collector import bus

#: Queue depth on our side of the pipe; large because a drop here is data lost for good.
RCVHWM = 100_000
#: Any single frame larger than this is refused by libzmq itself, so a hostile peer cannot make
#: us allocate without limit. Legitimate frames are far smaller.
MAX_FRAME_BYTES = bus.MAX_PAYLOAD_BYTES + bus.MAX_ENVELOPE_BYTES + 4096
#: How long a disconnect may go without libzmq scheduling a reconnect before we rebuild.
DEAD_LINK_SECONDS = 1.0

_ALIVE_EVENTS = (
    zmq.EVENT_CONNECTED,
    zmq.EVENT_CONNECT_DELAYED,
    zmq.EVENT_CONNECT_RETRIED,
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
)


class BusLink:
    """One SUB connection. Use from a single thread (zmq sockets are not thread-safe)."""

    def __init__(self, context: zmq.Context, endpoint: str, topics: Sequence[bytes]) -> None:
        self._context = context
        self._endpoint = endpoint
        self._topics = tuple(topics)
        self._dead_since: float | None = None
        #: Times the socket was rebuilt after a disconnect libzmq would not repair.
        self.rebuilds = 0
        self._open()

    def _open(self) -> None:
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CONNECTED
            | zmq.EVENT_CONNECT_DELAYED
            | zmq.EVENT_CONNECT_RETRIED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        sock.connect(self._endpoint)
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def poll(self, timeout_ms: int) -> bool:
        """Wait for data; True when a message may be ready."""
        ready = dict(self._poller.poll(timeout_ms))
        return self._sock in ready

    def recv(self) -> list[bytes] | None:
        """One multipart message, or None when nothing is queued."""
        try:
            return self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def check(self, now: float) -> bool:
        """Process connection events; rebuild a dead link. Returns True when it rebuilt."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._dead_since = now
            elif event in _ALIVE_EVENTS:
                self._dead_since = None
        if self._dead_since is not None and now - self._dead_since >= DEAD_LINK_SECONDS:
            self._dead_since = None
            self._close()
            self._open()
            self.rebuilds += 1
            return True
        return False

    def close(self) -> None:
        self._close()
