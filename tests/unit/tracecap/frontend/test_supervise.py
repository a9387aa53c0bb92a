"""Pure parts of `tracecap run`: the programs it starts, what the collector waits for, the
options file it hands them, and the summary line."""

import shlex

from hypothesis import given, settings
from hypothesis import strategies as st

from tracecap import bus, options
from tracecap.frontend.supervise import (
    merge_epochs,
    programs,
    status_line,
    summary_line,
    wait_for_topics,
)


def config(*argv: str) -> options.Config:
    return options.parse_args(list(argv))


def test_writer_starts_before_the_collector_and_gets_only_safe_arguments():
    progs = programs(config("--capture", "write=/tmp/a b #1;*"), "/run/tc")
    assert [p.name for p in progs] == ["writer-file", "collector"]
    assert progs[0].user == "tracecap" and progs[1].user == "root"
    assert progs[0].priority < progs[1].priority
    for p in progs:
        assert "--config" in p.command and "/run/tc/options.conf" in p.command
        assert not any("#" in arg or " " in arg for arg in p.command)


def test_collector_waits_for_the_writer_the_printer_and_stats():
    assert wait_for_topics(config("--capture", "write", "--output", "json")) == {
        bus.TOPIC_FILE_WRITE: 2,
        bus.TOPIC_STATS: 1,
    }
    assert wait_for_topics(config("--capture", "read")) == {
        bus.TOPIC_FILE_READ: 1,
        bus.TOPIC_STATS: 1,
    }


_TOKEN = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKEN, max_size=8))
def test_options_file_gives_back_the_exact_argv(argv):
    """What write_options stores (shlex.join) is what the programs' --config reads back."""
    assert options.expand_config_file(shlex.join(argv) + "\n") == argv


def test_summary_counts_every_loss():
    collector = {
        "kernel": {
            "write.events": 3,
            "write.bytes": 100,
            "write.event_drops": 1,
            "write.chunk_drops": 2,
            "write.dropped_bytes": 50,
            "write.pending_full": 4,
            "read.events": 1,
            "read.bytes": 5,
        },
        "collector": {"decode_errors": 6, "bus_dropped_messages": 2, "bus_dropped_bytes": 9},
    }
    writers = {
        "writer-file": {
            "counters": {
                "artifacts": 2,
                "gap_messages": 7,
                "malformed": 8,
                "write_errors": 1,
                "handler_errors": 1,
                "index_errors": 1,
            }
        }
    }
    assert summary_line(collector, writers) == (
        "tracecap: summary: 4 events, 105 bytes captured, 2 artifacts; losses: kernel ring "
        "buffer 3 records (50 bytes), syscall table full 4, collector decode errors 6, bus gaps "
        "7 messages, malformed messages 8, writer errors 3, disk budget 0 bytes refused, bus "
        "backlog full 2 messages (9 bytes)"
    )


def test_status_line_rate_bytes_artifacts_losses():
    before = {"kernel": {"write.events": 100, "write.bytes": 0}}
    now = {"kernel": {"write.events": 300, "read.events": 100, "write.bytes": 2_500_000,
                      "write.chunk_drops": 2, "net.event_drops": 1}}  # fmt: skip
    assert status_line(now, before, 2.0, 7) == (
        "tracecap: 150 events/s, 2.5 MB captured, 7 artifacts, 3 records lost"
    )


def test_a_restarted_collector_adds_to_the_totals():
    first = {"kernel": {"write.events": 5, "write.chunk_drops": 1}, "collector": {"messages": 9}}
    second = {"kernel": {"write.events": 2}, "collector": {"messages": 3, "note": "x"}}
    assert merge_epochs({1: first, 2: second}) == {
        "kernel": {"write.events": 7, "write.chunk_drops": 1},
        "collector": {"messages": 12},
    }


def test_unreachable_parent_names_the_directory_that_blocks():
    import shutil
    import tempfile
    from pathlib import Path

    from tracecap.frontend.supervise import unreachable_parent

    base = Path(tempfile.mkdtemp(prefix="tc-reach-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        base.chmod(0o755)
        closed = base / "closed"
        (closed / "dir").mkdir(parents=True)
        closed.chmod(0o700)
        nobody = 65534
        assert unreachable_parent(str(closed / "dir" / "out"), nobody, {nobody}) == str(closed)
        closed.chmod(0o711)
        assert unreachable_parent(str(closed / "dir" / "out"), nobody, {nobody}) is None
    finally:
        shutil.rmtree(base)


def test_messages_dropped_at_the_very_end_are_counted_from_the_collectors_tally():
    from tracecap.frontend.supervise import unseen_tail

    stats = {7: {"published": {"file.write.": 100, "stats.": 50}}, 8: {"published": {}}}
    writers = {"writer-file": {"last_seq": {"7:file.write.": 89, "9:file.write.": 3}}}
    assert unseen_tail(stats, writers) == 10  # seq 90..99 never arrived
