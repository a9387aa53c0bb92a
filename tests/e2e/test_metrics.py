"""Metrics and health, end to end: Debian's Prometheus server scrapes `tracecap exporter` while
real programs write files; its query API must see the counters move and a forced loss (the
file writer stopped while dd writes 96 MiB, so the collector's bus backlog overflows) in its
metric; /healthz fails while a writer is stopped or stuck and recovers when it is back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import RESTART_TIMEOUT_S, Run, ctl, pid_of, wait_until
from tests.support.workloads import WORKLOAD_TIMEOUT_S, sh

pytestmark = pytest.mark.ebpf

MIB = 1 << 20
#: Prometheus scrapes every second; a value reaches its query API within a few scrapes.
SCRAPE_TIMEOUT_S = 30
#: A stopped writer's stats file goes stale after 10 s (tools/metrics.py WRITER_STALE_S).
STALE_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    except OSError as exc:
        return 0, str(exc)


class Prometheus:
    """A Prometheus server of our own: its config, storage and port, scraping one target."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prom-", dir=workdir))
        (self.dir / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: tracecap\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until("prometheus to be ready", self._ready, SCRAPE_TIMEOUT_S)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.logs()
        return http_get(f"{self.url}/-/ready")[0] == 200

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without __name__, job, instance) -> value."""
        status, body = http_get(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        )
        assert status == 200, body
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items()
                         if k not in ("__name__", "job", "instance"))): float(r["value"][1])
            for r in reply["data"]["result"]
        }  # fmt: skip

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series, None while it selects none."""
        found = self.query(expr)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def wait_for(self, expr: str, check: Callable[[float], bool], what: str) -> float:
        """The first value of ``expr`` that passes ``check``, as Prometheus reports it."""

        def passed() -> tuple[float] | None:  # a tuple: a passing 0.0 is still true
            value = self.value(expr)
            return (value,) if value is not None and check(value) else None

        return wait_until(f"{what} ({expr})", passed, SCRAPE_TIMEOUT_S)[0]

    def logs(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus(workdir: Path) -> Iterator[Callable[[str], Prometheus]]:
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is not installed: run `make setup-test`")
    servers: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        servers.append(Prometheus(target, workdir))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def start_exported(tracecap, wdir: Path, *extra: str) -> tuple[Run, str]:
    """A capture of writes under ``wdir`` with the exporter on a free port; its base URL."""
    port = free_port()
    run = tracecap(
        "--capture", f"write={wdir}/*", *extra,
        "--server", "metrics", "--server", "healthz",
        "--server", f"http-address=127.0.0.1:{port}",
    )  # fmt: skip
    return run, f"127.0.0.1:{port}"


def healthz(address: str) -> tuple[int, str]:
    return http_get(f"http://{address}/healthz")


def wait_health(
    address: str, status: int, what: str, timeout: float, reasons: tuple[str, ...] = ()
) -> str:
    """Wait for `status` with every one of `reasons` in the body: the supervisor's view of a
    stopped program is immediate, the collector's view of the bus arrives with its next stats."""

    def reached() -> str | None:
        got, body = healthz(address)
        return body if got == status and all(r in body for r in reasons) else None

    return wait_until(what, reached, timeout)


def test_prometheus_sees_counters_move_and_a_forced_loss(
    tracecap, prometheus, workdir: Path
) -> None:
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    # a file ring smaller than the forced loss's 96 MiB (the default is 1/128 of the memory)
    run, address = start_exported(tracecap, wdir, "--ring-mb", "16")
    prom = prometheus(address)
    prom.wait_for("tracecap_up", lambda v: v == 1, "the collector attached")
    assert prom.value('up{job="tracecap"}') == 1
    assert wait_health(address, 200, "/healthz 200 once attached", SCRAPE_TIMEOUT_S) == "ok\n"

    events = 'tracecap_events_total{kind="write"}'
    captured = 'tracecap_captured_bytes_total{kind="write"}'
    artifacts = 'tracecap_artifacts_total{kind="file"}'
    before = {expr: prom.value(expr) for expr in (events, captured, artifacts)}
    assert None not in before.values(), before
    # real programs: dd writes 8 MiB in 64 KiB writes, the shell five small files
    sh(f"dd if=/dev/urandom of={wdir}/dd bs=64k count=128 status=none")
    sh(f"for i in 1 2 3 4 5; do echo file $i > {wdir}/small-$i; done")
    prom.wait_for(captured, lambda v: v >= before[captured] + 8 * MIB + 5 * 7, "bytes captured")
    prom.wait_for(events, lambda v: v >= before[events] + 6, "write events")
    prom.wait_for(artifacts, lambda v: v >= before[artifacts] + 6, "artifacts")
    assert prom.value('tracecap_resident_memory_bytes{program="collector"}') > 8 * MIB
    assert prom.value('tracecap_resident_memory_bytes{program="writer-file"}') > 8 * MIB
    assert prom.value('tracecap_writer_lag_messages{program="writer-file"}') is not None
    backlog = 'tracecap_drops_total{kind="all",cause="bus_backlog"}'
    assert prom.value(backlog) == 0

    # the forced loss: the file writer stopped while dd writes 96 MiB unpaced; the collector
    # drains the ring no faster than the bus backlog has room, so the kernel ring overflows
    ring = 'sum(tracecap_drops_total{cause="kernel_ring"})'
    pid = pid_of(run, "writer-file")
    os.kill(pid, signal.SIGSTOP)
    try:
        sh(f"dd if=/dev/urandom of={wdir}/big bs=1M count=96 status=none")
        body = wait_health(address, 503, "/healthz 503 while the writer is stuck", STALE_TIMEOUT_S)
        assert "writer-file: stats not updated for" in body, body
    finally:
        os.kill(pid, signal.SIGCONT)
    lost = prom.wait_for(ring, lambda v: v > 0, "the kernel ring loss")
    lost_bytes = prom.wait_for(
        'sum(tracecap_dropped_bytes_total{cause="kernel_ring"})', lambda v: v > 0, "bytes"
    )
    wait_health(address, 200, "/healthz 200 once the writer caught up", STALE_TIMEOUT_S)
    print(f"kernel ring loss in Prometheus: {lost:.0f} records, {lost_bytes:.0f} bytes")
    time.sleep(3)  # two more scrapes: what the collector counted last is what was scraped
    final = prom.value(ring)
    run.stop()
    match = re.search(r"kernel ring buffer (\d+) records \((\d+) bytes\)", run.stderr)
    assert match, run.stderr[-2000:]
    assert final == int(match[1]) and int(match[1]) > 0, (final, match[0])


def test_healthz_fails_while_a_writer_is_stopped_and_recovers(
    tracecap, prometheus, workdir: Path
) -> None:
    wdir = workdir / "w"
    wdir.mkdir(mode=0o755)
    run, address = start_exported(tracecap, wdir)
    prom = prometheus(address)
    assert wait_health(address, 200, "/healthz 200", SCRAPE_TIMEOUT_S) == "ok\n"
    restarts = 'tracecap_writer_restarts_total{program="writer-file"}'
    prom.wait_for(restarts, lambda v: v == 0, "no restart yet")

    old = pid_of(run, "writer-file")
    result = ctl(run, "stop", "writer-file")
    assert result.returncode == 0, result.stdout + result.stderr
    stopped = ("writer-file: not running", "bus: nothing subscribed to file.write.")
    body = wait_health(address, 503, "/healthz 503 naming both", RESTART_TIMEOUT_S, stopped)
    assert sorted(body.splitlines()) == sorted(stopped), body

    result = ctl(run, "start", "writer-file")
    assert result.returncode == 0, result.stdout + result.stderr
    assert pid_of(run, "writer-file") not in (0, old)
    body = wait_health(address, 200, "/healthz 200 with the writer back", RESTART_TIMEOUT_S)
    assert body == "ok\n"
    prom.wait_for(restarts, lambda v: v == 1, "the restart counted")
    run.stop()
    assert run.returncode == 0, run.stderr[-2000:]


def test_an_address_in_use_ends_the_run_with_the_reason(workdir: Path) -> None:
    """The exporter cannot listen: supervisord gives up on it (FATAL) and `tracecap run` stops
    with status 1, naming the address, instead of capturing without the endpoint asked for."""
    if os.geteuid() != 0 or not shutil.which("tracecap"):
        pytest.skip("needs root and an installed tracecap")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_dir = tempfile.mkdtemp(prefix="tcr-", dir="/run")
        try:
            result = subprocess.run(
                ["tracecap", "run", "--run-dir", run_dir, "--capture", f"dir:{workdir}/cap",
                 "--capture", "exec", "--server", "metrics",
                 "--server", f"http-address=127.0.0.1:{port}"],
                capture_output=True, text=True, timeout=WORKLOAD_TIMEOUT_S, check=False,
            )  # fmt: skip
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"tracecap exporter: error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "exporter stopped (FATAL" in result.stderr, result.stderr[-3000:]
