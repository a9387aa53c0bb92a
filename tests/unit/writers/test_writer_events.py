"""The events writer: events.jsonl holds every exec and the capture's start, stop and losses."""

from __future__ import annotations

from pathlib import Path

from tests.support.envelopes import exit_env, fork_env, message, proc_env, stats_env
from tests.support.writer_harness import OutputTree, read_index
from tracecap import bus
from writers.events import EVENTS_NAME, EventsWriter, loss_summary


def events(tree: OutputTree) -> list[dict]:
    return read_index(tree.root, EVENTS_NAME)


def test_every_exec_is_recorded_even_of_the_same_binary(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        writer = EventsWriter(tree.out, tree.index, clock=lambda: 5)
        for pid in (200, 201):
            env = proc_env(pid=pid, ppid=100, argv=[b"ls", b"-l\xff"], comm=b"ls\xfe")
            writer.handle(message(bus.TOPIC_PROC, env))
        writer.close()
        got = events(tree)
        assert [r["event"] for r in got] == ["writer_start", "exec", "exec", "writer_stop"]
        first = got[1]
        assert (first["pid"], first["ppid"], first["uid"]) == (200, 100, 1000)
        assert first["argv"] == ["ls", "-l\\xff"] and first["argv_hex"] == ["6c73", "2d6cff"]
        assert first["comm"] == "ls\\xfe" and first["comm_hex"] == "6c73fe"
        assert first["source_path"] == "/tmp/payload" and first["memfd"] is False
        assert tree.records() == []  # the index is not touched


def test_forks_and_exits_are_recorded_for_the_process_tree(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        writer = EventsWriter(tree.out, tree.index, clock=lambda: 5)
        writer.handle(message(bus.TOPIC_PROC, fork_env(pid=300, ppid=1, child_pid=301)))
        writer.handle(message(bus.TOPIC_PROC, exit_env(pid=301, signal=9, wait_status=9)))
        writer.handle(message(bus.TOPIC_PROC, proc_env(event="clone3")))  # unknown: no record
        writer.close()
        got = events(tree)
        assert [r["event"] for r in got] == ["writer_start", "fork", "exit", "writer_stop"]
        fork, exit_ = got[1], got[2]
        assert (fork["pid"], fork["ppid"], fork["child_pid"], fork["comm"]) == (300, 1, 301, "sh")
        assert fork["child_start"] == 1_700_000_000_000_000_123 and fork["child_ns_pid"] == 43
        assert (exit_["pid"], exit_["exit_code"], exit_["signal"], exit_["wait_status"]) == (
            301, 3, 9, 9,
        )  # fmt: skip


def test_start_and_stop_of_each_epoch_with_the_loss_summary(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        writer = EventsWriter(tree.out, tree.index, clock=lambda: 5)
        kernel = {"write.event_drops": 3, "write.events": 90, "exec.event_drops": 0}
        for seq, state in enumerate(("ready", "ready", "stopped")):
            env = stats_env(
                seq=seq,
                ts=10_000_000_000 + seq,
                uptime_s=2.5,
                state=state,
                kernel=kernel,
                collector={"lost_bytes": 4096, "messages": 7},
            )
            writer.handle(message(bus.TOPIC_STATS, env))
        writer.close()
        got = events(tree)
        assert [r["event"] for r in got] == [
            "writer_start",
            "capture_start",
            "capture_stop",
            "writer_stop",
        ]
        start, stop = got[1], got[2]
        assert start["ts"] == 10_000_000_000 - 2_500_000_000  # when the collector started
        assert stop["ts"] == 10_000_000_002 and stop["state"] == "stopped"
        assert stop["kernel_drops"] == {"write.event_drops": 3}
        assert stop["collector"] == {"lost_bytes": 4096}


def test_a_collector_that_never_said_stop_leaves_its_last_stats(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        writer = EventsWriter(tree.out, tree.index, clock=lambda: 5)
        writer.handle(message(bus.TOPIC_STATS, stats_env(epoch=1, ts=100)))
        writer.handle(message(bus.TOPIC_STATS, stats_env(epoch=2, ts=200)))  # restarted
        writer.close()
        got = [(r["event"], r.get("epoch")) for r in events(tree)]
        assert got == [
            ("writer_start", None),
            ("capture_start", 1),
            ("capture_last_stats", 1),
            ("capture_start", 2),
            ("capture_last_stats", 2),
            ("writer_stop", None),
        ]


def test_a_restarted_writer_appends_and_says_so(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        EventsWriter(tree.out, tree.index, clock=lambda: 1, host=lambda: "h1").close()
        EventsWriter(tree.out, tree.index, clock=lambda: 2, host=lambda: "h1").close()
        assert [(r["event"], r["ts"], r.get("host")) for r in events(tree)] == [
            ("writer_start", 1, "h1"),
            ("writer_stop", 1, None),
            ("writer_start", 2, "h1"),
            ("writer_stop", 2, None),
        ]


def test_loss_summary_ignores_counters_of_the_wrong_type() -> None:
    env = {"kernel": {"x_drops": "3", "y_drops": 2}, "collector": {"lost_bytes": None}}
    assert loss_summary(env) == {"kernel_drops": {"y_drops": 2}, "collector": {}}
    assert loss_summary({"kernel": [], "collector": 5}) == {"kernel_drops": {}, "collector": {}}
