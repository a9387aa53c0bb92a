"""What the exporter serves, decided from what it observed alone (pure).

The metric set is declared once (``METRICS``: name, type, help, labels). ``samples`` maps one
``Observation`` -- the collector's last ``stats.`` message, the writers' stats files, each
writer's recent lag and restarts, every process's resident memory -- to values of those
metrics, through three tables (kernel, collector and writer counters); ``health`` decides
/healthz from the same observation. ``Tracker`` is the memory between observations (recent
collector stats for the lag, each writer's last pid for its restarts). The exporter
(tracecap/tools/exporter.py) does the I/O and renders the samples with prometheus-client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

#: The collector publishes ``stats.`` every second; silent this long, it is not attached.
COLLECTOR_STALE_S = 5.0
#: A writer rewrites its stats file every second (at least every 1000 messages under a
#: flood); not rewritten for this long, it is stopped or stuck.
WRITER_STALE_S = 10.0
#: A writer is falling behind when its lag grew at each of this many samples (one a second)...
LAG_SAMPLES = 5
#: ... by this many messages in all: growth the sampling cannot produce by itself (a stats
#: file and a ``stats.`` message are up to a second apart, which the interpolation in
#: ``writer_lag`` evens out only for a steady publishing rate).
LAG_MIN_GROWTH = 1000
#: Collector ``stats.`` messages kept to interpolate what was published when a writer wrote
#: its stats file (a file older than the oldest kept gives no lag).
STATS_HISTORY = 16
#: Label value of a loss the collector counts for every kind together.
ALL_KINDS = "all"

MetricType = Literal["counter", "gauge"]


@dataclass(frozen=True)
class Metric:
    """One metric family as Prometheus sees it; counters end with ``_total``."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


UP = Metric(
    "tracecap_up",
    "gauge",
    "1 while the collector is attached and publishing its counters (state ready, within the "
    f"last {COLLECTOR_STALE_S:.0f} s), else 0.",
)
EVENTS = Metric(
    "tracecap_events_total",
    "counter",
    "Events the kernel side captured, per capture kind (write, read, exec, mem, module, bpf, net).",
    ("kind",),
)
CAPTURED_BYTES = Metric(
    "tracecap_captured_bytes_total",
    "counter",
    "Bytes the kernel side captured (file contents, images, packets), per capture kind.",
    ("kind",),
)
DROPS = Metric(
    "tracecap_drops_total",
    "counter",
    "Losses per kind and cause: kernel ring records (kernel_ring), syscalls whose entry did not "
    "fit (syscall_table), loss spans not recorded (drop_table), bus messages (decode_error, "
    "bus_backlog, bus_gap, malformed), refused writes (budget), errors (write_error, "
    "index_error, events_error, handler_error).",
    ("kind", "cause"),
)
DROPPED_BYTES = Metric(
    "tracecap_dropped_bytes_total",
    "counter",
    "Bytes lost per kind and cause (kernel_ring, bus_backlog, budget).",
    ("kind", "cause"),
)
ARTIFACTS = Metric(
    "tracecap_artifacts_total",
    "counter",
    "Artifacts written, per writer kind (file, exec, mem, module, bpf, pcap).",
    ("kind",),
)
BUS_MESSAGES = Metric(
    "tracecap_bus_messages_total",
    "counter",
    "Bus messages published (program collector) or received (a writer).",
    ("program",),
)
BUS_BYTES = Metric(
    "tracecap_bus_bytes_total",
    "counter",
    "Bytes of bus messages published (program collector) or received (a writer).",
    ("program",),
)
BUS_BACKLOG = Metric(
    "tracecap_bus_backlog_bytes",
    "gauge",
    "Data messages the collector may still hold for subscribers that are behind (an upper "
    "bound; past 16 MiB they are dropped, cause bus_backlog).",
)
BUS_SUBSCRIPTIONS = Metric(
    "tracecap_bus_subscriptions",
    "gauge",
    "Subscriptions the collector holds, per topic prefix.",
    ("topic",),
)
BUS_PEERS_DROPPED = Metric(
    "tracecap_bus_peers_dropped_total",
    "counter",
    "Bus subscribers disconnected for passing their bounds, per reason.",
    ("reason",),
)
WRITER_RESTARTS = Metric(
    "tracecap_writer_restarts_total",
    "counter",
    "Times a writer process was replaced (a new pid in its stats file) since this exporter "
    "started.",
    ("program",),
)
WRITER_LAG = Metric(
    "tracecap_writer_lag_messages",
    "gauge",
    "Messages published on a writer's topics that it had not received when it last wrote its "
    "stats file.",
    ("program",),
)
RESIDENT_MEMORY = Metric(
    "tracecap_resident_memory_bytes",
    "gauge",
    "Resident memory of each running tracecap process.",
    ("program",),
)
STATS_AGE = Metric(
    "tracecap_stats_age_seconds",
    "gauge",
    "Seconds since a process last reported its counters (the collector on the bus, a writer "
    "in its stats file).",
    ("program",),
)

