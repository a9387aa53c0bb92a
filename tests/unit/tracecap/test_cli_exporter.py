"""`tracecap exporter`: refused before anything listens when it has nothing to serve, and
handed its options and run directory otherwise."""

import pytest

import tracecap.tools.exporter
from tracecap.cli import main


@pytest.fixture
def started(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(
        tracecap.tools.exporter, "run_exporter", lambda *args: calls.append(args) or 0
    )
    return calls


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["exporter"], "exporter needs --server metrics or --server healthz"),
        (["exporter", "--capture", "write"], "exporter needs --server metrics"),
        (["exporter", "--server", "grpc"], "invalid --server value: 'grpc'"),
        (["exporter", "--server", "metrics", "--run-dir", "rel"], "expected an absolute path"),
        (["exporter", "--server", "metrics", "--listen", "x"], "unknown option '--listen'"),
    ],
)
def test_refused_with_status_2(capsys, started, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracecap exporter: error: ") and fragment in err
    assert started == []


def test_started_with_the_options_of_its_config_file(tmp_path, started):
    conf = tmp_path / "options.conf"
    conf.write_text("--capture write --server healthz --server http-address=:9100\n")
    assert main(["exporter", "--run-dir", "/run/tc", "--config", str(conf)]) == 0
    [(config, run_dir)] = started
    assert run_dir == "/run/tc"
    assert config.kinds() == ("write",)
    assert (config.server.healthz, config.server.metrics, config.server.port) == (True, False, 9100)
