"""`tracecap bridge`: the local bus, relayed to remote writers over tcp, CURVE and an allow-list.

The collector never listens on the network (README "Remote writers"); this unprivileged process
does, so that a flaw in the network-facing code runs as the ``tracecap`` user, not root.

* Upstream, an XSUB connects to the collector's ipc XPUB; downstream, an XPUB binds on tcp. The
  XPUB is verbose for subscribes *and* unsubscribes (XPUB_VERBOSER), so every remote
  subscription change reaches the collector and XSUB's reference counts stay balanced.
* CURVE alone encrypts and authenticates the *server*; without a ZAP handler libzmq accepts any
  client key. Clients are authorised by a ZAP handler (pyzmq's ThreadAuthenticator) started on
  the same context *before* the bind, reading the ``*.key`` files of the ``--allow`` directory.
  The socket sets a ZAP domain and ZAP_ENFORCE_DOMAIN, so if the handler ever went away libzmq
  would refuse everyone instead of falling back to "accept any key"; the loop also stops if it
  dies.
* The relay is a poll loop rather than ``zmq.proxy`` so that it can count, log subscription
  changes, bound what each remote peer may cost, watch the authenticator, and reload the
  allow-list on SIGHUP (pyzmq re-reads it only when asked).
* Each remote connection is bounded as the collector bounds its local subscribers
  (``tracecap.subscribers``, per CURVE key where the collector counts per uid): its prefixes,
  their size and rate, its connections per key, and a peer that reads nothing for
  REMOTE_STALL_MAX_NS is disconnected (it reconnects by itself and sees a seq gap). Upstream
  the bridge holds one subscription per prefix that can match a topic while any remote peer
  holds it, and nothing else: the collector sees one well-behaved subscriber whatever the
  remote peers send, so one of them cannot get the bridge disconnected and starve the others.
* Refusals are logged with the peer's address: for a CURVE client with an unknown key that comes
  from the ZAP request. A client that does not speak CURVE never reaches ZAP; libzmq reports that
  on the monitor socket with the *listening* endpoint only (the peer's address is in the draft
  monitor API, not in this libzmq), so those lines name the endpoint and the reason.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from tracecap import keys
from tracecap.link import MAX_FRAME_BYTES
from tracecap.privileges import drop_privileges
from tracecap.stderr_log import Log, stderr_log
from tracecap.subscribers import Subscribers, TcpSocketOps, frame_origin

ZAP_DOMAIN = "tracecap"
#: Per remote subscriber; like the collector's, so a writer over tcp sees the same drop point.
SEND_HWM = 200_000
RECV_HWM = 100_000
#: What a remote peer may send us: subscription frames. Topics are short; anything bigger is a
#: hostile or broken peer and libzmq drops its connection before allocating.
MAX_INBOUND_BYTES = 1024
HEARTBEAT_IVL_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 10_000
HEARTBEAT_TTL_MS = 10_000
POLL_MS = 200
LOG_INTERVAL_S = 1.0
#: Messages relayed between checks of the stop flag, the monitor and the authenticator.
MAX_BATCH = 1000
#: A remote peer whose connection stays unwritable this long is disconnected: what libzmq
#: queues for it meanwhile (up to SEND_HWM messages) is the bridge's memory. Longer than a
#: local subscriber's second: a wide-area link may stall for a few seconds and recover.
REMOTE_STALL_MAX_NS = 5_000_000_000

_MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

_stderr = stderr_log("tracecap bridge")


@dataclass
class BridgeConfig:
    """What the console script passes from ``tracecap bridge``'s flags: the tcp endpoint to bind
    (``--listen``), the server's secret key file, the allow-list directory of client public keys,
    and the local bus to relay (``ipc://<run-dir>/bus.sock``)."""

    listen: str
    server_key: str
    allow_dir: str
    upstream: str


@dataclass
class BridgeCounters:
    """What the bridge relayed and refused, logged as one summary line at exit. The refusal
    counters are also updated from the authenticator's thread, so they change under ``lock``."""

    messages: int = 0
    bytes: int = 0
    subscriptions: int = 0
    unsubscriptions: int = 0
    dropped_inbound: int = 0
    #: Clients that spoke CURVE with a key not on the allow-list (ZAP said no).
    refused_keys: int = 0
    #: Handshakes that failed below ZAP: no CURVE, wrong server key, garbage.
    refused_handshakes: int = 0
    handshakes: int = 0
    #: Remote peers disconnected for going past a bound, by reason (Subscribers.dropped).
    peers_dropped: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.peers_dropped.items()))
        return (
            f"relayed {self.messages} messages ({self.bytes} bytes), "
            f"{self.subscriptions} subscriptions, {self.unsubscriptions} unsubscriptions, "
            f"{self.handshakes} accepted handshakes, {self.refused_keys} refused keys, "
            f"{self.refused_handshakes} refused handshakes, "
            f"{self.dropped_inbound} dropped inbound messages, "
            f"remote peers disconnected: {dropped or 'none'}"
        )


class AllowListAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, plus a report of every refused CURVE key with the peer's address.

    The address is only in the ZAP request, so it is noted there and reported when the CURVE
    check (which pyzmq does with the key alone) says no. Both run in the authenticator's thread,
    one request at a time.
    """

    def __init__(self, context: zmq.Context, on_refusal: Callable[[str, str, str], None]) -> None:
        super().__init__(context)
        self._on_refusal = on_refusal
        self._address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode("ascii") if len(client_key) == 32 else "?"
            self._on_refusal(self._address, key, reason.decode("utf-8", "replace"))
        return allowed, reason


class Bridge:
    """The relay. Build it, then ``run(stop)`` in the thread that built it (sockets are not
    thread-safe); ``endpoint`` is the bound tcp address (useful with port 0)."""

    def __init__(self, config: BridgeConfig, log: Log = _stderr) -> None:
        self.config = config
        self.counters = BridgeCounters()
        self._log = log
        self._log_lock = threading.Lock()
        self._last_said: dict[str, float] = {}
        self._held: dict[str, int] = {}
        server_public, server_secret = keys.load_secret(config.server_key)
        self._allowed = keys.allow_list(config.allow_dir)
        if not self._allowed:
            log(f"no *.key files in {config.allow_dir}: every client will be refused")
        self._ctx = zmq.Context()
        self._auth: AllowListAuthenticator | None = None
        self._peers = Subscribers(TcpSocketOps(), stall_max_ns=REMOTE_STALL_MAX_NS)
        #: What the bridge subscribes to upstream: the prefixes some remote peer holds.
        self._upstream: set[bytes] = set()
        try:
            self._auth = AllowListAuthenticator(self._ctx, self._refused_key)
            self._auth.start()
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=config.allow_dir)
            self._xsub = self._ctx.socket(zmq.XSUB)
            self._xsub.setsockopt(zmq.LINGER, 0)
            self._xsub.setsockopt(zmq.RCVHWM, RECV_HWM)
            self._xsub.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            self._xsub.connect(config.upstream)
            self._xpub = self._ctx.socket(zmq.XPUB)
            self._xpub.setsockopt(zmq.LINGER, 0)
            self._xpub.setsockopt(zmq.SNDHWM, SEND_HWM)
            self._xpub.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
            self._xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            self._xpub.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            self._xpub.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._xpub.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
            self._xpub.setsockopt(zmq.TCP_KEEPALIVE, 1)
            self._xpub.curve_secretkey = server_secret
            self._xpub.curve_publickey = server_public
            self._xpub.curve_server = True  # must precede bind
            self._xpub.zap_domain = ZAP_DOMAIN.encode()
            self._xpub.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            self._monitor = self._xpub.get_monitor_socket(_MONITOR_EVENTS)
            self._xpub.bind(config.listen)
        except BaseException:
            self._shutdown()
            raise
        self.endpoint: str = self._xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._reload = threading.Event()

    # -- reports from the authenticator's thread and the monitor ---------------------------

    def _say(self, key: str, line: str) -> None:
        """Log ``line`` unless ``key`` logged within a second: a refused client retries every
        100 ms, and a flood of identical lines would bury everything else. Counters count all."""
        with self._log_lock:
            now = time.monotonic()
            if now - self._last_said.get(key, -LOG_INTERVAL_S) < LOG_INTERVAL_S:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last_said[key] = now
            held = self._held.pop(key, 0)
        self._log(line + (f" ({held} similar suppressed)" if held else ""))

    def _refused_key(self, address: str, key: str, reason: str) -> None:
        with self.counters.lock:
            self.counters.refused_keys += 1
        self._say(
            f"refused:{address}",
            f"refused client key {key} from {address}: {reason} (not in {self.config.allow_dir})",
        )

    def _monitor_event(self, event: dict[str, Any]) -> None:
        kind, value = event["event"], event["value"]
        where = event["endpoint"].decode("utf-8", "replace")
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.counters.handshakes += 1
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            with self.counters.lock:
                self.counters.refused_handshakes += 1
            if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                reason = _protocol_reason(value)
            else:
                reason = f"connection lost during the handshake ({os.strerror(value)})"
            self._say(
                f"handshake:{reason}",
                f"refused a handshake on {where} (peer address not reported by libzmq): {reason}",
            )
        # EVENT_HANDSHAKE_FAILED_AUTH: already reported, with the address, by the authenticator

    def request_reload(self) -> None:
        """Re-read the allow-list at the next loop pass (revoking = delete the .key, reload)."""
        self._reload.set()

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Relay until ``stop``; 0 on a clean stop, 1 if the authenticator died under us."""
        poller = zmq.Poller()
        poller.register(self._xsub, zmq.POLLIN)
        poller.register(self._xpub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        self._log(
            f"relaying {self.config.upstream} to {self.endpoint} for "
            f"{len(self._allowed)} allowed keys in {self.config.allow_dir}"
        )
        status = 0
        try:
            while not stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                if self._xsub in ready:
                    self._relay_down()
                if self._xpub in ready:
                    self._take_subscriptions()
                self._peers.sample(time.monotonic_ns(), payloads_piling_up=False)
                self._sync_upstream()
                if self._monitor in ready:
                    while self._monitor.poll(0):
                        self._monitor_event(recv_monitor_message(self._monitor))
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_allow_list()
                if self._auth is None or not self._auth.is_alive():
                    self._log("the ZAP authenticator stopped; refusing to go on without it")
                    status = 1
                    break
        except zmq.ContextTerminated:
            pass
        finally:
            self._shutdown()
            self._log(self.counters.summary())
        return status

    def _relay_down(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = self._xsub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._xpub.send_multipart(frames, copy=False)
            self.counters.messages += 1
            self.counters.bytes += sum(len(f) for f in frames)

    def _take_subscriptions(self) -> None:
        """Remote (un)subscriptions, each with its connection's metadata, into the table that
        bounds them; anything else a peer sends is dropped, and the peer with it."""
        now = time.monotonic_ns()
        for _ in range(MAX_BATCH):
            try:
                frame = self._xpub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            data = frame.bytes
            if frame.more:  # a message, not a subscription: drop all of it
                self.counters.dropped_inbound += 1
                while self._xpub.getsockopt(zmq.RCVMORE):
                    self._xpub.recv(zmq.NOBLOCK)
            elif data[:1] == b"\x01":
                self.counters.subscriptions += 1
                topic = data[1:].decode("ascii", "backslashreplace")
                self._say(f"sub:{topic}", f"remote subscription +{topic!r}")
            elif data[:1] == b"\x00":
                self.counters.unsubscriptions += 1
            else:
                self.counters.dropped_inbound += 1
            fd, claim = frame_origin(frame)
            self._peers.on_frame(data, fd, claim, now)

    def _sync_upstream(self) -> None:
        """Subscribe upstream to each prefix some remote peer holds, once, and unsubscribe when
        the last one lets it go (a peer that left or was disconnected lets go of all)."""
        wanted = set(self._peers.counts)
        for prefix in sorted(wanted - self._upstream):
            self._xsub.send(b"\x01" + prefix)
        for prefix in sorted(self._upstream - wanted):
            self._xsub.send(b"\x00" + prefix)
        self._upstream = wanted
        self.counters.peers_dropped = dict(self._peers.dropped)

    def _reload_allow_list(self) -> None:
        try:
            self._allowed = keys.allow_list(self.config.allow_dir)
        except keys.KeyFileError as exc:
            self._log(f"allow-list not reloaded, keeping the previous one: {exc}")
            return
        assert self._auth is not None
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=self.config.allow_dir)
        self._log(f"allow-list reloaded: {len(self._allowed)} keys")

    def _shutdown(self) -> None:
        for name in ("_monitor", "_xpub", "_xsub"):
            sock = getattr(self, name, None)
            if sock is not None and not sock.closed:
                if name == "_xpub":
                    sock.disable_monitor()
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()


def _protocol_reason(value: int) -> str:
    reasons = {
        zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "mechanism mismatch (the client does not use "
        "CURVE)",
        zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error (wrong server key?)",
    }
    if value in reasons:
        return reasons[value]
    try:
        return zmq.Event(value).name or f"error {value:#x}"
    except ValueError:
        return f"error {value:#x}"


def run_bridge(
    config: BridgeConfig,
    stop: threading.Event | None = None,
    drop_to: str | None = "tracecap",
    log: Log = _stderr,
) -> int:
    """Drop root first (the bridge parses what the network sends), then relay until a signal.

    SIGTERM/SIGINT set ``stop``; SIGHUP reloads the allow-list.
    """
    if drop_to is not None:
        drop_privileges(drop_to)
    stop = stop or threading.Event()
    bridge = Bridge(config, log=log)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda _s, _f: stop.set())
        previous[signal.SIGHUP] = signal.signal(
            signal.SIGHUP, lambda _s, _f: bridge.request_reload()
        )
    try:
        return bridge.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
