"""``--server``: Tracee's words for the exporter (metrics, healthz, http-address=HOST:PORT)."""

import re

import pytest

from tracecap.options import OptionError, Server, expand_config_file, parse_args


def server(*values: str) -> Server:
    return parse_args([arg for value in values for arg in ("--server", value)]).server


def test_off_unless_asked_for_and_on_loopback_port_3366_by_default():
    assert parse_args([]).server == Server(False, False, "127.0.0.1", 3366)
    assert not parse_args([]).server.enabled
    assert server("metrics") == Server(True, False, "127.0.0.1", 3366)
    assert server("healthz", "metrics") == Server(True, True, "127.0.0.1", 3366)
    assert server("metrics", "metrics").enabled


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("http-address=127.0.0.1:9090", "127.0.0.1", 9090),
        ("http-address=:3366", "", 3366),  # Tracee's form: every interface
        ("http-address=[::1]:3366", "::1", 3366),
        ("http-address=[0:0::1]:80", "::1", 80),
        ("http-address=localhost:3366", "localhost", 3366),
        ("http-address=node-1.example:65535", "node-1.example", 65535),
    ],
)
def test_http_address_forms(address, host, port):
    assert server("metrics", address) == Server(True, False, host, port)


def test_every_spelling_of_the_flag_and_a_config_file():
    assert parse_args(["--server=healthz", "--server", "http-address=:1"]).server == Server(
        False, True, "", 1
    )
    argv = expand_config_file("--server metrics --server http-address=127.0.0.2:3366 # scrape\n")
    assert parse_args(argv).server == Server(True, False, "127.0.0.2", 3366)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["grpc"], "invalid --server value: 'grpc' (accepted: metrics, healthz, http-address="),
        (["pprof"], "invalid --server value: 'pprof'"),
        (["metrics", "http-address=1.2.3.4"], "'http-address=1.2.3.4'"),
        (["metrics", "http-address=1.2.3.4:0"], "'http-address=1.2.3.4:0'"),
        (["metrics", "http-address=1.2.3.4:65536"], "'http-address=1.2.3.4:65536'"),
        (["metrics", "http-address=999.1.1.1:80"], "'http-address=999.1.1.1:80'"),
        (["metrics", "http-address=[fe80::zz]:80"], "'http-address=[fe80::zz]:80'"),
        (["metrics", "http-address=-x:80"], "'http-address=-x:80'"),
        (["metrics", "http-address=a b:80"], "'http-address=a b:80'"),
        (
            ["metrics", "http-address=:1", "http-address=:2"],
            "conflicting --server http-address: 'http-address=:1' and 'http-address=:2'",
        ),
        (
            ["http-address=:9000"],
            "--server 'http-address=:9000' serves nothing without --server metrics or "
            "--server healthz",
        ),
    ],
)
def test_refused_with_the_token_and_the_accepted_forms(values, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        server(*values)


def test_the_same_address_twice_is_fine():
    assert server("metrics", "http-address=:5", "http-address=:5").port == 5


def test_a_missing_value_names_the_flag():
    with pytest.raises(OptionError, match="'--server' needs a value"):
        parse_args(["--server"])