#: Every metric served, in the order served; the README lists them with these help strings.
METRICS: tuple[Metric, ...] = (
    UP,
    EVENTS,
    CAPTURED_BYTES,
    DROPS,
    DROPPED_BYTES,
    ARTIFACTS,
    BUS_MESSAGES,
    BUS_BYTES,
    BUS_BACKLOG,
    BUS_SUBSCRIPTIONS,
    BUS_PEERS_DROPPED,
    WRITER_RESTARTS,
    WRITER_LAG,
    RESIDENT_MEMORY,
    STATS_AGE,
)

#: A counter's metric and its label values; ``{kind}`` and ``{program}`` are filled in with the
#: counter's kind (the kernel's ``<kind>.`` prefix, or the writer's kind) and program.
Target = tuple[Metric, tuple[str, ...]]

#: The kernel's counters, ``stats.`` ``kernel`` ``<kind>.<counter>`` (bpf/records.py COUNTERS;
#: ``chunks`` is not served). Two counters on one target add up (records lost either way).
KERNEL_COUNTERS: dict[str, Target] = {
    "events": (EVENTS, ("{kind}",)),
    "bytes": (CAPTURED_BYTES, ("{kind}",)),
    "event_drops": (DROPS, ("{kind}", "kernel_ring")),
    "chunk_drops": (DROPS, ("{kind}", "kernel_ring")),
    "dropped_bytes": (DROPPED_BYTES, ("{kind}", "kernel_ring")),
    "pending_full": (DROPS, ("{kind}", "syscall_table")),
    "drop_table_full": (DROPS, ("{kind}", "drop_table")),
    "map_unwalked": (DROPS, ("{kind}", "mapping_unwalked")),
}
#: The collector's own counters, ``stats.`` ``collector``; none is split by kind.
COLLECTOR_COUNTERS: dict[str, Target] = {
    "decode_errors": (DROPS, (ALL_KINDS, "decode_error")),
    "bus_dropped_messages": (DROPS, (ALL_KINDS, "bus_backlog")),
    "bus_dropped_bytes": (DROPPED_BYTES, (ALL_KINDS, "bus_backlog")),
    "messages": (BUS_MESSAGES, ("collector",)),
    "bytes": (BUS_BYTES, ("collector",)),
    "bus_backlog_bytes": (BUS_BACKLOG, ()),
}
#: A writer's counters, from its stats file (writers/base.py Subscriber.snapshot).
WRITER_COUNTERS: dict[str, Target] = {
    "artifacts": (ARTIFACTS, ("{kind}",)),
    "gap_messages": (DROPS, ("{kind}", "bus_gap")),
    "malformed": (DROPS, ("{kind}", "malformed")),
    "budget_refused_writes": (DROPS, ("{kind}", "budget")),
    "budget_refused_bytes": (DROPPED_BYTES, ("{kind}", "budget")),
    "write_errors": (DROPS, ("{kind}", "write_error")),
    "index_errors": (DROPS, ("{kind}", "index_error")),
    "events_errors": (DROPS, ("{kind}", "events_error")),
    "handler_errors": (DROPS, ("{kind}", "handler_error")),
    "messages": (BUS_MESSAGES, ("{program}",)),
    "bytes": (BUS_BYTES, ("{program}",)),
}


