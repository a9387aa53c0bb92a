"""The subscriber loop every writer kind shares.

A writer kind only says which topics it wants and what to do with one decoded message; this
module owns everything that must be identical across kinds: socket options that bound memory,
defensive decoding (no input may crash a writer), gap accounting from ``seq``, periodic
housekeeping, and publishing counters for ``tracecap status``.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Callable

import zmq

from tracecap import bus
from tracecap.keys import CurveClient
from tracecap.link import RCVHWM, BusLink
from tracecap.stats import StatsFile
from writers.budget import DiskBudget
from writers.gaps import Gap, GapTracker
from writers.index import Index
from writers.ratelog import RateLimitedLog

#: How long one poll waits; bounds both shutdown latency and the housekeeping period.
POLL_MS = 200
#: Messages handled between housekeeping passes when the bus is busy, so idle flushes and stats
#: still happen under a flood.
MAX_BATCH = 1000
#: On stop, what is already queued is still written: until the bus is quiet this long, or at
#: most DRAIN_LIMIT_S (supervisord's stopwaitsecs is 30).
DRAIN_QUIET_MS = 300
DRAIN_LIMIT_S = 20.0
STATS_INTERVAL = 1.0

StopFlag = threading.Event | Callable[[], bool]


#: Queue depth for writers of payload messages (files, objects): 64 messages, of up to 256 KiB
#: (files) or 1 MiB (objects). At 128 the bench measures no gain and 22 MiB more writer
#: memory.
PAYLOAD_QUEUE_MESSAGES = 64


class Writer(abc.ABC):
    """One artifact kind. Subclasses set ``name`` and ``topics`` and implement ``handle``.

    ``counters`` holds kind-specific counters; they are published next to the subscriber's.
    Methods are called from the subscriber's thread only, so no locking is needed.
    """

    name: str = "writer"
    topics: tuple[bytes, ...] = ()
    #: Messages this writer's bus connection queues (link.RCVHWM by default). Writers of
    #: payloads set it low: their messages are up to 256 KiB, and what does not fit waits
    #: on the collector's side, bounded in bytes there (100,000 let a file writer hold 170 MB).
    queue_messages: int = RCVHWM

    def __init__(self, budget: DiskBudget | None = None) -> None:
        self.counters: dict[str, int] = {}
        self._budget = budget
        if budget is not None:
            budget.bind_counters(self.counters)

    @abc.abstractmethod
    def handle(self, msg: bus.Message) -> None:
        """Persist one valid message. Exceptions are counted by the subscriber, not fatal."""

    def tick(self, now: float) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Housekeeping at least every ``POLL_MS`` (``now`` is ``time.monotonic``)."""

    def unwritten(self) -> dict[str, int]:
        """The lowest ``seq`` per ``"epoch:topic"`` (GapTracker's keys) of messages this writer
        received but holds only in memory (none by default). The stats file's ``last_seq``
        stops short of them, so that if this process dies they count in the restarted
        writer's gap instead of vanishing."""
        return {}

    def unindexed(self) -> dict[str, int]:
        """Like ``unwritten``, for the messages whose artifact has no index line yet: a remote
        writer acknowledges a JetStream delivery only below these (``writers.acks``), so that
        a restart gets again everything an index line does not describe. By default what
        ``unwritten`` says (the writer's index lines follow its data at once)."""
        return self.unwritten()

    def make_durable(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Write the index lines of everything held (``unindexed`` empties): a remote writer
        asks when its unacknowledged deliveries approach the consumer's bound."""

    def on_gap(self, gap: Gap) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Messages of ``gap.topic`` never arrived; a writer may mark what they could have hit."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Flush everything; called once when the loop ends."""


def _stop_predicate(stop: StopFlag) -> Callable[[], bool]:
    if isinstance(stop, threading.Event):
        return stop.is_set
    return stop


class Subscriber:
    """Feeds one writer from a SUB socket until told to stop; survives any input."""

    def __init__(
        self,
        writer: Writer,
        endpoint: str,
        *,
        index: Index | None = None,
        stats_dir: str | None = None,
        name: str | None = None,
        context: zmq.Context | None = None,
        log: RateLimitedLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        curve: CurveClient | None = None,
        wake_fd: int | None = None,
    ) -> None:
        self.writer = writer
        #: A byte on this fd ends the wait for messages at once (the runner's stop signals).
        self._wake_fd = wake_fd
        #: CURVE client keys for a tcp endpoint (a remote writer fed by `tracecap bridge`).
        self._curve = curve
        self._handshake_failures = 0
        self.endpoint = endpoint
        self.name = name or writer.name
        self._index = index
        self._context = context
        self._log = log or RateLimitedLog(f"tracecap-writer[{self.name}]")
        self._stats: StatsFile | None = None
        if stats_dir:
            try:
                self._stats = StatsFile(stats_dir, self.name)
            except OSError as exc:
                # counters are for `tracecap status`; capture must go on without them
                self._log("stats", f"no counters file in {stats_dir}: {exc}")
        self._clock = clock
        self._gaps = GapTracker()
        #: Counters of this writer's earlier processes (supervisord restarts a killed writer):
        #: the counts shown and summed are for the whole run, not since the last restart.
        self._earlier: dict[str, int] = {}
        previous = self._stats.read() if self._stats is not None else None
        if previous is not None:
            counters = previous.get("counters")
            if isinstance(counters, dict):
                self._earlier = {k: v for k, v in counters.items() if type(v) is int}
            self._gaps.restore(previous.get("last_seq"))
        self._next_stats = 0.0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "bytes",
                "malformed",
                "handler_errors",
                "gap_messages",
                "gaps",
                "seq_regressions",
                "index_errors",
                "stats_errors",
                "reconnects",
            ),
            0,
        )
        #: Set once the socket is connected and subscribed (the connection itself is async).
        self.ready = threading.Event()

    # -- one message -------------------------------------------------------------------------

    def process(self, frames: list[bytes]) -> bus.Message | None:
        """Decode, account and dispatch one multipart message; the message, None when it was
        malformed. Never raises."""
        self.counters["bytes"] += sum(map(len, frames))
        try:
            msg = bus.decode(frames)
        except bus.BadMessage as exc:
            self.malformed(str(exc))
            return None
        except Exception as exc:  # a decoder bug must not take the writer down either
            self.malformed(f"decoder failed: {exc.__class__.__name__}: {exc}")
            return None
        self.counters["messages"] += 1
        env = msg.env
        gap = self._gaps.observe(env["epoch"], msg.topic, env["seq"], bus.seq_width(msg.topic, env))
        self.counters["seq_regressions"] = self._gaps.regressions
        if gap is not None:
            self._record_gap(gap)
        try:
            self.writer.handle(msg)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            self._log("handler_error", f"{msg.topic!r}: {exc.__class__.__name__}: {exc}")
        return msg

    def malformed(self, reason: str) -> None:
        """Count and log a message that could not be decoded."""
        self.counters["malformed"] += 1
        self._log("malformed", f"dropped a malformed message: {reason}")

    def _record_gap(self, gap: Gap) -> None:
        self.counters["gap_messages"] += gap.count
        self.counters["gaps"] += 1
        try:
            self.writer.on_gap(gap)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            self._log("handler_error", f"gap: {exc.__class__.__name__}: {exc}")
        self._log(
            "gap",
            f"{gap.count} messages of {gap.topic!r} lost (epoch {gap.epoch}, "
            f"seq {gap.from_seq}..{gap.to_seq})",
        )
        if self._index is None:
            return
        record = {
            "kind": "gap",
            "writer": self.name,
            "topic": gap.topic.decode("ascii", "backslashreplace"),
            "epoch": gap.epoch,
            "from_seq": gap.from_seq,
            "to_seq": gap.to_seq,
            "ts": time.time_ns(),
        }
        self._index.append_or_count(record, self.counters, self._log, "gap record")

    def expected(self, epoch: int, topic: bytes) -> int | None:
        """The next seq of ``(epoch, topic)`` that would be no gap; None before its first."""
        last = self._gaps.last(epoch, topic)
        return None if last is None else last + 1

    def resume(self, last_seq: dict[str, int]) -> None:
        """Count gaps from ``last_seq`` (GapTracker's state): a remote writer's acknowledged
        position, which is where the stream delivers again after a restart."""
        self._gaps = GapTracker()
        self._gaps.restore(last_seq)

    # -- housekeeping ------------------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        """Let the writer flush idle artifacts, and publish counters once a second."""
        try:
            self.writer.tick(now)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            self._log("handler_error", f"tick: {exc.__class__.__name__}: {exc}")
        if now >= self._next_stats:
            self._next_stats = now + STATS_INTERVAL
            self.write_stats()

    def snapshot(self) -> dict[str, object]:
        """Everything ``tracecap status`` shows for this writer."""
        # A name both count (``index_errors``: the writer's lost artifact records, the
        # subscriber's lost gap records) is the sum: one must not overwrite the other.
        counters = dict(self.writer.counters)
        for key, value in self.counters.items():
            counters[key] = counters.get(key, 0) + value
        for key, value in self._earlier.items():
            counters[key] = counters.get(key, 0) + value
        return {
            "name": self.name,
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "topics": [t.decode("ascii", "backslashreplace") for t in self.writer.topics],
            "updated_ns": time.time_ns(),
            "counters": counters,
            "last_seq": self._durable_seqs(),
        }

    def _durable_seqs(self) -> dict[str, int]:
        """The gap tracker's last seq per stream, held back before what the writer has not
        persisted yet."""
        state = self._gaps.state()
        for key, seq in self.writer.unwritten().items():
            if key in state:
                state[key] = min(state[key], seq - 1)
        return state

    def write_stats(self) -> None:
        if self._stats is None:
            return
        try:
            self._stats.write(self.snapshot())
        except OSError as exc:
            self.counters["stats_errors"] += 1
            self._log("stats_error", f"stats not written: {exc}")

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> None:
        """Receive until ``stop`` is set, then close the writer (flushing it) and the socket.

        The socket is created here so it lives and dies in the thread that uses it (zmq sockets
        are not thread-safe).
        """
        stopped = _stop_predicate(stop)
        context = self._context or zmq.Context()
        link = BusLink(
            context,
            self.endpoint,
            self.writer.topics,
            curve=self._curve,
            rcvhwm=self.writer.queue_messages,
            wake_fd=self._wake_fd,
        )
        self.ready.set()
        try:
            while not stopped():
                try:
                    if link.poll(POLL_MS):
                        self._drain(link)
                    now = self._clock()
                    if link.check(now):
                        self.counters["reconnects"] += 1
                        self._log("reconnect", f"link to {self.endpoint} was dead; reconnected")
                    self._report_handshakes(link)
                except zmq.ContextTerminated:
                    break
                self.housekeeping(now)
            self._drain_before_stop(link)
        finally:
            try:
                self.writer.close()
            except Exception as exc:
                self.counters["handler_errors"] += 1
                self._log("handler_error", f"close: {exc.__class__.__name__}: {exc}")
            self.write_stats()
            link.close()
            if self._context is None:
                context.term()
            if self._stats is not None:
                self._stats.close()

    def _drain_before_stop(self, link: BusLink) -> None:
        """Write what the collector already sent: supervisord stops the collector first, so a
        writer that is behind under load still has that data queued, and dropping it at the
        stop would lose it with no record. Until the bus is quiet for DRAIN_QUIET_MS; or, once
        the publisher's end is closed (the collector exits only after its subscribers read
        their sockets empty), as soon as what is queued is written: nothing more can come."""
        deadline = time.monotonic() + DRAIN_LIMIT_S
        try:
            while time.monotonic() < deadline:
                gone = link.disconnected(self._clock())
                if not link.poll(0 if gone else DRAIN_QUIET_MS):
                    if gone or not link.disconnected(self._clock()):
                        return
                    continue  # woken by the disconnect: what is queued, then stop
                self._drain(link)
                self.housekeeping(self._clock())
        except zmq.ContextTerminated:
            return

    def _report_handshakes(self, link: BusLink) -> None:
        """Say why nothing arrives when the bridge refuses us (retried by libzmq or the link)."""
        if link.handshake_failures != self._handshake_failures:
            self._handshake_failures = link.handshake_failures
            self._log(
                "handshake",
                f"{self.endpoint} refused our handshake ({link.handshake_failures} times): "
                "is our public key in the bridge's --allow directory, and --server-key its key?",
            )

    def _drain(self, link: BusLink) -> None:
        for _ in range(MAX_BATCH):
            frames = link.recv()
            if frames is None:
                return
            self.process(frames)
