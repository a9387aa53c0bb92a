"""The static deployment's exporter program (supervisord.conf): what `tracecap run --server
metrics --server healthz` would start, reading the same options file."""

import configparser
import shlex
from pathlib import Path

from tracecap import options
from tracecap.frontend.supervisor_conf import (
    COLLECTOR_PRIORITY,
    EXPORTER_PRIORITY,
    EXPORTER_STARTSECS,
)

ROOT = Path(__file__).resolve().parents[3]


def section(name: str) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser()
    assert parser.read(ROOT / "supervisord.conf")
    return parser[f"program:{name}"]


def test_the_static_exporter_runs_unprivileged_and_serves_both_endpoints():
    exporter = section("exporter")
    argv = shlex.split(exporter["command"])
    assert argv[:2] == ["/usr/local/bin/tracecap", "exporter"]
    assert exporter["user"] == "tracecap"
    assert int(exporter["priority"]) == EXPORTER_PRIORITY < COLLECTOR_PRIORITY
    assert exporter["autorestart"] == "true"
    assert exporter["startsecs"] == str(EXPORTER_STARTSECS)
    assert exporter["stdout_logfile"] == "/run/tracecap/exporter.log"
    # the capture options come from the same file as the writers'; the endpoints are added
    assert argv[2:4] == ["--config", "/etc/tracecap/tracecap.conf"]
    server = options.parse_args(argv[4:]).server
    assert (server.metrics, server.healthz) == (True, True)
    assert (server.host, server.port) == ("127.0.0.1", 3366)


def test_the_static_exporter_is_not_waited_for_by_the_collector():
    assert "exporter" not in section("collector")["command"]
