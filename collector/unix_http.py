"""HTTP/1.1 over a unix socket whose server must be root (the container runtimes' APIs).

Its own module because ``http.client`` (with the ``email`` parser it pulls in) took 18-21 ms of
the collector's 130 ms of imports, on the path to ready, while only a host with a runtime's
socket ever asks (collector/runtimes.py imports this at its first request).
"""

from __future__ import annotations

import http.client
import socket
import struct

from collector.runtimes import LookupFailed

#: What a broken answer raises, besides OSError.
HTTPException = http.client.HTTPException
_SO_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT)
    )
    return struct.unpack(_SO_PEERCRED_FORMAT, creds)[1]


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket, refusing a server that is not root's."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        #: the socket, kept after http.client lets go of it (a response read to its close)
        self.unix_sock: socket.socket | None = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
            uid = peer_uid(sock)
            if uid != 0:
                raise LookupFailed("untrusted_socket", f"{self._path}: served by uid {uid}")
        except BaseException:
            sock.close()
            raise
        self.sock = self.unix_sock = sock
