"""libzmq's socket monitor events, read without ``zmq.utils.monitor``.

That module imports ``zmq.asyncio`` and so asyncio: 40-60 ms of every tracecap process's start
on a 2-core host (python -X importtime), where the collector and up to six writers start at
once and the collector's readiness waits on all of them. The event is two fields of the first
frame (zmq_socket_monitor(3): a 16-bit event number, a 32-bit value), then the endpoint.
"""

from __future__ import annotations

import struct

import zmq

_HEADER = struct.Struct("=Hi")


def parse_event(frames: list[bytes]) -> tuple[int, int]:
    """One monitor message as (event, value); value is an fd or an errno."""
    event, value = _HEADER.unpack_from(frames[0])
    return event, value


def recv_event(sock: zmq.Socket) -> tuple[int, int]:
    """The next event on a monitor socket (blocks until there is one)."""
    return parse_event(sock.recv_multipart())
