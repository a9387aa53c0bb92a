"""`tracecap tap`: print the bus as JSON lines, for people and for scripts.

Kernel strings are bytes on the bus; here they become text with invalid bytes escaped
(``\\xNN``), so every line is valid JSON whatever a process named itself. An ipc endpoint this
user may not open is reported at once (exit 77) rather than waited on in silence, and a missing
one as "no collector" (exit 1): see tracecap/tools/reach.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import zmq

from tracecap import bus
from tracecap.privileges import drop_privileges
from tracecap.text import text_field
from tracecap.tools.reach import Unreachable, diagnose


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return text_field(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def tap_line(msg: bus.Message) -> str:
    record = {"topic": msg.topic.decode("ascii", errors="backslashreplace"), **jsonable(msg.env)}
    record["payload_len"] = len(msg.payload)
    return json.dumps(record, sort_keys=True)


def tap(
    endpoint: str,
    topics: list[bytes],
    reach: Callable[[str], Unreachable | None] = diagnose,
) -> int:
    drop_privileges()
    # After the drop: the question is whether the user tap runs as can open the socket.
    problem = reach(endpoint)
    if problem is not None:
        print(f"tracecap tap: {problem.message}", file=sys.stderr)
        return problem.status
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.MAXMSGSIZE, bus.MAX_PAYLOAD_BYTES + bus.MAX_ENVELOPE_BYTES + 4096)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    try:
        while True:
            frames = sock.recv_multipart()
            try:
                line = tap_line(bus.decode(frames))
            except bus.BadMessage as exc:
                print(f"tracecap tap: dropped a malformed message: {exc}", file=sys.stderr)
                continue
            print(line, flush=True)
    except BrokenPipeError:
        # the reader went away (`tracecap tap | head`): exit quietly, without a flush error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close(linger=0)
