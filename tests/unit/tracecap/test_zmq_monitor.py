"""tracecap.zmq_monitor reads libzmq's real monitor messages as pyzmq's parser does."""

from __future__ import annotations

import zmq
from zmq.utils.monitor import parse_monitor_message

from tracecap.zmq_monitor import parse_event, recv_event


def test_connect_events_read_as_pyzmq_reads_them(tmp_path) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/bus")
    sub = ctx.socket(zmq.SUB)
    monitor = sub.get_monitor_socket()
    try:
        sub.connect(f"ipc://{tmp_path}/bus")
        seen = []
        while monitor.poll(5000):
            frames = monitor.recv_multipart()
            expected = parse_monitor_message(frames)
            assert parse_event(frames) == (expected["event"], expected["value"])
            seen.append(expected["event"])
            if expected["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                break
        assert zmq.EVENT_CONNECTED in seen and zmq.EVENT_HANDSHAKE_SUCCEEDED in seen
        pub.close(linger=0)  # the peer goes: the SUB's end reports it
        assert monitor.poll(5000)
        assert recv_event(monitor)[0] == zmq.EVENT_DISCONNECTED
    finally:
        for sock in (monitor, sub, pub):
            sock.close(linger=0)
        ctx.term()