@dataclass(frozen=True)
class Sample:
    """One value of a metric; ``labels`` in the order of ``metric.labels``."""

    metric: Metric
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Observation:
    """Everything the exporter knows at one moment (times are wall-clock ns)."""

    now_ns: int
    #: The collector's last ``stats.`` envelope, and when it arrived.
    collector: Mapping[str, Any] | None = None
    collector_seen_ns: int | None = None
    #: The writers' stats files (tracecap/stats.py read_writer_stats), by program.
    writers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The writer programs the options start, and the topics they must be subscribed to.
    expected: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    #: Each writer's recent lag samples, oldest first.
    lag: Mapping[str, Sequence[int]] = field(default_factory=dict)
    restarts: Mapping[str, int] = field(default_factory=dict)
    #: Resident bytes of each program whose process runs (a writer missing here is not running).
    rss: Mapping[str, int] = field(default_factory=dict)


def writer_kind(program: str) -> str:
    return program.removeprefix("writer-")


def _count(value: object) -> int | None:
    """A counter value as the files and messages carry it; anything else is not one."""
    return value if type(value) is int and value >= 0 else None


Values = dict[tuple[Metric, tuple[str, ...]], float]


def _add(
    out: Values,
    table: Mapping[str, Target],
    counters: object,
    split: Callable[[object], tuple[str, dict[str, str]]] | None = None,
    **fill: str,
) -> None:
    """Add each known counter of ``counters`` to its target; ``split`` turns a key into the
    counter's name and the labels to fill when the kind is part of the key (the kernel's
    ``<kind>.<counter>``), else ``fill`` gives them."""
    for key, raw in _items(counters):
        value = _count(raw)
        name, values = split(key) if split else (str(key), fill)
        if value is None or name not in table:
            continue
        metric, template = table[name]
        labels = tuple(t.format(**values) for t in template)
        out[metric, labels] = out.get((metric, labels), 0) + value


def _kernel_key(key: object) -> tuple[str, dict[str, str]]:
    kind, _, name = str(key).partition(".")
    return name, {"kind": kind}


def collector_attached(obs: Observation) -> bool:
    """``tracecap_up``: the health rule of the collector holds."""
    return _collector_problem(obs) is None


def served_writers(obs: Observation) -> list[str]:
    """The writers whose counters are served: those the options start, and any other whose
    stats file is fresh (a file left by an earlier run is not this run's)."""
    fresh = {program for program, stats in obs.writers.items() if _fresh(obs, stats)}
    return sorted({*obs.expected, *fresh})


def _fresh(obs: Observation, stats: Mapping[str, Any]) -> bool:
    age = _age_s(obs, stats.get("updated_ns"))
    return age is not None and age <= WRITER_STALE_S


def _age_s(obs: Observation, updated_ns: object) -> float | None:
    stamp = _count(updated_ns)
    return None if stamp is None else max(0.0, (obs.now_ns - stamp) / 1e9)


