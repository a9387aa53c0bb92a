"""The `tracecap` command line: own-flag splitting, --wait-for, and exit code 2 on bad options.

main() is only called with options that must be refused, and the entry points that would start
processes are replaced by tripwires, so a wrongly accepted option fails the test instead of
starting a collector.
"""

from collections import Counter
from pathlib import Path

import pytest

import collector.service
import tracecap.frontend.supervise
import tracecap.tools.status
import tracecap.tools.tap
import writers.runner
from tracecap import cli, options
from tracecap.cli import UsageError, main, parse_wait_for, split_own


@pytest.fixture(autouse=True)
def tripwires(monkeypatch):
    def must_not_start(*args, **kwargs):
        raise AssertionError(f"an entry point was reached with {args!r}")

    monkeypatch.setattr(tracecap.frontend.supervise, "run", must_not_start)
    monkeypatch.setattr(collector.service, "run_collector", must_not_start)
    monkeypatch.setattr(writers.runner, "run_writer", must_not_start)
    monkeypatch.setattr(tracecap.tools.tap, "tap", must_not_start)
    monkeypatch.setattr(tracecap.tools.status, "status", must_not_start)


# --- split_own ---


def test_split_own_separates_both_spellings_and_keeps_order_of_the_rest():
    found, rest = split_own(
        ["--capture", "write", "--run-dir", "/r", "--config=a.conf", "-s", "comm=x",
         "--config", "b.conf"],
        {"--config": True, "--run-dir": False},
    )  # fmt: skip
    assert found == {"--run-dir": ["/r"], "--config": ["a.conf", "b.conf"]}
    assert rest == ["--capture", "write", "-s", "comm=x"]


def test_split_own_value_may_contain_equals_and_be_empty():
    found, rest = split_own(["--wait-for=file.write.=2", "--run-dir="], {
        "--wait-for": True, "--run-dir": False,
    })  # fmt: skip
    assert found == {"--wait-for": ["file.write.=2"], "--run-dir": [""]}
    assert rest == []


def test_split_own_leaves_similar_flags_alone():
    found, rest = split_own(
        ["--run-dirs", "x", "--run", "--capture=--run-dir"], {"--run-dir": False}
    )
    assert found == {}
    assert rest == ["--run-dirs", "x", "--run", "--capture=--run-dir"]


def test_split_own_rejects_repeated_single_flag():
    with pytest.raises(UsageError, match="--run-dir given twice"):
        split_own(["--run-dir", "a", "--run-dir=b"], {"--run-dir": False})


def test_split_own_rejects_missing_value():
    with pytest.raises(UsageError, match="--config needs a value"):
        split_own(["--capture", "write", "--config"], {"--config": True})


def test_split_own_empty():
    assert split_own([], {"--x": True}) == ({}, [])


def test_split_own_takes_a_switch_without_a_value():
    found, rest = split_own(
        ["--delete-after-upload", "--bucket", "b", "-c", "x"],
        {"--delete-after-upload": False, "--bucket": False},
        frozenset({"--delete-after-upload"}),
    )
    assert found == {"--delete-after-upload": [""], "--bucket": ["b"]}
    assert rest == ["-c", "x"]
    with pytest.raises(UsageError, match="takes no value"):
        split_own(["--delete-after-upload=yes"], {"--delete-after-upload": False},
                  frozenset({"--delete-after-upload"}))  # fmt: skip


def test_ship_flags_belong_to_writer_ship_and_it_needs_a_bucket(capsys):
    err = check_refused(capsys, ["writer", "file", "--bucket", "b"])
    assert "--bucket is for writer ship only" in err
    err = check_refused(capsys, ["writer", "ship", "--prefix", "p"])
    assert "writer ship needs --bucket" in err
    err = check_refused(capsys, ["writer", "ship", "--bucket", "b", "--connect", "tcp://x:1"])
    assert "--connect is not for writer ship" in err


# --- parse_wait_for ---


def test_parse_wait_for_counts():
    assert parse_wait_for(["file.write.", "file.write.=2", "stats.=1", "file.read.=0"]) == Counter(
        {b"file.write.": 3, b"stats.": 1, b"file.read.": 0}
    )
    assert parse_wait_for([]) == Counter()


@pytest.mark.parametrize("value", ["file.write", "file.write=2", "file.write.=", "file.write.=x",
                                   "file.write.=-1", "=3", "", "file.write.=1.5"])  # fmt: skip
def test_parse_wait_for_rejects(value):
    with pytest.raises(UsageError, match="--wait-for"):
        parse_wait_for([value])


def test_parse_wait_for_rejects_superscript_digit_as_usage_error():
    with pytest.raises(UsageError):
        parse_wait_for(["file.write.=²"])


# --- main ---


def test_help_exits_0_with_usage_on_stdout(capsys):
    for flag in ("--help", "-h", "help"):
        assert main([flag]) == 0
        out, err = capsys.readouterr()
        assert out == cli.USAGE
        assert err == ""


