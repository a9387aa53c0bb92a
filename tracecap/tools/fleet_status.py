"""`tracecap status --nats`: the hosts seen in the JetStream stream, with their last stats.

For each host publishing into the stream (its ``tracecap.<host>.stats`` subject), the last
``stats.`` message: the collector's counters, the bridge's (the ``Tracecap-Bridge`` header:
spooled, stored, dropped), when it was stored and how old that is (``age_s``: a bridge that
stopped publishing shows here), and the stream's message count for the host.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from tracecap import bus, fleet
from tracecap.natsconn import NatsOptions, connect
from tracecap.tools.nats_bridge import BRIDGE_HEADER
from tracecap.tools.tap import jsonable

EXIT_NO_STREAM = 1


def host_report(
    host: str, data: bytes, headers: dict[str, str] | None, stored_ns: int, now_ns: int
) -> dict[str, Any]:
    """One host's line: its last stats message decoded (or why not)."""
    report: dict[str, Any] = {"host": host, "age_s": round((now_ns - stored_ns) / 1e9, 3)}
    try:
        msg = bus.decode(fleet.frames(bus.TOPIC_STATS, headers, data))
        report["collector"] = jsonable(msg.env)
    except (bus.BadMessage, fleet.BadSubject) as exc:
        report["error"] = f"last stats message not readable: {exc}"
    raw = (headers or {}).get(BRIDGE_HEADER)
    if raw:
        try:
            report["bridge"] = json.loads(raw)
        except ValueError:
            report["error"] = "bridge counters not readable"
    return report


async def _status(options: NatsOptions, stream: str) -> tuple[int, dict[str, Any]]:
    nc = await connect(options, "tracecap-status", reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter=f"{fleet.SUBJECT_ROOT}.*.>")
        per_host: dict[str, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            try:
                host, _ = fleet.parse_subject(subject)
            except fleet.BadSubject:
                continue
            per_host[host] = per_host.get(host, 0) + count
        hosts = []
        now_ns = time.time_ns()
        for host in sorted(per_host):
            entry: dict[str, Any] = {"host": host}
            try:
                raw = await js.get_last_msg(stream, fleet.subject(host, bus.TOPIC_STATS))
                stored = int(raw.time.timestamp() * 1e9) if raw.time else now_ns
                entry = host_report(host, raw.data or b"", raw.headers, stored, now_ns)
            except Exception as exc:
                entry["error"] = f"no stats message: {exc.__class__.__name__}"
            entry["messages_in_stream"] = per_host[host]
            hosts.append(entry)
        return 0, {
            "stream": stream,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "hosts": hosts,
        }
    finally:
        await nc.close()


def fleet_status(options: NatsOptions, stream: str) -> int:
    try:
        status, report = asyncio.run(_status(options, stream))
    except Exception as exc:
        print(
            f"tracecap status: stream {stream} on {','.join(options.servers)}: "
            f"{exc.__class__.__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_NO_STREAM
    print(json.dumps(report, indent=2, sort_keys=True))
    return status
