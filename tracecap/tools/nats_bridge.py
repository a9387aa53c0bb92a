"""`tracecap bridge --nats`: the local bus, republished into a JetStream stream.

The collector stays off the network; this unprivileged process subscribes to the whole bus
(``ipc://<run-dir>/bus.sock``) and publishes every message on ``tracecap.<host>.<topic>`` with
``Nats-Msg-Id`` = ``<host>:<epoch>:<topic>:<seq>`` (``tracecap.fleet``).

* Reading the bus never waits for NATS: messages go into a bounded spool
  (``tracecap.tools.spool``) and a publisher sends from its front with up to PUBLISH_WINDOW
  publishes in flight, confirming them in order as JetStream acknowledges. A publish that
  fails or times out (NATS unreachable, a stream leader lost) rewinds the spool: everything in
  flight is sent again in order, and the stream's duplicate window stores what was already
  there once. So the stream holds each message once, in the order of the bus.
* A full spool drops the new message and counts it: the remote writers see the hole in ``seq``
  as a gap, as they would for a message ZeroMQ dropped. The counters go out with each
  ``stats.`` message (header ``Tracecap-Bridge``) for ``tracecap status --nats``.
* The stream is created when missing (subjects ``tracecap.>``, file storage, ``--replicas``,
  a 2-minute duplicate window); an existing one is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from tracecap import bus, fleet
from tracecap.link import MAX_FRAME_BYTES
from tracecap.natsconn import NatsOptions, connect, run_until_signalled
from tracecap.privileges import drop_privileges
from tracecap.stderr_log import Log, stderr_log
from tracecap.tools.spool import Entry, Spool

#: Publishes awaiting their acknowledgement at once. 256 x 256 KiB file chunks is 64 MiB on
#: the wire at most; fewer cost throughput on a link with latency (each waits a round trip).
PUBLISH_WINDOW = 256
#: A publish unacknowledged this long is sent again (with everything after it).
PUBLISH_TIMEOUT_S = 5.0
#: Spool bounds: what the bridge holds while NATS is away.
SPOOL_MESSAGES = 200_000
SPOOL_BYTES = 512 << 20
#: The bus side: as a writer's SUB queue (messages waiting in libzmq before we read them).
RECV_HWM = 100_000
DUPLICATE_WINDOW_S = 120
BRIDGE_HEADER = "Tracecap-Bridge"
LOG_INTERVAL_S = 10.0

_stderr = stderr_log("tracecap bridge")


@dataclass(frozen=True)
class NatsBridgeConfig:
    """From ``tracecap bridge --nats``'s flags."""

    nats: NatsOptions
    upstream: str
    host: str
    stream: str = fleet.DEFAULT_STREAM
    replicas: int = 1
    spool_messages: int = SPOOL_MESSAGES
    spool_bytes: int = SPOOL_BYTES


