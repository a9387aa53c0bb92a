"""The exporter's pure half: stats message + writers' stats files -> metric samples, the lag
of a writer, restarts, and the /healthz decision table."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tracecap.tools import metrics
from tracecap.tools.metrics import (
    COLLECTOR_STALE_S,
    LAG_MIN_GROWTH,
    LAG_SAMPLES,
    METRICS,
    WRITER_STALE_S,
    Observation,
    Tracker,
    falling_behind,
    health,
    published_at,
    samples,
    writer_lag,
)

S = 1_000_000_000
NOW = 1_700_000_000 * S
EPOCH = 77


def kernel(**values: int) -> dict[str, int]:
    """Every kernel counter of every kind at 0, with ``values`` (``write__events=3``)."""
    names = ("events", "event_drops", "chunks", "chunk_drops", "bytes", "dropped_bytes",
             "pending_full", "drop_table_full", "map_unwalked")  # fmt: skip
    out = {f"{k}.{n}": 0 for k in ("write", "read", "exec", "mem", "module", "bpf", "net")
           for n in names}  # fmt: skip
    out.update({key.replace("__", "."): v for key, v in values.items()})
    return out


def stats_env(ts: int = NOW, published: dict[str, int] | None = None, **extra: Any) -> dict:
    env = {
        "v": 1,
        "epoch": EPOCH,
        "seq": 5,
        "ts": ts,
        "pid": 100,
        "state": "ready",
        "kernel": kernel(
            write__events=40,
            write__bytes=4096,
            write__event_drops=2,
            write__chunk_drops=3,
            write__dropped_bytes=700,
            read__pending_full=1,
            exec__drop_table_full=4,
        ),
        "collector": {
            "events": 41,
            "decode_errors": 6,
            "messages": 50,
            "bytes": 9000,
            "bus_dropped_messages": 7,
            "bus_dropped_bytes": 1 << 20,
            "bus_backlog_bytes": 12345,
            "bus_peers": 3,
            "bus_peers_dropped": {"stalled": 2, "prefixes": 0},
            "bus_subscriptions_ignored": 0,
        },
        "published": published if published is not None else {"file.write.": 50},
        "subscriptions": {"file.write.": 1, "stats.": 2},
    }
    env.update(extra)
    return env


def writer_stats(
    updated: int = NOW, pid: int = 200, last_seq: int | None = 49, **counters: int
) -> dict:
    return {
        "name": "file",
        "pid": pid,
        "topics": ["file.write.", "file.read."],
        "updated_ns": updated,
        "counters": {
            "artifacts": 9,
            "messages": 48,
            "bytes": 8000,
            "gap_messages": 2,
            "malformed": 1,
            "budget_refused_writes": 3,
            "budget_refused_bytes": 3 << 20,
            "write_errors": 0,
            "index_errors": 4,
            "handler_errors": 0,
            "records": 12,  # not served
            **counters,
        },
        "last_seq": {} if last_seq is None else {f"{EPOCH}:file.write.": last_seq},
    }


def observation(**changes: Any) -> Observation:
    """A healthy run with the file writer (its lag steady at 0)."""
    base = {
        "now_ns": NOW,
        "collector": stats_env(),
        "collector_seen_ns": NOW - S // 2,
        "writers": {"writer-file": writer_stats()},
        "expected": ("writer-file",),
        "topics": ("file.write.",),
        "lag": {"writer-file": (0, 0, 0, 0, 0)},
        "restarts": {"writer-file": 1},
        "rss": {"collector": 40 << 20, "writer-file": 30 << 20, "exporter": 20 << 20},
    }
    base.update(changes)
    return Observation(**base)


def values(obs: Observation) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.metric.name, s.labels): s.value for s in samples(obs)}


# --- the metric set ---


def test_the_metric_set_follows_prometheus_conventions():
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    for metric in METRICS:
        assert re.fullmatch(r"tracecap_[a-z_]+", metric.name), metric.name
        assert metric.name.endswith("_total") == (metric.type == "counter"), metric.name
        assert metric.help.endswith(".") and len(metric.help) > 20
        assert all(re.fullmatch(r"[a-z]+", label) for label in metric.labels)
    assert "tracecap_up" in names


def test_every_table_target_is_a_declared_metric_with_its_labels():
    for table in (metrics.KERNEL_COUNTERS, metrics.COLLECTOR_COUNTERS, metrics.WRITER_COUNTERS):
        for metric, template in table.values():
            assert metric in METRICS
            assert len(template) == len(metric.labels)


# --- stats message + writer stats -> samples ---


def test_kernel_counters_map_to_kinds_and_causes():
    got = values(observation())
    assert got["tracecap_events_total", ("write",)] == 40
    assert got["tracecap_events_total", ("net",)] == 0
    assert got["tracecap_captured_bytes_total", ("write",)] == 4096
    # lost events and lost chunks are both records lost in the ring
    assert got["tracecap_drops_total", ("write", "kernel_ring")] == 5
    assert got["tracecap_dropped_bytes_total", ("write", "kernel_ring")] == 700
    assert got["tracecap_drops_total", ("read", "syscall_table")] == 1
    assert got["tracecap_drops_total", ("exec", "drop_table")] == 4
    assert not any(name == "tracecap_chunks_total" for name, _ in got)


def test_collector_counters_are_for_all_kinds():
    got = values(observation())
    assert got["tracecap_drops_total", ("all", "decode_error")] == 6
    assert got["tracecap_drops_total", ("all", "bus_backlog")] == 7
    assert got["tracecap_dropped_bytes_total", ("all", "bus_backlog")] == 1 << 20
    assert got["tracecap_bus_messages_total", ("collector",)] == 50
    assert got["tracecap_bus_bytes_total", ("collector",)] == 9000
    assert got["tracecap_bus_backlog_bytes", ()] == 12345
    assert got["tracecap_bus_peers_dropped_total", ("stalled",)] == 2
    assert got["tracecap_bus_subscriptions", ("file.write.",)] == 1
    assert got["tracecap_bus_subscriptions", ("stats.",)] == 2
    assert got["tracecap_stats_age_seconds", ("collector",)] == 0.5
    assert got["tracecap_up", ()] == 1


def test_writer_counters_map_to_the_writers_kind_and_program():
    got = values(observation())
    assert got["tracecap_artifacts_total", ("file",)] == 9
    assert got["tracecap_drops_total", ("file", "bus_gap")] == 2
    assert got["tracecap_drops_total", ("file", "malformed")] == 1
    assert got["tracecap_drops_total", ("file", "budget")] == 3
    assert got["tracecap_dropped_bytes_total", ("file", "budget")] == 3 << 20
    assert got["tracecap_drops_total", ("file", "write_error")] == 0
    assert got["tracecap_drops_total", ("file", "index_error")] == 4
    assert got["tracecap_bus_messages_total", ("writer-file",)] == 48
    assert got["tracecap_bus_bytes_total", ("writer-file",)] == 8000
    assert got["tracecap_writer_restarts_total", ("writer-file",)] == 1
    assert got["tracecap_writer_lag_messages", ("writer-file",)] == 0
    assert got["tracecap_stats_age_seconds", ("writer-file",)] == 0
    assert got["tracecap_resident_memory_bytes", ("collector",)] == 40 << 20
    assert got["tracecap_resident_memory_bytes", ("exporter",)] == 20 << 20


def test_samples_come_in_metric_order_with_one_value_per_label_set():
    got = samples(observation())
    order = [METRICS.index(s.metric) for s in got]
    assert order == sorted(order)
    keys = [(s.metric.name, s.labels) for s in got]
    assert len(keys) == len(set(keys))
    assert all(len(s.labels) == len(s.metric.labels) for s in got)


def test_before_the_collector_reports_only_up_and_the_writers_are_served():
    got = values(observation(collector=None, collector_seen_ns=None))
    assert got["tracecap_up", ()] == 0
    assert not any(name == "tracecap_events_total" for name, _ in got)
    assert got["tracecap_artifacts_total", ("file",)] == 9


@pytest.mark.parametrize(
    "changes",
    [
        {"collector": stats_env(state="stopped")},
        {"collector_seen_ns": NOW - int((COLLECTOR_STALE_S + 1) * S)},
    ],
)
def test_up_is_0_once_the_collector_stopped_or_went_silent(changes):
    assert values(observation(**changes))["tracecap_up", ()] == 0


def test_a_stale_writer_the_options_do_not_start_is_not_served():
    old = writer_stats(updated=NOW - int((WRITER_STALE_S + 1) * S))
    writers = {"writer-file": writer_stats(), "writer-pcap": old, "writer-exec": writer_stats()}
    served = {labels for name, labels in values(observation(writers=writers))
              if name == "tracecap_bus_messages_total"}  # fmt: skip
    assert served == {("collector",), ("writer-file",), ("writer-exec",)}


@pytest.mark.parametrize(
    ("bad", "absent"),
    [
        (
            {"kernel": {"write.events": "many", "write.bytes": True, "read.events": -1, 5: 1}},
            [("tracecap_events_total", ("write",)), ("tracecap_captured_bytes_total", ("write",)),
             ("tracecap_events_total", ("read",))],
        ),
        (
            {"kernel": [1, 2], "collector": None, "subscriptions": "x", "published": 3},
            [("tracecap_events_total", ("write",)), ("tracecap_bus_messages_total", ("collector",)),
             ("tracecap_bus_subscriptions", ("stats.",))],
        ),
        (
            {"collector": {"bus_peers_dropped": ["stalled"], "messages": 1.5}},
            [("tracecap_bus_messages_total", ("collector",)),
             ("tracecap_bus_peers_dropped_total", ("stalled",))],
        ),
    ],
)  # fmt: skip
def test_malformed_values_are_left_out_never_a_crash(bad, absent):
    got = values(observation(collector=stats_env(**bad)))
    for key in absent:
        assert key not in got
    assert got["tracecap_artifacts_total", ("file",)] == 9  # the rest is still served


def test_an_unreadable_writer_file_gives_no_counters():
    got = values(observation(writers={"writer-file": {"unreadable": "a symlink (not followed)"}}))
    assert ("tracecap_artifacts_total", ("file",)) not in got
    assert got["tracecap_writer_restarts_total", ("writer-file",)] == 1


# --- lag ---


def test_published_is_interpolated_between_stats_messages():
    history = [stats_env(ts=NOW, published={"t.": 100}),
               stats_env(ts=NOW + S, published={"t.": 200})]  # fmt: skip
    assert published_at(history, "t.", NOW - 1) is None  # before what is kept
    assert published_at(history, "t.", NOW) == 100
    assert published_at(history, "t.", NOW + S // 4) == 125
    assert published_at(history, "t.", NOW + 5 * S) == 200
    assert published_at(history, "other.", NOW + S // 2) == 0


def test_writer_lag_counts_what_was_published_and_not_received_by_its_file_time():
    history = [stats_env(ts=NOW, published={"file.write.": 1000}),
               stats_env(ts=NOW + S, published={"file.write.": 2000})]  # fmt: skip
    # at NOW + 0.5 s, 1500 were published (seq 0..1499); the writer had seq 1199
    assert writer_lag(writer_stats(updated=NOW + S // 2, last_seq=1199), history) == 300
    assert writer_lag(writer_stats(updated=NOW + S // 2, last_seq=1499), history) == 0
    # nothing of this epoch received yet: all of it is behind
    assert writer_lag(writer_stats(updated=NOW + S, last_seq=None), history) == 2000
    assert writer_lag(writer_stats(updated=NOW - S), history) is None
    assert writer_lag(writer_stats(), []) is None


@pytest.mark.parametrize(
    ("lags", "behind"),
    [
        ((0, 500, 1000, 1500, 2000), True),
        ((100, 400, 700, 900, 1100), True),
        ((0, 500, 1000, 1500), False),  # too few samples yet
        ((0, 500, 400, 1500, 2000), False),  # caught up once
        ((5000, 5100, 5200, 5300, 5400), False),  # high but growing slower than the floor
        ((0, 300, 300, 1500, 2000), False),  # stood still once
        ((9, 9, 0, 500, 1000, 1500, 2000), True),  # only the last samples count
    ],
)
def test_falling_behind_needs_growth_at_every_sample_and_in_all(lags, behind):
    assert falling_behind(lags) is behind


def test_lag_thresholds_are_what_the_table_above_assumes():
    assert (LAG_SAMPLES, LAG_MIN_GROWTH) == (5, 1000)


# --- the tracker ---


def test_tracker_counts_a_restart_when_a_fresh_file_names_another_pid():
    tracker = Tracker(["writer-file"], ["file.write."])
    leftover = writer_stats(updated=NOW - 60 * S, pid=10)  # an earlier run's file
    tracker.on_writers({"writer-file": leftover}, NOW)
    tracker.on_writers({"writer-file": writer_stats(pid=11)}, NOW)
    assert tracker.restarts == {}
    tracker.on_writers({"writer-file": writer_stats(pid=11, updated=NOW + S)}, NOW + S)
    tracker.on_writers({"writer-file": writer_stats(pid=12, updated=NOW + 2 * S)}, NOW + 2 * S)
    assert tracker.restarts == {"writer-file": 1}


def test_tracker_samples_lag_once_per_rewritten_file_and_forgets_it_with_the_epoch():
    tracker = Tracker(["writer-file"], ["file.write."])
    for i in range(3):
        tracker.on_stats(stats_env(ts=NOW + i * S, published={"file.write.": 1000 * (i + 1)}),
                         NOW + i * S)  # fmt: skip
    files = {"writer-file": writer_stats(updated=NOW + S, last_seq=999)}
    tracker.on_writers(files, NOW + 2 * S)
    tracker.on_writers(files, NOW + 2 * S)  # the same file read again: no second sample
    obs = tracker.observation(files, {}, NOW + 2 * S)
    assert obs.lag == {"writer-file": (1000,)}
    assert obs.collector is not None and obs.collector["ts"] == NOW + 2 * S
    assert obs.collector_seen_ns == NOW + 2 * S
    tracker.on_stats(dict(stats_env(ts=NOW + 3 * S), epoch=EPOCH + 1), NOW + 3 * S)
    assert tracker.observation(files, {}, NOW + 3 * S).lag == {}


# --- /healthz: the decision table ---


def at(seconds_ago: float) -> int:
    return NOW - int(seconds_ago * S)


@pytest.mark.parametrize(
    ("changes", "reasons"),
    [
        ({}, []),
        (
            {"collector": None, "collector_seen_ns": None},
            ["collector: no stats yet (not attached)"],
        ),
        ({"collector": stats_env(state="stopped")}, ["collector: stopped"]),
        ({"collector_seen_ns": at(COLLECTOR_STALE_S + 2)}, ["collector: no stats for 7 s"]),
        (
            {"collector": stats_env(subscriptions={"stats.": 1})},
            ["bus: nothing subscribed to file.write."],
        ),
        ({"collector": stats_env(subscriptions={"file.write.": 0, "file.": 1})}, []),
        ({"writers": {}}, ["writer-file: no stats file (not started)"]),
        (
            {"writers": {"writer-file": {"unreadable": "a symlink (not followed)"}}},
            ["writer-file: stats file unreadable (a symlink (not followed))"],
        ),
        ({"rss": {"collector": 1}}, ["writer-file: not running"]),
        (
            {"writers": {"writer-file": writer_stats(updated=at(WRITER_STALE_S + 1))}},
            ["writer-file: stats not updated for 11 s (stopped or stuck)"],
        ),
        (
            {"lag": {"writer-file": (0, 600, 1200, 1800, 2400)}},
            ["writer-file: falling behind (2400 messages, growing)"],
        ),
        ({"lag": {"writer-file": (3000, 2000, 2500, 2400, 2600)}}, []),
        (
            {
                "collector": stats_env(state="stopped", subscriptions={}),
                "rss": {},
            },
            ["collector: stopped", "writer-file: not running"],
        ),
    ],
)
def test_health_decision_table(changes, reasons):
    verdict = health(observation(**changes))
    assert list(verdict.reasons) == reasons
    assert verdict.ok is (not reasons)
    assert verdict.status == (200 if not reasons else 503)
    assert verdict.body() == ("ok\n" if not reasons else "".join(r + "\n" for r in reasons))


def test_health_checks_every_writer_the_options_start():
    obs = observation(
        expected=("writer-file", "writer-exec"),
        topics=("file.write.", "exec."),
    )
    assert health(obs).reasons == (
        "bus: nothing subscribed to exec.",
        "writer-exec: no stats file (not started)",
    )