def samples(obs: Observation) -> list[Sample]:
    """Every value served for ``obs``, in METRICS order."""
    out: Values = {(UP, ()): float(collector_attached(obs))}
    env = obs.collector or {}
    _add(out, KERNEL_COUNTERS, env.get("kernel"), _kernel_key)
    _add(out, COLLECTOR_COUNTERS, env.get("collector"))
    for reason, raw in _items(_mapping(env.get("collector")).get("bus_peers_dropped")):
        if (value := _count(raw)) is not None:
            out[BUS_PEERS_DROPPED, (str(reason),)] = value
    for topic, raw in _items(env.get("subscriptions")):
        if (value := _count(raw)) is not None:
            out[BUS_SUBSCRIPTIONS, (str(topic),)] = value
    if obs.collector_seen_ns is not None:
        out[STATS_AGE, ("collector",)] = max(0.0, (obs.now_ns - obs.collector_seen_ns) / 1e9)
    for program in served_writers(obs):
        stats = obs.writers.get(program, {})
        fill = {"kind": writer_kind(program), "program": program}
        _add(out, WRITER_COUNTERS, stats.get("counters"), **fill)
        age = _age_s(obs, stats.get("updated_ns"))
        if age is not None:
            out[STATS_AGE, (program,)] = age
        out[WRITER_RESTARTS, (program,)] = obs.restarts.get(program, 0)
        if obs.lag.get(program):
            out[WRITER_LAG, (program,)] = obs.lag[program][-1]
    for program, rss in obs.rss.items():
        out[RESIDENT_MEMORY, (program,)] = rss
    order = {metric: i for i, metric in enumerate(METRICS)}
    return [
        Sample(metric, labels, float(value))
        for (metric, labels), value in sorted(out.items(), key=lambda kv: (order[kv[0][0]], kv[0]))
    ]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Iterator[tuple[object, object]]:
    yield from _mapping(value).items()


# -- lag ---------------------------------------------------------------------------------------


def published_at(history: Sequence[Mapping[str, Any]], topic: str, ts_ns: int) -> float | None:
    """How many messages of ``topic`` the collector had published at ``ts_ns``, interpolated
    between its ``stats.`` messages of one epoch (``history``, oldest first): constant after
    the last, unknown (None) before the first."""
    points = [
        (env["ts"], _count(_mapping(env.get("published")).get(topic, 0)) or 0)
        for env in history
        if _count(env.get("ts")) is not None
    ]
    if not points or ts_ns < points[0][0]:
        return None
    for (t0, n0), (t1, n1) in pairwise(points):
        if t0 <= ts_ns < t1:
            return n0 + (n1 - n0) * (ts_ns - t0) / (t1 - t0)
    return float(points[-1][1])


