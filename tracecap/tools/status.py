"""`tracecap status`: the live counters of a running deployment.

The collector's come from its next ``stats.`` message on the bus; the writers' from the files
they refresh every second in ``<run-dir>/stats``.
"""

from __future__ import annotations

import json
import sys

import zmq

from tracecap import bus
from tracecap.stats import read_writer_stats
from tracecap.tools.tap import jsonable

STATS_WAIT_MS = 3000


def status(run_dir: str) -> int:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
    sock.connect(f"ipc://{run_dir}/bus.sock")
    try:
        if not sock.poll(STATS_WAIT_MS):
            print(
                f"tracecap status: no collector publishing on ipc://{run_dir}/bus.sock",
                file=sys.stderr,
            )
            return 1
        msg = bus.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)
    report = {"collector": jsonable(msg.env), "writers": read_writer_stats(f"{run_dir}/stats")}
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0
