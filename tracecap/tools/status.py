"""`tracecap status`: the live counters of a running deployment.

The collector's come from its next ``stats.`` message on the bus; the writers' from the files
they refresh every second in ``<run-dir>/stats``. A user who may not reach the bus is told so
(exit 77), not that no collector runs (exit 1): see tracecap/tools/reach.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import zmq

from tracecap import bus
from tracecap.stats import read_writer_stats
from tracecap.tools.reach import EXIT_NO_COLLECTOR, Unreachable, diagnose
from tracecap.tools.tap import jsonable

STATS_WAIT_MS = 3000


def status(run_dir: str, reach: Callable[[str], Unreachable | None] = diagnose) -> int:
    endpoint = f"ipc://{run_dir}/bus.sock"
    problem = reach(endpoint)
    if problem is not None:
        print(f"tracecap status: {problem.message}", file=sys.stderr)
        return problem.status
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, bus.TOPIC_STATS)
    sock.connect(endpoint)
    try:
        if not sock.poll(STATS_WAIT_MS):
            print(f"tracecap status: no collector publishing on {endpoint}", file=sys.stderr)
            return EXIT_NO_COLLECTOR
        msg = bus.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)
    report = {"collector": jsonable(msg.env), "writers": read_writer_stats(f"{run_dir}/stats")}
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0