def writer_lag(writer: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> int | None:
    """Messages on the writer's topics that the collector had published by the time the
    writer wrote its stats file and that it had not received (lost ones are not lag: the
    writer counts them as gaps). None when the file is older than ``history``."""
    if not history:
        return None
    epoch = history[-1].get("epoch")
    updated = _count(writer.get("updated_ns"))
    topics = writer.get("topics")
    if updated is None or not isinstance(topics, list):
        return None
    last_seq = _mapping(writer.get("last_seq"))
    lag = 0
    for topic in map(str, topics):
        published = published_at(history, topic, updated)
        if published is None:
            return None
        seen = last_seq.get(f"{epoch}:{topic}", -1)
        seen = seen if type(seen) is int else -1
        lag += max(0, int(published) - 1 - seen)
    return lag


def falling_behind(lags: Sequence[int]) -> bool:
    """The lag grew at each of the last LAG_SAMPLES samples, by LAG_MIN_GROWTH in all."""
    recent = list(lags)[-LAG_SAMPLES:]
    return (
        len(recent) == LAG_SAMPLES
        and all(b > a for a, b in pairwise(recent))
        and recent[-1] - recent[0] >= LAG_MIN_GROWTH
    )


class Tracker:
    """What the exporter remembers between observations: the collector's recent ``stats.``
    messages of its current epoch, each writer's lag samples, and the pids that tell its
    restarts. Pure: it is given every input and the time."""

    def __init__(self, expected: Sequence[str], topics: Sequence[str]) -> None:
        self.expected = tuple(expected)
        self.topics = tuple(topics)
        self._history: deque[Mapping[str, Any]] = deque(maxlen=STATS_HISTORY)
        self._seen_ns: int | None = None
        self._lag: dict[str, deque[int]] = {}
        self._lag_stamp: dict[str, int] = {}
        self._pid: dict[str, int] = {}
        self.restarts: dict[str, int] = {}

    @property
    def collector(self) -> Mapping[str, Any] | None:
        """The collector's last ``stats.`` message."""
        return self._history[-1] if self._history else None

    def on_stats(self, env: Mapping[str, Any], now_ns: int) -> None:
        """A ``stats.`` message arrived; a new epoch (a restarted collector) starts afresh."""
        if self._history and self._history[-1].get("epoch") != env.get("epoch"):
            self._history.clear()
            self._lag.clear()
            self._lag_stamp.clear()
        self._history.append(env)
        self._seen_ns = now_ns

    def on_writers(self, writers: Mapping[str, Mapping[str, Any]], now_ns: int) -> None:
        """The writers' stats files as just read: a fresh file with another pid than the
        last fresh one is a restart; a rewritten file gives a lag sample."""
        for program, stats in writers.items():
            updated = _count(stats.get("updated_ns"))
            if updated is None or (now_ns - updated) / 1e9 > WRITER_STALE_S:
                continue
            pid = _count(stats.get("pid"))
            if pid is not None:
                if self._pid.get(program, pid) != pid:
                    self.restarts[program] = self.restarts.get(program, 0) + 1
                self._pid[program] = pid
            if self._lag_stamp.get(program) == updated:
                continue
            lag = writer_lag(stats, self._history)
            if lag is not None:
                self._lag_stamp[program] = updated
                self._lag.setdefault(program, deque(maxlen=LAG_SAMPLES)).append(lag)

    def observation(
        self, writers: Mapping[str, Mapping[str, Any]], rss: Mapping[str, int], now_ns: int
    ) -> Observation:
        return Observation(
            now_ns=now_ns,
            collector=self.collector,
            collector_seen_ns=self._seen_ns,
            writers=dict(writers),
            expected=self.expected,
            topics=self.topics,
            lag={program: tuple(lags) for program, lags in self._lag.items()},
            restarts=dict(self.restarts),
            rss=dict(rss),
        )


# -- health ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """/healthz: 200 with ``ok``, or 503 with one reason a line."""

    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> str:
        return "ok\n" if self.ok else "".join(f"{reason}\n" for reason in self.reasons)


def _collector_problem(obs: Observation) -> str | None:
    if obs.collector is None or obs.collector_seen_ns is None:
        return "collector: no stats yet (not attached)"
    state = obs.collector.get("state")
    if state != "ready":
        return f"collector: {state}"
    silent = (obs.now_ns - obs.collector_seen_ns) / 1e9
    if silent > COLLECTOR_STALE_S:
        return f"collector: no stats for {silent:.0f} s"
    return None


def _unsubscribed(obs: Observation) -> list[str]:
    subscriptions = _mapping(_mapping(obs.collector).get("subscriptions"))
    return [
        f"bus: nothing subscribed to {topic}"
        for topic in obs.topics
        if not any(
            topic.startswith(str(prefix)) and (_count(n) or 0) > 0
            for prefix, n in subscriptions.items()
        )
    ]


def _writer_problem(obs: Observation, program: str) -> str | None:
    stats = obs.writers.get(program)
    if stats is None:
        return f"{program}: no stats file (not started)"
    if "unreadable" in stats:
        return f"{program}: stats file unreadable ({stats['unreadable']})"
    if program not in obs.rss:
        return f"{program}: not running"
    if not _fresh(obs, stats):
        age = _age_s(obs, stats.get("updated_ns"))
        return f"{program}: stats not updated for {age or 0:.0f} s (stopped or stuck)"
    lags = obs.lag.get(program, ())
    if falling_behind(lags):
        return f"{program}: falling behind ({lags[-1]} messages, growing)"
    return None


def health(obs: Observation) -> Health:
    """Healthy when the collector is attached (ready, and heard from within
    COLLECTOR_STALE_S), every topic the options capture has a subscriber, and every writer the
    options start runs, rewrites its stats file within WRITER_STALE_S and is not falling
    behind (``falling_behind``)."""
    reasons: list[str] = []
    problem = _collector_problem(obs)
    if problem is not None:
        reasons.append(problem)
    else:  # the subscriptions a stale or stopped collector reported are stale too
        reasons += _unsubscribed(obs)
    for program in obs.expected:
        problem = _writer_problem(obs, program)
        if problem is not None:
            reasons.append(problem)
    return Health(tuple(reasons))
