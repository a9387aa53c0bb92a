"""supervisor_conf.render: the generated supervisord.conf parses and gives back every argv."""

import configparser
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from supervisor.options import UnhosedConfigParser, expand

from tracecap.frontend.supervisor_conf import (
    COLLECTOR_PRIORITY,
    WRITER_PRIORITY,
    Program,
    UnsafeValue,
    render,
)

RUN_DIR = "/run/tracecap"
EXE = "/opt/tracecap/venv/bin/tracecap"


def programs(*extra: str) -> list[Program]:
    common = ["--run-dir", RUN_DIR, "--capture", "write", *extra]
    return [
        Program("writer-file", [EXE, "writer", "file", *common], "tracecap", WRITER_PRIORITY,
                "unexpected", exitcodes="2"),
        Program("collector", [EXE, "collector", "--wait-for=file.write.=1", *common], "root",
                COLLECTOR_PRIORITY, "false"),
    ]  # fmt: skip


def parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def command_argv(parser: configparser.RawConfigParser, program: str) -> list[str]:
    return shlex.split(parser.get(f"program:{program}", "command"))


def test_sections_and_program_settings():
    parser = parse(render(RUN_DIR, programs()))
    assert parser.sections() == [
        "supervisord",
        "unix_http_server",
        "rpcinterface:supervisor",
        "supervisorctl",
        "program:writer-file",
        "program:collector",
    ]
    assert parser.get("supervisord", "nodaemon") == "true"
    assert parser.get("supervisord", "user") == "root"
    assert parser.get("supervisord", "logfile") == f"{RUN_DIR}/supervisord.log"
    assert parser.get("supervisord", "pidfile") == f"{RUN_DIR}/supervisord.pid"
    assert parser.get("unix_http_server", "file") == f"{RUN_DIR}/supervisor.sock"
    assert parser.get("unix_http_server", "chmod") == "0700"
    assert parser.get("supervisorctl", "serverurl") == f"unix://{RUN_DIR}/supervisor.sock"

    writer, collector = parser["program:writer-file"], parser["program:collector"]
    assert writer["user"] == "tracecap"
    assert collector["user"] == "root"
    assert (writer["autorestart"], writer["exitcodes"]) == ("unexpected", "2")
    assert (collector["autorestart"], collector["exitcodes"]) == ("false", "0")
    assert writer["stdout_logfile"] == f"{RUN_DIR}/writer-file.log"
    assert collector["stdout_logfile"] == f"{RUN_DIR}/collector.log"
    assert writer["environment"] == 'HOME="/nonexistent",USER="tracecap"'
    assert collector["stopasgroup"] == collector["killasgroup"] == "true"


def test_writers_start_before_and_stop_after_the_collector():
    parser = parse(render(RUN_DIR, programs()))
    writer = int(parser.get("program:writer-file", "priority"))
    collector = int(parser.get("program:collector", "priority"))
    assert (writer, collector) == (WRITER_PRIORITY, COLLECTOR_PRIORITY)
    assert writer < collector


def test_command_round_trips_plain_argv():
    parser = parse(render(RUN_DIR, programs()))
    assert command_argv(parser, "collector") == [
        EXE, "collector", "--wait-for=file.write.=1", "--run-dir", RUN_DIR, "--capture", "write",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "arg", ["dir:/srv/case #1", "write=/tmp/a ;b*", "50%", "%(here)s", "a\nb", "it's", 'x"y', ""]
)
def test_render_refuses_text_supervisord_would_misread(arg):
    with pytest.raises(UnsafeValue, match="cannot be used"):
        render(RUN_DIR, programs(arg))


@pytest.mark.parametrize("run_dir", ["/tmp/run 100%", "/tmp/a;b", "/tmp/a\nb", "/tmp/#x"])
def test_render_refuses_an_unsafe_run_dir(run_dir):
    with pytest.raises(UnsafeValue, match="run directory"):
        render(run_dir, programs())


def test_command_is_what_supervisord_itself_expands():
    """supervisord's own parser and %-expansion give back every argv unchanged."""
    progs = programs("--config", "/run/tracecap/options.conf", "--wait-for=stats.=1")
    parser = UnhosedConfigParser()
    parser.read_string(render(RUN_DIR, progs))
    for p in progs:
        raw = parser.get(f"program:{p.name}", "command")
        expanded = expand(raw, {"here": "/etc", "program_name": p.name}, "command")
        assert shlex.split(expanded) == list(p.command)


_SAFE_ARG = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=@+,-",
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(args=st.lists(_SAFE_ARG, max_size=6))
def test_any_safe_argv_round_trips(args):
    parser = UnhosedConfigParser()
    parser.read_string(render(RUN_DIR, programs(*args)))
    raw = parser.get("program:collector", "command")
    assert shlex.split(expand(raw, {}, "command"))[7:] == args


def test_startsecs_is_the_programs():
    progs = [*programs(), Program("exporter", [EXE, "exporter"], "tracecap", 10, "true", 5)]
    parser = parse(render(RUN_DIR, progs))
    assert parser.get("program:collector", "startsecs") == "0"
    assert parser.get("program:exporter", "startsecs") == "5"
    assert parser.get("program:exporter", "startretries") == "3"