def test_no_arguments_exit_2_with_usage_on_stderr(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == cli.USAGE


def check_refused(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"tracecap {argv[0]}: error: ")
    assert err.endswith("\n")
    for fragment in fragments:
        assert fragment in err
    return err


def test_run_with_bogus_capture_exits_2_before_starting(capsys):
    check_refused(capsys, ["run", "--capture", "bogus"], "'bogus'")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--run-dir", "/a", "--run-dir", "/b"], "--run-dir given twice"),
        (["run", "--config"], "--config needs a value"),
        (["run", "--bogus-flag"], "--bogus-flag"),
        (["run", "--output", "xml"], "'xml'"),
        (["run", "--events", "no_such_event"], "no_such_event"),
        (["collector", "--capture", "bogus"], "'bogus'"),
        (["collector", "--wait-for", "file.write"], "--wait-for"),
        (["collector", "--ring-mb", "3"], "power of two"),
        (["collector", "--ring-mb", "0"], "power of two"),
        (["collector", "--ring-mb", "big"], "power of two"),
        (["collector", "--ring-mb", "1", "--ring-mb", "2"], "given twice"),
        (["writer"], "writer needs a KIND"),
        (["writer", "--capture", "write"], "writer needs a KIND"),
        (["writer", "file", "--capture", "pcap:bogus"], "'bogus'"),
        (["tap", "--capture", "write"], "tap takes no option '--capture'"),
        (["tap", "--connect"], "--connect needs a value"),
        (["status", "extra"], "status takes no option 'extra'"),
        (["bridge", "--listen", "tcp://127.0.0.1:1", "--allow", "/a"], "bridge needs --server-key"),
        (["bridge", "x"], "bridge takes no option 'x'"),
        (["keys"], "keys needs one DIR"),
        (["help", "frobnicate"], "help takes one command of: run, collector"),
        (["help", "run", "tap"], "help takes one command of"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_options_exit_2_with_message(capsys, argv, fragment):
    check_refused(capsys, argv, fragment)


def test_missing_config_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "absent.conf"
    check_refused(capsys, ["run", "--config", str(missing)], f"--config {missing}")


def test_ring_mb_superscript_digit_exits_2(capsys):
    check_refused(capsys, ["collector", "--ring-mb", "²"], "power of two")


def test_wait_for_superscript_digit_exits_2(capsys):
    check_refused(capsys, ["collector", "--wait-for=file.write.=²"], "--wait-for")


def test_the_front_end_default_ring_is_the_collector_default():
    from collector import probes

    assert options.RING_FLOOR_MB << 20 == probes.DEFAULT_RING_BYTES


def test_the_ring_is_sized_from_memory_unless_given():
    assert cli.ring_mb_of({}, lambda: 24684092) == 128
    assert cli.ring_mb_of({}, lambda: None) == options.RING_FLOOR_MB
    assert cli.ring_mb_of({"--ring-mb": ["16"]}, lambda: 24684092) == 16


def test_host_mem_total_reads_proc_meminfo(tmp_path):
    assert cli.host_mem_total_kib() == options.mem_total_kib(Path("/proc/meminfo").read_text())
    assert cli.host_mem_total_kib(str(tmp_path / "absent")) is None


def test_the_usage_names_every_command_and_writer_kind(capsys):
    from tracecap import kinds

    for command in cli.COMMANDS:
        assert f"tracecap {command}" in cli.USAGE
    for kind in kinds.KINDS:
        assert kind.name in cli.USAGE.split("writer kinds:")[1].splitlines()[0]
    for word in options.KINDS:
        assert word in cli.command_help("run").split("capture forms")[1]
    err = check_refused(capsys, ["frobnicate"])
    assert err.endswith(f"commands: {', '.join(cli.COMMANDS)}\n")


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_command_is_known(capsys, command):
    assert main([command, "--no-such-flag"]) == 2
    assert "unknown command" not in capsys.readouterr().err


# --- limits checked before anything starts ---


@pytest.mark.parametrize("command", ["run", "collector"])
def test_ring_mb_above_what_a_bpf_ring_can_be_exits_2(capsys, command):
    check_refused(capsys, [command, "--ring-mb", "4096"], "--ring-mb '4096'", "from 1 to 2048")


def test_run_with_non_utf8_dir_exits_2(capsys):
    check_refused(capsys, ["run", "--capture", "dir:/srv/\udcff"], "not valid UTF-8", "0xff")


def test_run_with_dir_past_path_max_exits_2(capsys):
    too_long = "/" + "/".join(["d" * 200] * 19)
    check_refused(capsys, ["run", "--capture", f"dir:{too_long}"], "PATH_MAX (4096)")


def test_run_dir_length_is_bounded_by_sun_path(capsys):
    longest = "/run/" + "r" * (cli.MAX_RUN_DIR_BYTES - len("/run/"))
    assert cli.run_dir_of({"--run-dir": [longest]}) == longest
    err = check_refused(capsys, ["status", "--run-dir", longest + "r"], f"{cli.MAX_RUN_DIR_BYTES}")
    assert "unix socket address (108 bytes" in err


def test_the_longest_run_dir_has_sockets_that_fit_sun_path():
    """MAX_RUN_DIR_BYTES assumes supervisor.sock is the longest socket name: check the plan."""
    import re

    from tracecap.frontend.plan import make_plan

    run_dir = "/" + "r" * (cli.MAX_RUN_DIR_BYTES - 1)
    plan = make_plan(options.parse_args(["--capture", "write"]), [], run_dir, exe="/x/tracecap")
    sockets = re.findall(r"(?:unix://)?(/[^\s;]*\.sock)\b", plan.supervisord_conf)
    sockets.append(plan.bus_endpoint.removeprefix("ipc://"))
    assert {s.rsplit("/", 1)[1] for s in sockets} == {"supervisor.sock", "bus.sock"}
    for path in sockets:
        assert len(path.encode()) <= cli.SUN_PATH_MAX - 1, path
    assert max(len(path) for path in sockets) == cli.SUN_PATH_MAX - 1


@pytest.mark.parametrize(
    "run_dir", ["run/tracecap", "/run/trace cap", "/run/tracecap\n", "/run/é", ""]
)
def test_run_dir_must_be_absolute_and_safe(capsys, run_dir):
    check_refused(capsys, ["status", "--run-dir", run_dir], "--run-dir")


def test_check_interfaces_asks_only_for_net_iface():
    asked: list[str] = []

    def index_of(name: str) -> int:
        asked.append(name)
        return 7

    cli.check_interfaces(options.parse_args(["--capture", "network"]), index_of)
    assert asked == []
    cli.check_interfaces(options.parse_args(["--capture", "net=eth0"]), index_of)
    assert asked == ["eth0"]


def test_check_interfaces_refuses_an_unknown_interface():
    def index_of(name: str) -> int:
        raise OSError("no interface with this name")

    with pytest.raises(UsageError, match="'net=eth9': no such network interface on this host"):
        cli.check_interfaces(options.parse_args(["--capture", "net=eth9"]), index_of)


def test_run_with_absent_interface_exits_2(capsys):
    import socket

    name = "tcnoif0"
    with pytest.raises(OSError):
        socket.if_nametoindex(name)
    check_refused(capsys, ["run", "--capture", f"net={name}"], f"'net={name}': no such network")


def test_run_with_loopback_interface_reaches_the_front_end(monkeypatch):
    started: list[tuple] = []
    monkeypatch.setattr(tracecap.frontend.supervise, "run", lambda *args: started.append(args))
    main(["run", "--capture", "net=lo", "--ring-mb", "2048"])
    [(config, _argv, run_dir, ring_mb, bridge)] = started
    assert (config.pcap.iface, run_dir, ring_mb, bridge) == ("lo", cli.DEFAULT_RUN_DIR, 2048, [])


def test_run_with_nats_starts_the_bridge_with_its_flags(monkeypatch):
    started: list[tuple] = []
    monkeypatch.setattr(tracecap.frontend.supervise, "run", lambda *args: started.append(args))
    main(["run", "--nats", "nats://127.0.0.1:4222", "--host", "web1", "--replicas", "3"])
    [(_config, _argv, _run_dir, _ring_mb, bridge)] = started
    assert bridge == ["--nats", "nats://127.0.0.1:4222", "--host", "web1", "--replicas", "3"]


def test_run_refuses_bridge_flags_that_the_bridge_would_refuse(capsys):
    check_refused(capsys, ["run", "--host", "web1"], "--host goes with --nats")
    check_refused(capsys, ["run", "--nats", "nats://h:1", "--replicas", "9"], "--replicas '9'")
    check_refused(capsys, ["run", "--nats", "nats://h:1", "--host", "a.b"], "--host")
    check_refused(
        capsys, ["run", "--nats", "nats://h:1", "--creds", "/x y"], "--creds '/x y' cannot"
    )


def test_config_file_keeps_non_utf8_bytes_as_argv_does(tmp_path):
    """`tracecap run` writes its options (argv, surrogate escapes and all) into a file its
    programs read with --config: a non-UTF-8 comm= or path filter must survive the trip."""
    from tracecap.frontend.plan import options_text

    argv = ["--scope", "comm=\udcff\udcfe", "--capture", "write=/tmp/\udce9*"]
    path = tmp_path / "options.conf"
    path.write_text(options_text(argv), encoding="utf-8", errors="surrogateescape")
    assert cli.expand_config({"--config": [str(path)]}, []) == argv
    config = options.parse_args(argv)
    assert config.scope.comm == (b"\xff\xfe",)
    assert config.write.paths == (b"/tmp/\xe9",)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["report"], "report needs one OUT_DIR"),
        (["report", "a", "b"], "report needs one OUT_DIR"),
        (["report", "a", "-o", "x.html", "--output-file", "y.html"], "-o given twice"),
    ],
)
def test_report_refuses_a_bad_command_line(capsys, argv, fragment):
    check_refused(capsys, argv, fragment)


def test_report_writes_the_page_where_o_says(tmp_path, capsys):
    (tmp_path / "index.jsonl").write_text('{"kind": "write", "path": "host/w", "pid": 1}\n')
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert "tracecap report: wrote" in capsys.readouterr().err
