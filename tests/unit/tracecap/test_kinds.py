"""The artifact-kind registry: consistent in itself, with the kernel's counters, with what the
options accept, and with the static supervisord deployment."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from bpf import records
from tracecap import bus, kinds, options
from tracecap.cli import parse_wait_for
from tracecap.frontend import tracee_json
from tracecap.frontend.supervisor_conf import check_safe

ROOT = Path(__file__).resolve().parents[3]


def test_names_tokens_and_topics_are_unique_and_known():
    words = [word for source in kinds.SOURCES for word in source.words]
    assert len(set(words)) == len(words)
    assert len(kinds.BY_NAME) == len(kinds.KINDS)
    topics = [source.topic for source in kinds.SOURCES]
    assert len(set(topics)) == len(topics)
    assert set(topics) <= set(bus.TOPICS) - {bus.TOPIC_PROC, bus.TOPIC_STATS}
    assert {s.printed_from for s in kinds.SOURCES} <= set(bus.TOPICS) - {bus.TOPIC_STATS}
    for kind in kinds.KINDS:
        check_safe(kind.program, "program name")
        assert kind.writer.startswith("writers.") and ":" in kind.writer
    assert len(set(kinds.EVENT_NAMES)) == len(kinds.EVENT_NAMES)


def test_the_counter_kinds_are_the_kernels_in_its_order():
    counters = (*(source.counter for source in kinds.SOURCES), kinds.PROCESS_COUNTER)
    assert counters == records.COUNTER_KINDS


@pytest.mark.parametrize(("word", "token"), [(w, s.token) for s in kinds.SOURCES for w in s.words])
def test_every_capture_word_turns_on_its_kind_and_topic(word, token):
    for given in (word, f"artifact:{word}"):
        config = options.parse_args(["--capture", given])
        assert config.kinds() == (token,)
        assert config.topics() == (kinds.BY_TOKEN[token].topic,)
        assert [k.name for k in kinds.enabled(config.kinds())] == [
            k.name for k in kinds.KINDS if k.always or token in [s.token for s in k.sources]
        ]


def test_only_the_events_writer_runs_whatever_is_captured():
    assert [k.name for k in kinds.KINDS if k.always] == ["events"]
    assert [k.name for k in kinds.enabled(())] == ["events"]
    assert kinds.BY_NAME["events"].topics == (bus.TOPIC_PROC, bus.TOPIC_STATS)


def test_every_event_is_accepted_by_events_and_belongs_to_one_source():
    config = options.parse_args(["--events", ",".join(kinds.EVENT_NAMES)])
    assert config.events == kinds.EVENT_NAMES
    owners = {event: s.token for s in kinds.SOURCES for event in s.events}
    owners |= dict.fromkeys(kinds.PROCESS_EVENTS, "proc.")  # of no source: see kinds.py
    assert len(owners) == len(kinds.EVENT_NAMES)


def test_file_events_are_declared_on_the_direction_that_prints_them():
    for syscall, event in tracee_json._EVENT_NAMES.items():
        direction = "read" if "read" in syscall or "recv" in syscall else "write"
        assert event in kinds.BY_TOKEN[direction].events, syscall


# --- the static deployment ---


def static_programs() -> dict[str, configparser.SectionProxy]:
    parser = configparser.RawConfigParser()
    assert parser.read(ROOT / "supervisord.conf")
    return {
        section.removeprefix("program:"): parser[section]
        for section in parser.sections()
        if section.startswith("program:")
    }


def test_the_static_deployment_has_a_writer_program_for_every_kind():
    programs = static_programs()
    collector_priority = int(programs["collector"]["priority"])
    for kind in kinds.KINDS:
        program = programs[kind.program]
        argv = shlex.split(program["command"])
        assert argv[1:3] == ["writer", kind.name]
        assert program["user"] == "tracecap"
        assert int(program["priority"]) < collector_priority  # started first, stopped last
    # and the exporter (/metrics, /healthz) and the NATS bridge (off: autostart=false), which
    # are no writers
    others = {"collector", "exporter", "bridge-nats"}
    assert set(programs) == {*others, *(kind.program for kind in kinds.KINDS)}
    bridge = programs["bridge-nats"]
    assert bridge["user"] == "tracecap" and bridge["autostart"] == "false"
    assert shlex.split(bridge["command"])[1:3] == ["bridge", "--nats"]


def test_the_static_collector_waits_for_exactly_the_writers_started_with_it():
    """Every topic it waits for has a writer that starts (else it would wait in vain), and
    every writer that starts is waited for (else it would attach before that writer listens)."""
    programs = static_programs()
    argv = shlex.split(programs["collector"]["command"])
    waited = set(
        parse_wait_for([a.removeprefix("--wait-for=") for a in argv if a.startswith("--wait-for=")])
    )
    started = [
        kind for kind in kinds.KINDS if programs[kind.program].get("autostart", "true") == "true"
    ]
    assert started, "the static deployment starts no writer"
    assert waited <= {topic for kind in started for topic in kind.topics}
    for kind in started:
        assert waited & set(kind.topics), f"the collector does not wait for {kind.program}"
