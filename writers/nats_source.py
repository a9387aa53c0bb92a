"""A writer fed from JetStream: `tracecap writer KIND --connect nats://...`.

One durable pull consumer per (writer kind, output) (``fleet.durable_name``), AckAll, filtered
on the kind's topics of every host (``tracecap.*.<topic>``). Each host gets its own writer,
index and journal under ``<dir>/out/<host>/`` (a ``Subscriber`` fed by hand: same decoding,
gap accounting and counters as on the local bus).

What makes it lose nothing:

* A delivery is acknowledged only once its data is on disk *and* its artifact's index line is
  written (``writers.acks``, ``Writer.unindexed``); before the ack, the last bus ``seq`` per
  stream acknowledged is saved per host (``.nats-acked.<kind>.json``), so that a restarted
  writer's gap tracker starts exactly where the stream delivers again.
* The consumer is (re)created from its acknowledged floor at start, after a reconnect, and when
  a delivery went missing in transit (the consumer's delivery sequence jumped): JetStream would
  otherwise redeliver the unacknowledged only after the ack wait, out of order, and the writer
  would see gaps that are not losses. What this process already handled is skipped when it
  comes again (a stream's bytes are never appended twice; positional bytes land on themselves).
* A file writer started over a killed predecessor's journal does not mark its open artifacts
  interrupted (``FileWriter(replay=True)``): their messages come again.
* Unacknowledged deliveries are bounded (MAX_ACK_PENDING); at half of it the writer writes the
  index lines of what it holds (``Writer.make_durable``) so a long-written file cannot stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from tracecap import fleet, kinds
from tracecap.natsconn import NatsOptions, connect, run_until_signalled
from tracecap.privileges import drop_privileges
from tracecap.stderr_log import Log, stderr_log
from writers.acks import AckLedger, Delivery
from writers.base import Subscriber
from writers.budget import DEFAULT_FLOOR_BYTES, DiskBudget
from writers.index import Index
from writers.outdir import FILE_MODE, OutputDir, open_regular
from writers.runner import WRITER_KINDS
from writers.seqorder import SeqOrder

FETCH_BATCH = 256
FETCH_TIMEOUT_S = 0.5
MAX_ACK_PENDING = 20_000
#: Long: an unacknowledged delivery is normally an artifact still being written; redelivery
#: while this process lives is never needed (it resyncs itself), only after it died.
ACK_WAIT_S = 600
HOUSEKEEPING_S = 0.2
ACKED_STATE = ".nats-acked.{kind}.json"

_stderr = stderr_log("tracecap-writer[nats]")


@dataclass(frozen=True)
class NatsWriterConfig:
    kind: str
    out_dir: str  # <dir>/out
    nats: NatsOptions
    stats_dir: str | None
    stream: str = fleet.DEFAULT_STREAM
    hosts: str = "*"
    options: dict[str, Any] | None = None
    limit_bytes: int | None = None
    floor_bytes: int = DEFAULT_FLOOR_BYTES
    durable: str | None = None


class HostSink:
    """One host's output: ``<dir>/out/<host>``, its index, its writer, its subscriber."""

    def __init__(self, config: NatsWriterConfig, host: str, acked: dict[str, int]) -> None:
        factory = WRITER_KINDS[config.kind]
        self.host = host
        self.out = OutputDir(os.path.join(config.out_dir, host))
        try:
            self.index = Index(self.out)
            budget = DiskBudget(
                self.out.root_fd,
                config.limit_bytes,
                config.floor_bytes,
                index=self.index,
                name=config.kind,
            )
            extra = dict(config.options or {})
            if "replay" in inspect.signature(factory.cls).parameters:
                extra["replay"] = True
            self.writer = factory.cls(self.out, self.index, budget=budget, **extra)
            self.subscriber = Subscriber(
                self.writer,
                f"nats:{host}",
                index=self.index,
                stats_dir=config.stats_dir,
                name=f"{config.kind}-{host}",
            )
            self.subscriber.resume(acked)
        except BaseException:
            self.out.close()
            raise
        self._state_name = ACKED_STATE.format(kind=config.kind)

    def save_acked(self, acked: dict[str, int]) -> None:
        """Write the acknowledged position (temp file, then rename: whole or not at all)."""
        tmp = f".{self._state_name}.{os.getpid()}.tmp"
        fd = open_regular(tmp, os.O_WRONLY | os.O_TRUNC, self.out.root_fd)
        try:
            os.fchmod(fd, FILE_MODE)
            os.write(fd, json.dumps(acked, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.rename(tmp, self._state_name, src_dir_fd=self.out.root_fd, dst_dir_fd=self.out.root_fd)

    def finish(self) -> None:
        """Flush the writer (every index line written) and its counters."""
        self.writer.close()
        self.subscriber.write_stats()

    def close(self) -> None:
        self.index.close()
        self.out.close()


def load_acked(out_dir: str, kind: str) -> dict[str, dict[str, int]]:
    """The acknowledged positions the hosts' directories hold (empty for a new output)."""
    name = ACKED_STATE.format(kind=kind)
    found: dict[str, dict[str, int]] = {}
    try:
        hosts = os.listdir(out_dir)
    except FileNotFoundError:
        return found
    for host in hosts:
        try:
            fleet.check_host(host)
            with open(os.path.join(out_dir, host, name), "rb") as f:
                state = json.loads(f.read(1 << 20))
        except (ValueError, OSError):
            continue
        if isinstance(state, dict):
            found[host] = {str(k): v for k, v in state.items() if type(v) is int}
    return found


class NatsSource:
    """The consumer loop. ``await run(stop)``."""

    def __init__(self, config: NatsWriterConfig, log: Log = _stderr) -> None:
        if config.kind not in WRITER_KINDS:
            raise ValueError(f"unknown writer kind {config.kind!r}")
        self.config = config
        self._log = log
        self.topics = self._topics()
        self.filter = fleet.filter_subject(self.topics, config.hosts)
        self.durable = config.durable or fleet.durable_name(
            config.kind, socket.gethostname(), os.path.abspath(config.out_dir)
        )
        self.ledger = AckLedger(load_acked(config.out_dir, config.kind))
        self.sinks: dict[str, HostSink] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("deliveries", "redeliveries_skipped", "other_subjects", "resyncs", "acks"), 0
        )
        self._nc: Any = None
        self._js: Any = None
        self._psub: Any = None
        self._resync = True
        self._next_consumer_seq = 1
        self._order: SeqOrder[tuple[str, list[bytes]]] = SeqOrder(self._expected)

    def _topics(self) -> tuple[bytes, ...]:
        return kinds.BY_NAME[self.config.kind].topics

    # -- messages ------------------------------------------------------------------------

    def _sink(self, host: str) -> HostSink:
        sink = self.sinks.get(host)
        if sink is None:
            sink = HostSink(self.config, host, self.ledger.acked.get(host, {}))
            self.sinks[host] = sink
            self._log(f"host {host}: writing into {sink.out.path}")
        return sink

    def handle(self, msg: Any, now: float) -> None:
        """One delivery: skip it if already handled, else note it in the ledger and write it
        (once those before it in its stream's seq order came, see ``writers.seqorder``)."""
        meta = msg.metadata
        stream_seq, consumer_seq = meta.sequence.stream, meta.sequence.consumer
        if consumer_seq != self._next_consumer_seq:
            self._log(
                f"delivery {consumer_seq} after {self._next_consumer_seq - 1}: deliveries lost "
                "in transit; resuming from the acknowledged position"
            )
            self._resync = True
            return
        self._next_consumer_seq = consumer_seq + 1
        if self.ledger.seen(stream_seq, msg.reply):
            self.counters["redeliveries_skipped"] += 1
            return
        self.counters["deliveries"] += 1
        try:
            host, topic = fleet.parse_subject(msg.subject)
        except fleet.BadSubject:
            self.counters["other_subjects"] += 1
            self.ledger.delivered(Delivery(stream_seq, "", None, 0, msg.reply))
            return
        if not topic.startswith(self.topics):
            self.counters["other_subjects"] += 1
            self.ledger.delivered(Delivery(stream_seq, host, None, 0, msg.reply))
            return
        sink = self._sink(host)
        try:
            frames = fleet.frames(topic, msg.headers, msg.data)
            env = msgpack.unpackb(frames[1])
            epoch, seq = env["epoch"], env["seq"]
            if type(epoch) is not int or type(seq) is not int:
                raise ValueError("epoch and seq must be integers")
        except Exception as exc:  # anything the bus decoder would refuse: counted there
            self.ledger.delivered(Delivery(stream_seq, host, None, 0, msg.reply))
            sink.subscriber.malformed(f"{msg.subject}: {exc.__class__.__name__}: {exc}")
            return
        self.ledger.delivered(
            Delivery(stream_seq, host, f"{epoch}:{topic.decode()}", seq, msg.reply)
        )
        for host_, frames_ in self._order.offer((host, epoch, topic), seq, (host, frames), now):
            self.sinks[host_].subscriber.process(frames_)

    def _expected(self, key: tuple[str, int, bytes]) -> int | None:
        sink = self.sinks.get(key[0])
        return None if sink is None else sink.subscriber.expected(key[1], key[2])

    def _held(self, host: str) -> dict[str, int]:
        floors = self.sinks[host].writer.unindexed()
        for stream, seq in self._order.floors(host).items():
            floors[stream] = min(seq, floors.get(stream, seq))
        return floors

    async def _ack(self) -> None:
        """Acknowledge the durable front (its position saved first, per host)."""
        if len(self.ledger) > MAX_ACK_PENDING // 2:
            for sink in self.sinks.values():
                sink.writer.make_durable()
        before = {h: dict(k) for h, k in self.ledger.acked.items()}
        last = self.ledger.advance(self._held)
        if last is None:
            return
        for host, keys in self.ledger.acked.items():
            if keys != before.get(host) and host in self.sinks:
                self.sinks[host].save_acked(keys)
        with contextlib.suppress(Exception):
            await self._nc.publish(last.reply, b"+ACK")
            self.counters["acks"] += 1

    # -- the consumer --------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """(Re)create the durable consumer from its acknowledged floor and bind to it."""
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        self._resync = False
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
            self._psub = None
        floor = 0
        try:
            info = await self._js.consumer_info(self.config.stream, self.durable)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            await self._js.delete_consumer(self.config.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        floor = max(floor, 0)
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_ACK_PENDING,
            filter_subject=self.filter,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if floor else DeliverPolicy.ALL,
            opt_start_seq=floor + 1 if floor else None,
        )
        await self._js.add_consumer(self.config.stream, config=config)
        self._psub = await self._js.pull_subscribe_bind(self.durable, stream=self.config.stream)
        self._next_consumer_seq = 1
        self.counters["resyncs"] += 1
        self._log(
            f"consuming {self.filter} from stream {self.config.stream} as {self.durable}, "
            f"after stream seq {floor}"
        )

    async def run(self, stop: asyncio.Event) -> int:
        async def reconnected() -> None:
            self._resync = True
            self._log("NATS reconnected")

        async def disconnected() -> None:
            self._log("NATS disconnected; waiting")

        while not stop.is_set() and self._nc is None:
            try:
                self._nc = await connect(
                    self.config.nats,
                    f"tracecap-writer-{self.config.kind}",
                    on_disconnect=disconnected,
                    on_reconnect=reconnected,
                    log=self._log,
                )
            except Exception as exc:
                self._log(f"NATS not reachable ({exc.__class__.__name__}: {exc}); retrying")
                await _sleep(stop, 1.0)
        if self._nc is None:
            return 0
        self._js = self._nc.jetstream()
        next_house = 0.0
        try:
            while not stop.is_set():
                if self._resync:
                    try:
                        await self._subscribe()
                    except Exception as exc:
                        self._resync = True
                        self._log(f"consumer not ready ({exc.__class__.__name__}: {exc})")
                        await _sleep(stop, 1.0)
                        continue
                try:
                    msgs = await self._psub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
                except TimeoutError:
                    msgs = []
                except Exception as exc:
                    self._log(f"fetch failed ({exc.__class__.__name__}: {exc})")
                    await _sleep(stop, 0.5)
                    msgs = []
                now = time.monotonic()
                for msg in msgs:
                    if self._resync:
                        break
                    self.handle(msg, now)
                for host, frames in self._order.release(now):
                    self.sinks[host].subscriber.process(frames)
                if now >= next_house or not msgs:
                    next_house = now + HOUSEKEEPING_S
                    for sink in self.sinks.values():
                        sink.subscriber.housekeeping(now)
                    await self._ack()
        finally:
            await self._finish()
        return 0

    async def _finish(self) -> None:
        """Flush every host's writer, acknowledge what their index lines now cover, close."""
        for host, frames in self._order.release(0.0, force=True):
            self.sinks[host].subscriber.process(frames)
        for sink in self.sinks.values():
            try:
                sink.finish()
            except Exception as exc:
                self._log(f"host {sink.host}: flush failed: {exc}")
        try:
            await self._ack()
            await asyncio.wait_for(self._nc.flush(), 2.0)
        except Exception as exc:
            self._log(f"last acknowledgement not sent ({exc}): redelivered at the next start")
        for sink in self.sinks.values():
            sink.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.close(), 2.0)
        counters = "; ".join(f"{k} {v}" for k, v in self.counters.items())
        self._log(f"{counters}; hosts {sorted(self.sinks)}")


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_nats_writer(
    config: NatsWriterConfig,
    stop: threading.Event | None = None,
    drop_to: str | None = "tracecap",
    log: Log = _stderr,
) -> int:
    """Drop root, then consume until SIGTERM/SIGINT (or ``stop``)."""
    if drop_to is not None:
        drop_privileges(drop_to)

    return run_until_signalled(lambda done: NatsSource(config, log=log).run(done), stop)
