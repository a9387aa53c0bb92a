"""The exporter's I/O half over fakes and a real socket: bus frames and stats files in, the
exposition format and /healthz out, and the HTTP server on its address."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.envelopes import stats_env
from tracecap import bus, options
from tracecap.options import Server
from tracecap.stats import StatsFile
from tracecap.tools.exporter import Exporter, listen, resident_bytes
from tracecap.tools.metrics import COLLECTOR_STALE_S, METRICS

S = 1_000_000_000
NOW = 1_700_000_000 * S
COLLECTOR_PID, WRITER_PID = 4242, 4343


class Clock:
    def __init__(self) -> None:
        self.ns = NOW

    def __call__(self) -> int:
        return self.ns


def fake_rss(pid: int) -> int | None:
    sizes = {
        COLLECTOR_PID: 40 << 20,
        WRITER_PID: 30 << 20,
        WRITER_PID + 1: 25 << 20,  # the events writer
        os.getpid(): 20 << 20,
    }
    return sizes.get(pid)


def make(tmp_path: Path, *server: str) -> tuple[Exporter, Clock]:
    words = server or ("metrics", "healthz")
    argv = ["--capture", "write", *(a for w in words for a in ("--server", w))]
    clock = Clock()
    return Exporter(options.parse_args(argv), str(tmp_path), clock=clock, rss=fake_rss), clock


def write_writer_stats(tmp_path: Path, updated: int = NOW) -> None:
    stats = StatsFile(str(tmp_path / "stats"), "file")
    stats.write(
        {
            "name": "file",
            "pid": WRITER_PID,
            "topics": ["file.write.", "file.read."],
            "updated_ns": updated,
            "counters": {"artifacts": 3, "gap_messages": 2, "messages": 10, "bytes": 999},
            "last_seq": {"7:file.write.": 9},
        }
    )
    stats.close()


def write_events_writer_stats(tmp_path: Path) -> None:
    """The events writer, which runs whatever is captured (kinds.Kind.always)."""
    stats = StatsFile(str(tmp_path / "stats"), "events")
    stats.write(
        {
            "name": "events",
            "pid": WRITER_PID + 1,
            "topics": ["proc.", "stats."],
            "updated_ns": NOW,
            "counters": {"messages": 1},
            "last_seq": {},
        }
    )
    stats.close()


def stats_frames(**overrides: object) -> list[bytes]:
    env = stats_env(
        ts=NOW,
        pid=COLLECTOR_PID,
        kernel={"write.events": 11, "write.event_drops": 1, "write.bytes": 5000},
        collector={"bus_dropped_messages": 4, "bus_dropped_bytes": 1 << 20, "messages": 10},
        published={"file.write.": 10},
        subscriptions={"file.write.": 1, "stats.": 2},
    )
    env.update(overrides)
    return bus.encode(bus.TOPIC_STATS, env)


def get(exporter: Exporter, path: str) -> tuple[str, dict[str, str], str]:
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    seen: dict = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(exporter.app(environ, start_response)).decode()
    return seen["status"], seen["headers"], body


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_serve_every_declared_family_with_its_help_and_type(tmp_path):
    exporter, _ = make(tmp_path)
    write_writer_stats(tmp_path)
    assert exporter.on_frames(stats_frames())
    exporter.refresh()
    status, headers, body = get(exporter, "/metrics")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain")
    served = families(body)
    for metric in METRICS:
        family = served[metric.name.removesuffix("_total")]
        assert (family.type, family.documentation) == (metric.type, metric.help)
    lines = body.splitlines()
    assert 'tracecap_events_total{kind="write"} 11.0' in lines
    assert 'tracecap_drops_total{cause="kernel_ring",kind="write"} 1.0' in lines
    assert 'tracecap_drops_total{cause="bus_backlog",kind="all"} 4.0' in lines
    assert 'tracecap_drops_total{cause="bus_gap",kind="file"} 2.0' in lines
    assert 'tracecap_artifacts_total{kind="file"} 3.0' in lines
    assert 'tracecap_resident_memory_bytes{program="collector"} 4.194304e+07' in lines
    assert 'tracecap_writer_lag_messages{program="writer-file"} 0.0' in lines
    assert "tracecap_up 1.0" in lines


def test_healthz_follows_the_collector_and_the_writer(tmp_path):
    exporter, clock = make(tmp_path)
    status, _, body = get(exporter, "/healthz")
    assert (status, body) == (
        "503 Service Unavailable",
        "collector: no stats yet (not attached)\nwriter-file: no stats file (not started)\n"
        "writer-events: no stats file (not started)\n",
    )
    write_writer_stats(tmp_path)
    write_events_writer_stats(tmp_path)
    exporter.on_frames(stats_frames())
    exporter.refresh()
    assert get(exporter, "/healthz")[::2] == ("200 OK", "ok\n")
    # a request reads nothing: it ages the last observation to the moment it is asked
    clock.ns += int((COLLECTOR_STALE_S + 1) * S)
    status, _, body = get(exporter, "/healthz")
    assert status.startswith("503") and "collector: no stats for 6 s" in body


def test_endpoints_not_asked_for_are_not_found(tmp_path):
    exporter, _ = make(tmp_path, "metrics")
    assert get(exporter, "/healthz") == (
        "404 Not Found",
        {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "36"},
        "not found; tracecap serves /metrics\n",
    )
    exporter, _ = make(tmp_path, "healthz")
    assert get(exporter, "/metrics")[0] == "404 Not Found"
    assert get(exporter, "/")[0] == "404 Not Found"


def test_a_malformed_bus_message_is_counted_and_dropped(tmp_path, capsys):
    exporter, _ = make(tmp_path)
    assert not exporter.on_frames([b"stats.", b"\xc1"])
    assert not exporter.on_frames(bus.encode(b"file.write.", {"v": 1}))
    assert exporter.malformed == 2
    assert "dropped a malformed message" in capsys.readouterr().err
    assert get(exporter, "/metrics")[0] == "200 OK"


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Exporter, str]]:
    exporter, _ = make(tmp_path)
    httpd = listen(Server(True, True, "127.0.0.1", 0), exporter.app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield exporter, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_http_server_answers_prometheus_and_probes(served):
    _, url = served
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert "tracecap_up 0.0" in reply.read().decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/healthz", timeout=10)
    assert refused.value.code == 503
    assert refused.value.read().startswith(b"collector: no stats yet")


def test_an_address_in_use_is_an_error(served):
    _, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        listen(Server(True, False, "127.0.0.1", port), served[0].app)


def test_resident_memory_is_read_only_for_tracecap_processes(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")
    for pid, cmdline in ((1, b"/opt/tracecap/venv/bin/tracecap\0writer\0file\0"), (2, b"sshd\0")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
        (tmp_path / str(pid) / "statm").write_bytes(b"5000 1200 300 1 0 900 0\n")
    assert resident_bytes(1, str(tmp_path)) == 1200 * page
    assert resident_bytes(2, str(tmp_path)) is None  # the pid was reused by another program
    assert resident_bytes(3, str(tmp_path)) is None  # gone