class NatsBridge:
    """Build, then ``await run(stop)``."""

    def __init__(self, config: NatsBridgeConfig, log: Log = _stderr) -> None:
        self.config = config
        self._log = log
        self.spool = Spool(config.spool_messages, config.spool_bytes)
        self.counters: dict[str, int] = dict.fromkeys(
            ("received", "malformed", "too_large", "duplicates", "retries", "disconnects"), 0
        )
        self._nc: Any = None
        self._js: Any = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        c = self.spool.counters
        return {
            **self.counters,
            "host": self.config.host,
            "spooled": c.spooled,
            "stored": c.stored,
            "stored_bytes": c.stored_bytes,
            "dropped_messages": c.dropped_messages,
            "dropped_bytes": c.dropped_bytes,
            "dropped": dict(c.dropped),
            "spool_messages": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "spool_peak_messages": c.peak_messages,
            "spool_peak_bytes": c.peak_bytes,
        }

    def summary(self) -> str:
        s = self.snapshot()
        return (
            f"received {s['received']} bus messages, stored {s['stored']} ({s['stored_bytes']} "
            f"bytes) in stream {self.config.stream}, {s['duplicates']} duplicates, "
            f"{s['retries']} resends, dropped {s['dropped_messages']} ({s['dropped_bytes']} "
            f"bytes) with the spool full, {s['spool_messages']} still spooled, "
            f"{s['malformed']} malformed, {s['too_large']} over the server's max_payload"
        )

    # -- the bus side --------------------------------------------------------------------

    def take(self, frames: list[bytes]) -> None:
        """One bus message into the spool (or counted as malformed or dropped)."""
        self.counters["received"] += 1
        try:
            msg = bus.decode(frames)
            subject = fleet.subject(self.config.host, msg.topic)
        except (bus.BadMessage, fleet.BadSubject) as exc:
            self.counters["malformed"] += 1
            self._log(f"malformed bus message skipped: {exc}")
            return
        headers, data = fleet.body(frames[1], frames[2] if len(frames) > 2 else b"")
        headers[fleet.MSG_ID_HEADER] = fleet.msg_id(
            self.config.host, msg.env["epoch"], msg.topic, msg.env["seq"]
        )
        if msg.topic == bus.TOPIC_STATS:
            headers[BRIDGE_HEADER] = json.dumps(self.snapshot(), sort_keys=True)
        if self._nc is not None and len(data) + 1024 > self._nc.max_payload:
            self.counters["too_large"] += 1
            self._log(
                f"{subject}: {len(data)} bytes exceed the server's max_payload "
                f"{self._nc.max_payload}: dropped (a seq gap downstream; raise max_payload)"
            )
            return
        entry = Entry(subject, headers[fleet.MSG_ID_HEADER], headers, data)
        if self.spool.add(entry):
            self._wake.set()

    async def _read_bus(self, stop: asyncio.Event) -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RECV_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.config.upstream)
        try:
            while not stop.is_set():
                if not await sock.poll(200):
                    continue
                for _ in range(1000):
                    if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                        break
                    self.take(await sock.recv_multipart())
                await asyncio.sleep(0)
        finally:
            sock.close(linger=0)
            ctx.term()

    # -- the NATS side -------------------------------------------------------------------

    async def _connect(self, stop: asyncio.Event) -> None:
        async def disconnected() -> None:
            self.counters["disconnects"] += 1
            self._connected.clear()
            self._log("NATS disconnected; spooling")

        async def reconnected() -> None:
            self._connected.set()
            self._wake.set()
            self._log(f"NATS reconnected to {self._nc.connected_url.netloc}")

        while not stop.is_set():
            try:
                self._nc = await connect(
                    self.config.nats,
                    f"tracecap-bridge@{self.config.host}",
                    on_disconnect=disconnected,
                    on_reconnect=reconnected,
                    log=self._log,
                )
                break
            except Exception as exc:
                self._log(f"NATS not reachable ({exc.__class__.__name__}: {exc}); spooling")
                await asyncio.sleep(1.0)
        if self._nc is None:
            return
        self._js = self._nc.jetstream(publish_async_max_pending=PUBLISH_WINDOW * 2)
        while not stop.is_set():
            try:
                await self._ensure_stream()
                break
            except Exception as exc:
                self._log(f"stream {self.config.stream} not ready ({exc}); retrying")
                await asyncio.sleep(1.0)
        self._connected.set()
        self._log(
            f"publishing {self.config.upstream} as host {self.config.host} into stream "
            f"{self.config.stream} via {self._nc.connected_url.netloc}"
        )

    async def _ensure_stream(self) -> None:
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        try:
            await self._js.stream_info(self.config.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        await self._js.add_stream(
            StreamConfig(
                name=self.config.stream,
                subjects=[f"{fleet.SUBJECT_ROOT}.>"],
                storage=StorageType.FILE,
                num_replicas=self.config.replicas,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
        self._log(f"created stream {self.config.stream} ({self.config.replicas} replicas)")

    async def _publish(self, stop: asyncio.Event) -> None:
        """Send from the spool's front, confirm in order, rewind on any failure."""
        inflight: deque[tuple[Entry, asyncio.Future[Any]]] = deque()
        while not (stop.is_set() and not inflight and not self._can_send()):
            if not self._connected.is_set():
                await self._wait(self._connected.wait(), 0.5)
                continue
            try:
                while len(inflight) < PUBLISH_WINDOW:
                    entry = self.spool.next_to_send()
                    if entry is None:
                        break
                    fut = await self._js.publish_async(
                        entry.subject, entry.data, headers=dict(entry.headers)
                    )
                    inflight.append((entry, fut))
                if not inflight:
                    self._wake.clear()
                    if stop.is_set():
                        return
                    await self._wait(self._wake.wait(), 0.2)
                    continue
                _, fut = inflight[0]
                ack = await asyncio.wait_for(fut, PUBLISH_TIMEOUT_S)
                inflight.popleft()
                self.spool.confirm()
                if ack.duplicate:
                    self.counters["duplicates"] += 1
            except Exception as exc:
                for _, fut in inflight:
                    fut.cancel()
                inflight.clear()
                self.spool.rewind()
                self.counters["retries"] += 1
                self._log(f"publish failed ({exc.__class__.__name__}: {exc}); resending in order")
                await asyncio.sleep(0.2)

    def _can_send(self) -> bool:
        return self.spool.sent < len(self.spool)

    @staticmethod
    async def _wait(aw: Any, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(aw, timeout)

    async def run(self, stop: asyncio.Event) -> int:
        """Relay until ``stop``; then publish what is spooled for up to DRAIN_S (NATS
        permitting) and print the counters."""
        reader = asyncio.create_task(self._read_bus(stop))
        connector = asyncio.create_task(self._connect(stop))
        publish_stop = asyncio.Event()
        publisher = asyncio.create_task(self._publish(publish_stop))
        ticker = asyncio.create_task(self._report(stop))
        try:
            await stop.wait()
            await reader
            publish_stop.set()
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(publisher), DRAIN_S)
            except TimeoutError:
                self._log(f"{len(self.spool)} spooled messages not published at exit")
        finally:
            for task in (reader, connector, publisher, ticker):
                task.cancel()
            await asyncio.gather(reader, connector, publisher, ticker, return_exceptions=True)
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.close(), 2.0)
            self._log(self.summary())
        return 0

    async def _report(self, stop: asyncio.Event) -> None:
        last = ""
        while not stop.is_set():
            await self._wait(stop.wait(), LOG_INTERVAL_S)
            line = self.summary()
            if line != last and self.spool.counters.dropped_messages:
                self._log(line)
            last = line


#: At exit, how long spooled messages may still take to reach the stream.
DRAIN_S = 10.0


def run_nats_bridge(
    config: NatsBridgeConfig,
    stop: threading.Event | None = None,
    drop_to: str | None = "tracecap",
    log: Log = _stderr,
) -> int:
    """Drop root first, then relay until SIGTERM/SIGINT (or ``stop``)."""
    if drop_to is not None:
        drop_privileges(drop_to)

    return run_until_signalled(lambda done: NatsBridge(config, log=log).run(done), stop)


def host_name(given: str | None) -> str:
    """``--host`` or the short host name, as a subject token (ValueError if it cannot be)."""
    return fleet.check_host(
        given if given is not None else fleet.default_host(socket.gethostname())
    )
