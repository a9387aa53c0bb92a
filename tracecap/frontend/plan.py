"""What `tracecap run` starts, decided from the options and the kind registry alone (pure).

Which writers run (and the exporter, with ``--server``), the supervisord programs with their
argv, the topics the collector waits for before it attaches anything, and the text of the files
the programs read. Nothing here touches the system, so a plan can be checked before anything
starts.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tracecap import bus, kinds
from tracecap.frontend import supervisor_conf
from tracecap.options import RING_FLOOR_MB, Config


def tracecap_exe() -> str:
    """The console script, so that every child's command line names tracecap (see process_tree)."""
    return os.path.join(os.path.dirname(sys.executable), "tracecap")


def writer_kinds(config: Config) -> list[str]:
    return [kind.name for kind in kinds.enabled(config.kinds())]


def printer_topics(config: Config) -> tuple[bytes, ...]:
    """What the front end reads to print events: a kind's events may travel apart from its
    artifacts (exec events come on proc., not with the binaries on exec.), and some are events
    only when asked for by name (packets; forks and exits, on proc. whatever --capture says)."""
    if config.output != "json":
        return ()
    named = set(config.events)
    sources = [kinds.BY_TOKEN[token] for token in config.kinds()]
    topics = [
        source.printed_from
        for source in sources
        if not source.events_when_named or named.intersection(source.events)
    ]
    if named.intersection(kinds.PROCESS_EVENTS):
        topics.append(bus.TOPIC_PROC)
    return tuple(dict.fromkeys(topics))  # the front end subscribes to each once


def wait_for_topics(config: Config, bridged: bool = False) -> Counter[bytes]:
    """Subscriptions the collector must see before attaching: writers' and our own, and with
    ``bridged`` the NATS bridge's (one subscription to everything: one more for every topic)."""
    wanted: Counter[bytes] = Counter(config.topics())  # one writer per topic
    if bridged:
        wanted.update(bus.TOPICS)
    for kind in kinds.KINDS:
        if kind.always:  # the events writer: proc. and stats., whatever --capture says
            wanted.update(kind.own_topics)
    wanted.update(printer_topics(config))
    wanted[bus.TOPIC_STATS] += 1
    return wanted


def options_path(run_dir: str) -> str:
    return os.path.join(run_dir, "options.conf")


def options_text(argv: list[str]) -> str:
    """The run's options as a --config file, for every program.

    A file rather than the supervisord command lines, which cannot carry arbitrary text.
    """
    return "# written by `tracecap run` for the programs it starts\n" + shlex.join(argv) + "\n"


#: The program ``tracecap run --nats`` adds: ``tracecap bridge --nats``, as the tracecap user
#: under the run's supervisord like the writers, which is what exempts it, as them, from being
#: disconnected for reading too slowly (tracecap/subscribers.py): at full speed an ordinary
#: subscriber is cut off and what it missed is a gap in the stream.
BRIDGE_PROGRAM = "bridge-nats"


def programs(
    config: Config,
    run_dir: str,
    ring_mb: int = RING_FLOOR_MB,
    exe: str | None = None,
    bridge: Sequence[str] = (),
) -> list[supervisor_conf.Program]:
    """The run's programs; ``bridge``: the NATS bridge's flags (``--nats URLS`` ...), if any."""
    exe = exe or tracecap_exe()
    common = ["--run-dir", run_dir, "--config", options_path(run_dir)]
    progs = [
        supervisor_conf.Program(
            f"writer-{kind}",
            [exe, "writer", kind, *common],
            "tracecap",
            supervisor_conf.WRITER_PRIORITY,
            "unexpected",
            exitcodes=str(supervisor_conf.REFUSED_EXIT),
        )
        for kind in writer_kinds(config)
    ]
    if config.server.enabled:
        progs.append(
            supervisor_conf.Program(
                "exporter",
                [exe, "exporter", *common],
                "tracecap",
                supervisor_conf.EXPORTER_PRIORITY,
                "true",
                startsecs=supervisor_conf.EXPORTER_STARTSECS,
            )
        )
    if bridge:
        progs.append(
            supervisor_conf.Program(
                BRIDGE_PROGRAM,
                [exe, "bridge", *bridge, "--run-dir", run_dir],
                "tracecap",
                supervisor_conf.WRITER_PRIORITY,
                "true",
            )
        )
    wanted = wait_for_topics(config, bridged=bool(bridge))
    wait = [f"--wait-for={t.decode()}={n}" for t, n in sorted(wanted.items())]
    progs.append(
        supervisor_conf.Program(
            "collector",
            [exe, "collector", *wait, f"--ring-mb={ring_mb}", *common],
            "root",
            supervisor_conf.COLLECTOR_PRIORITY,
            "false",
        )
    )
    return progs


@dataclass(frozen=True)
class Plan:
    """One run of `tracecap run`: its programs and the files they read, before any is written."""

    run_dir: str
    programs: tuple[supervisor_conf.Program, ...]
    #: What the front end subscribes to besides stats, to print events.
    printer_topics: tuple[bytes, ...]
    #: The text of supervisord.conf.
    supervisord_conf: str
    #: The text of options.conf.
    options: str

    @property
    def conf_path(self) -> str:
        return os.path.join(self.run_dir, "supervisord.conf")

    @property
    def options_path(self) -> str:
        return options_path(self.run_dir)

    @property
    def stats_dir(self) -> str:
        return os.path.join(self.run_dir, "stats")

    @property
    def bus_endpoint(self) -> str:
        return f"ipc://{self.run_dir}/bus.sock"

    @property
    def log_paths(self) -> list[str]:
        """One log per program, where supervisord writes its output."""
        return [os.path.join(self.run_dir, f"{p.name}.log") for p in self.programs]


def make_plan(
    config: Config,
    argv: list[str],
    run_dir: str,
    ring_mb: int = RING_FLOOR_MB,
    exe: str | None = None,
    bridge: Sequence[str] = (),
) -> Plan:
    """The plan of a run; supervisor_conf.UnsafeValue if a program's argv cannot be written."""
    progs = tuple(programs(config, run_dir, ring_mb, exe, bridge))
    return Plan(
        run_dir=run_dir,
        programs=progs,
        printer_topics=printer_topics(config),
        supervisord_conf=supervisor_conf.render(run_dir, progs),
        options=options_text(argv),
    )
