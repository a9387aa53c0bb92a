"""`tracecap exporter`: /metrics and /healthz over HTTP, for Prometheus and health probes.

Unprivileged, supervised like the writers (``--server metrics``/``healthz`` in the options;
the static deployment has an ``exporter`` program). It subscribes to ``stats.`` on the bus and
reads the writers' stats files in ``<run-dir>/stats`` (tracecap/stats.py: bounded reads that
never follow a link) and each process's resident memory in /proc, once a second and whenever a
``stats.`` message arrives; tracecap/tools/metrics.py turns that into metric samples and the
health verdict, which prometheus-client renders. A scrape reads nothing: it renders the last
observation, with ages counted to the moment of the request.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import zmq
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from tracecap import bus, kinds
from tracecap.link import BusLink
from tracecap.options import Config, Server
from tracecap.privileges import drop_privileges
from tracecap.stats import read_writer_stats
from tracecap.tools import metrics
from tracecap.tools.metrics import Observation, Tracker

#: How long one bus poll waits; bounds the refresh period and the reaction to a stop.
POLL_MS = 250
REFRESH_S = 1.0
#: ``stats.`` messages are small and one a second: a short queue.
STATS_QUEUE = 100
#: The process name every tracecap process's command line carries (the console script): a pid
#: from a stats file whose process does not is another process that reused the pid.
OWN_NAME = b"tracecap"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def resident_bytes(pid: int, proc: str = "/proc") -> int | None:
    """The process's resident memory, or None if no tracecap process has that pid (gone, or
    the pid reused by another program). /proc/PID/cmdline and statm are readable by every
    user, so the unprivileged exporter sees the collector's too."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            if OWN_NAME not in f.read(4096):
                return None
        with open(f"{proc}/{pid}/statm", "rb") as f:
            return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def served_paths(server: Server) -> list[str]:
    return [path for path, on in (("/metrics", server.metrics), ("/healthz", server.healthz)) if on]


def process_pids(
    collector: Mapping[str, Any] | None, writers: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """The pid of each program, as its own report names it (and ours)."""
    pids = {"exporter": os.getpid()}
    if collector is not None and type(collector.get("pid")) is int:
        pids["collector"] = collector["pid"]
    for program, stats in writers.items():
        if type(stats.get("pid")) is int:
            pids[program] = stats["pid"]
    return pids


class Exporter:
    """The observation the HTTP threads render, refreshed by the bus loop (under a lock)."""

    def __init__(
        self,
        config: Config,
        run_dir: str,
        *,
        clock: Callable[[], int] = time.time_ns,
        rss: Callable[[int], int | None] = resident_bytes,
    ) -> None:
        self.server = config.server
        self.stats_dir = os.path.join(run_dir, "stats")
        self._clock = clock
        self._rss = rss
        expected = [kind.program for kind in kinds.enabled(config.kinds())]
        self._tracker = Tracker(expected, [t.decode() for t in config.topics()])
        self._lock = threading.Lock()
        self._observation = self._tracker.observation({}, {}, clock())
        self.malformed = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self.observation))
        self._metrics_app = make_wsgi_app(self.registry)

    def on_frames(self, frames: list[bytes]) -> bool:
        """One bus message; True if it was a ``stats.`` message."""
        try:
            msg = bus.decode(frames)
        except bus.BadMessage as exc:
            self.malformed += 1
            print(f"tracecap exporter: dropped a malformed message: {exc}", file=sys.stderr)
            return False
        if msg.topic != bus.TOPIC_STATS:
            return False
        with self._lock:
            self._tracker.on_stats(msg.env, self._clock())
        return True

    def refresh(self) -> None:
        """Read the writers' stats files and the processes' memory, and observe."""
        writers = read_writer_stats(self.stats_dir)
        now = self._clock()
        with self._lock:
            collector = self._tracker.collector
        rss = {
            program: size
            for program, pid in process_pids(collector, writers).items()
            if (size := self._rss(pid)) is not None
        }
        with self._lock:
            self._tracker.on_writers(writers, now)
            self._observation = self._tracker.observation(writers, rss, now)

    def observation(self) -> Observation:
        """The last observation, aged to now."""
        with self._lock:
            current = self._observation
        now = self._clock()
        return dataclasses.replace(current, now_ns=max(now, current.now_ns))

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application: /metrics (prometheus-client's, which negotiates the format
        and compression) and /healthz, each only when ``--server`` turned it on."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and self.server.metrics:
            return self._metrics_app(environ, start_response)
        if path == "/healthz" and self.server.healthz:
            verdict = metrics.health(self.observation())
            return _text(start_response, verdict.status, verdict.body())
        served = ", ".join(served_paths(self.server))
        return _text(start_response, 404, f"not found; tracecap serves {served}\n")


_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def _text(start_response: Callable[..., Any], status: int, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        f"{status} {_REASONS[status]}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


class _Families:
    """A prometheus-client collector: the metric families of the last observation."""

    def __init__(self, observe: Callable[[], Observation]) -> None:
        self._observe = observe

    def collect(self) -> Iterator[Metric]:
        by_metric: dict[metrics.Metric, list[metrics.Sample]] = {m: [] for m in metrics.METRICS}
        for sample in metrics.samples(self._observe()):
            by_metric[sample.metric].append(sample)
        for metric, values in by_metric.items():
            family_type = CounterMetricFamily if metric.type == "counter" else GaugeMetricFamily
            family = family_type(metric.name, metric.help, labels=metric.labels)
            for sample in values:
                family.add_metric(sample.labels, sample.value)
            yield family


class _QuietHandler(WSGIRequestHandler):
    """No line per request: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def listen(server: Server, app: WsgiApp) -> ThreadingWSGIServer:
    """The HTTP server on ``server.host:port`` (an empty host: every interface, IPv6 and
    IPv4 where the host has IPv6, as Tracee's ``:PORT``); OSError if it cannot listen."""
    infos = socket.getaddrinfo(
        server.host or None, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not server.host:
        infos.sort(key=lambda info: info[0] != socket.AF_INET6)
    family, *_, sockaddr = infos[0]
    server_class = type("ExporterServer", (ThreadingWSGIServer,), {"address_family": family})
    return make_server(sockaddr[0], server.port, app, server_class, _QuietHandler)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    return stop


def run_exporter(config: Config, run_dir: str, stop: threading.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); 1 if the address cannot be listened on."""
    drop_privileges()
    stop = stop or _stop_on_signals()
    exporter = Exporter(config, run_dir)
    where = f"{config.server.host}:{config.server.port}"
    try:
        httpd = listen(config.server, exporter.app)
    except OSError as exc:
        print(f"tracecap exporter: error: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    paths = ", ".join(served_paths(config.server))
    shown = f"[{host}]" if ":" in host else host
    print(
        f"tracecap exporter: serving {paths} on http://{shown}:{port}", file=sys.stderr, flush=True
    )
    context = zmq.Context()
    link = BusLink(context, f"ipc://{run_dir}/bus.sock", (bus.TOPIC_STATS,), rcvhwm=STATS_QUEUE)
    next_refresh = 0.0
    try:
        while not stop.is_set():
            arrived = False
            if link.poll(POLL_MS):
                while (frames := link.recv()) is not None:
                    arrived |= exporter.on_frames(frames)
            now = time.monotonic()
            link.check(now)
            if arrived or now >= next_refresh:
                exporter.refresh()
                next_refresh = now + REFRESH_S
    finally:
        httpd.shutdown()
        httpd.server_close()
        link.close()
        context.term()
    return 0
