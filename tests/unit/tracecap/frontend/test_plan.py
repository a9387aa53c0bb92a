"""The plan of `tracecap run`: the programs it starts, what the collector waits for, and the
options file it hands them."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tracecap import bus, options
from tracecap.frontend import supervisor_conf
from tracecap.frontend.plan import (
    make_plan,
    options_text,
    printer_topics,
    programs,
    wait_for_topics,
)


def config(*argv: str) -> options.Config:
    return options.parse_args(list(argv))


def test_writer_starts_before_the_collector_and_gets_only_safe_arguments():
    progs = programs(config("--capture", "write=/tmp/a b #1;*"), "/run/tc")
    assert [p.name for p in progs] == ["writer-file", "writer-events", "collector"]
    assert progs[0].user == progs[1].user == "tracecap" and progs[2].user == "root"
    assert progs[0].priority == progs[1].priority < progs[2].priority
    # a writer that refused its configuration is left stopped; any other exit restarts it
    for writer in progs[:2]:
        assert (writer.autorestart, writer.exitcodes) == ("unexpected", "2")
    assert supervisor_conf.REFUSED_EXIT == 2
    for p in progs:
        assert "--config" in p.command and "/run/tc/options.conf" in p.command
        assert not any("#" in arg or " " in arg for arg in p.command)


def test_collector_waits_for_the_writer_the_printer_and_stats():
    assert wait_for_topics(config("--capture", "write", "--output", "json")) == {
        bus.TOPIC_FILE_WRITE: 2,
        bus.TOPIC_PROC: 1,  # the events writer
        bus.TOPIC_STATS: 2,  # the front end and the events writer
    }
    assert wait_for_topics(config("--capture", "read")) == {
        bus.TOPIC_FILE_READ: 1,
        bus.TOPIC_PROC: 1,
        bus.TOPIC_STATS: 2,
    }


_TOKEN = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKEN, max_size=8))
def test_options_file_gives_back_the_exact_argv(argv):
    """What the options file holds (shlex.join) is what the programs' --config reads back."""
    assert options.expand_config_file(options_text(argv)) == argv


def test_every_kind_runs_its_writer_in_the_registrys_order():
    every = config(*[a for k in options.KINDS for a in ("--capture", k)])
    assert [p.name for p in programs(every, "/run/tc")] == [
        "writer-file", "writer-exec", "writer-mem", "writer-module", "writer-bpf", "writer-pcap",
        "writer-events", "collector",
    ]  # fmt: skip
    assert [p.name for p in programs(config("--capture", "read"), "/run/tc")] == [
        "writer-file",
        "writer-events",
        "collector",
    ]


def test_the_collector_gets_the_default_ring_unless_told():
    collector = programs(config("--capture", "exec"), "/run/tc")[-1].command
    assert f"--ring-mb={options.RING_FLOOR_MB}" in collector
    assert "--ring-mb=64" in programs(config("--capture", "exec"), "/run/tc", 64)[-1].command


def test_events_are_read_where_they_travel_and_packets_only_when_named():
    assert printer_topics(config("--capture", "exec", "--capture", "network")) == ()
    assert printer_topics(
        config("--capture", "write", "--capture", "exec", "--capture", "net", "--output", "json")
    ) == (bus.TOPIC_FILE_WRITE, bus.TOPIC_PROC)
    assert printer_topics(
        config("--capture", "net", "--output", "json", "--events", "net_packet_dns")
    ) == (bus.TOPIC_NET_PACKETS,)


def test_forks_and_exits_are_read_on_proc_once_when_named():
    named = ("--output", "json", "--events", "sched_process_exit")
    assert printer_topics(config("--capture", "write", *named)) == (
        bus.TOPIC_FILE_WRITE,
        bus.TOPIC_PROC,
    )
    # exec's events travel on proc. too: one subscription, which the collector waits for once
    assert printer_topics(config("--capture", "exec", *named)) == (bus.TOPIC_PROC,)
    assert printer_topics(config("--capture", "write", "--output", "json")) == (
        bus.TOPIC_FILE_WRITE,
    )


def test_a_plan_holds_the_files_its_programs_read():
    argv = ["--capture", "write", "--capture", "dir:/srv/case #1"]
    plan = make_plan(config(*argv), argv, "/run/tc", exe="/venv/bin/tracecap")
    assert [p.name for p in plan.programs] == ["writer-file", "writer-events", "collector"]
    assert plan.conf_path == "/run/tc/supervisord.conf"
    assert "[program:writer-file]" in plan.supervisord_conf
    assert "command=/venv/bin/tracecap writer file --run-dir /run/tc --config " in (
        plan.supervisord_conf
    )
    assert options.expand_config_file(plan.options) == argv
    assert plan.options_path == "/run/tc/options.conf"
    assert plan.stats_dir == "/run/tc/stats"
    assert plan.bus_endpoint == "ipc:///run/tc/bus.sock"
    assert plan.log_paths == [
        "/run/tc/writer-file.log",
        "/run/tc/writer-events.log",
        "/run/tc/collector.log",
    ]


def test_server_adds_an_unprivileged_exporter_that_the_collector_does_not_wait_for():
    argv = ["--capture", "write", "--server", "metrics", "--server", "http-address=:9000"]
    plan = make_plan(config(*argv), argv, "/run/tc", exe="/venv/bin/tracecap")
    by_name = {p.name: p for p in plan.programs}
    assert list(by_name) == ["writer-file", "writer-events", "exporter", "collector"]
    exporter = by_name["exporter"]
    assert exporter.user == "tracecap"
    assert exporter.autorestart == "true"
    assert exporter.priority < by_name["collector"].priority  # up first, stopped last
    # an address in use ends in FATAL, not a restart loop
    assert exporter.startsecs == supervisor_conf.EXPORTER_STARTSECS > 1
    # the address travels in the options file, which every program reads
    assert exporter.command == [
        "/venv/bin/tracecap", "exporter", "--run-dir", "/run/tc", "--config",
        "/run/tc/options.conf",
    ]  # fmt: skip
    assert options.parse_args(options.expand_config_file(plan.options)).server.port == 9000
    assert "exporter" not in " ".join(by_name["collector"].command)
    assert "/run/tc/exporter.log" in plan.log_paths


def test_no_exporter_without_server():
    names = [p.name for p in programs(config("--capture", "write"), "/run/tc")]
    assert "exporter" not in names


def test_nats_adds_the_bridge_as_a_writer_is_run_and_waited_for():
    """As the tracecap user under the run's supervisord (what exempts the writers from the
    subscriber bounds), started before the collector, which waits for its subscription."""
    argv = ["--capture", "write"]
    bridge = ["--nats", "nats://127.0.0.1:4222", "--host", "web1"]
    plan = make_plan(config(*argv), argv, "/run/tc", exe="/venv/bin/tracecap", bridge=bridge)
    by_name = {p.name: p for p in plan.programs}
    relay = by_name["bridge-nats"]
    assert relay.user == "tracecap" and relay.autorestart == "true"
    assert relay.priority == by_name["writer-file"].priority < by_name["collector"].priority
    assert relay.command == ["/venv/bin/tracecap", "bridge", *bridge, "--run-dir", "/run/tc"]
    plain = wait_for_topics(config(*argv))
    bridged = wait_for_topics(config(*argv), bridged=True)
    assert bridged - plain == {topic: 1 for topic in bus.TOPICS}
    assert "--wait-for=file.write.=2" in by_name["collector"].command
    assert "bridge-nats" not in {p.name for p in programs(config(*argv), "/run/tc")}
