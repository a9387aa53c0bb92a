"""The events writer: events.jsonl holds every exec, every module and BPF load attempt (written by
their writers) and the capture's start, stop and losses, rotated as the index is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tests.support.envelopes import (
    bpf_env,
    exit_env,
    fork_env,
    message,
    module_env,
    proc_env,
    stats_env,
)
from tests.support.writer_harness import OutputTree, read_index
from tracecap import bus, rotation
from tracecap.rotation import Rotation
from writers.bpf import BpfWriter
from writers.events import (
    EVENTS_NAME,
    LOAD_ATTEMPTS,
    EventsWriter,
    attempt_record,
    loss_summary,
)
from writers.index import Index
from writers.module import ModuleWriter
from writers.outdir import OutputDir


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


INSNS = bytes.fromhex("b7000000000000009500000000000000")  # r0 = 0; exit


def send_object(writer: Any, topic: bytes, payload: bytes, env: dict[str, Any]) -> None:
    writer.handle(message(topic, {**env, "obj_len": len(payload)}, payload))


def test_every_bpf_load_attempt_is_an_event_with_its_artifact(tmp_path: Path) -> None:
    """A load that stored the program, the same program loaded again, and one the verifier
    refused: three events, the first with the artifact, the second pointing at it."""
    with OutputTree(tmp_path) as tree:
        writer = BpfWriter(tree.out, tree.index)
        send_object(writer, bus.TOPIC_BPF, INSNS, bpf_env(obj_id=1))
        send_object(writer, bus.TOPIC_BPF, INSNS, bpf_env(obj_id=2, pid=300, prog_name=b"again"))
        refused = bytes.fromhex("9500000000000000")  # exit with r0 unset: EACCES
        send_object(writer, bus.TOPIC_BPF, refused, bpf_env(obj_id=3, ret=-13, insn_cnt=1))
        writer.close()
        got = events(tree)
        assert [e["event"] for e in got] == ["bpf_load"] * 3
        stored, again, failed = got
        sha = hashlib.sha256(INSNS).hexdigest()
        assert stored["path"] == f"host/bpf.name-probe.pid-100.{sha}" and stored["sha256"] == sha
        assert (stored["pid"], stored["comm"], stored["ret"], stored["container_id"]) == (
            100, "loader", 5, "",
        )  # fmt: skip
        assert (again["path"], again["duplicate_of"]) == (None, stored["path"])
        assert again["sha256"] == sha
        assert (again["pid"], again["prog_name"]) == (300, "again")
        assert (failed["ret"], failed["insn_cnt"], failed["complete"]) == (-13, 1, True)
        assert failed["sha256"] == hashlib.sha256(refused).hexdigest()
        # the same attempts as the index's records, field for field
        index = tree.records()
        assert [attempt_record(r) for r in index] == got
        assert writer.counters["events_written"] == 3 and writer.counters["events_errors"] == 0


def test_a_module_attempt_that_could_not_be_read_is_an_event_without_artifact(
    tmp_path: Path,
) -> None:
    with OutputTree(tmp_path) as tree:
        writer = ModuleWriter(tree.out, tree.index)
        env = module_env(syscall="finit_module", fd=3, dev=9, inode=4, path=b"/m\xff.ko",
                         params=b"x=1", obj_len=0, ok=False, error="file changed")  # fmt: skip
        writer.handle(message(bus.TOPIC_MODULE, env))
        writer.close()
        (got,) = events(tree)
        assert got["event"] == "module_load" and got["error"] == "file changed"
        assert (got["syscall"], got["ret"], got["params"], got["fd"]) == ("finit_module", -38,
                                                                        "x=1", 3)  # fmt: skip
        assert (got["source_path_hex"], got["path"], got["sha256"]) == ("2f6dff2e6b6f", None, None)
        assert got["complete"] is False


def test_attempt_records_come_only_from_load_kinds() -> None:
    assert set(LOAD_ATTEMPTS) == {"module", "bpf"}
    assert attempt_record({"kind": "exec", "path": "x"}) is None
    assert attempt_record({"kind": "bpf", "ret": -1, "junk": 1}) == {"event": "bpf_load", "ret": -1}


def test_events_rotate_as_the_index_does_with_every_process_appending(tmp_path: Path) -> None:
    """The events writer and the BPF writer (two processes in a run) append to events.jsonl
    under --capture index-rotate:1kb: segments events.NNNNNN.jsonl, each live file after the
    first starting with its rotation record, and every line there once, in order."""
    how = Rotation(1024)
    out = OutputDir(str(tmp_path / "out"))
    try:
        events_index, bpf_index = Index(out, rotation=how), Index(out, rotation=how)
        ev = EventsWriter(out, events_index, clock=lambda: 1)
        loads = BpfWriter(out, bpf_index)
        for i in range(40):
            ev.handle(message(bus.TOPIC_PROC, proc_env(pid=1000 + i)))
            send_object(loads, bus.TOPIC_BPF, INSNS + bytes([i]) * 8, bpf_env(obj_id=i))
        ev.close()
        loads.close()
        names = rotation.ordered_segments(EVENTS_NAME, os.listdir(tmp_path / "out"))
        assert len(names) > 5 and names[-1] == EVENTS_NAME
        got = read_index(tmp_path / "out", EVENTS_NAME)
        notes = [e for e in got if e.get("kind") == "rotation"]
        assert [n["segment"] for n in notes] == list(range(1, len(names)))
        assert {n["file"] for n in notes} == {EVENTS_NAME}
        lines = [e for e in got if "event" in e]
        assert [e["pid"] for e in lines if e["event"] == "exec"] == list(range(1000, 1040))
        assert [e["obj_id"] for e in lines if e["event"] == "bpf_load"] == list(range(40))
        assert ev.counters["events_errors"] == loads.counters["events_errors"] == 0
        for name in names:
            assert (tmp_path / "out" / name).stat().st_size <= 1024
    finally:
        events_index.close()
        bpf_index.close()
        out.close()
