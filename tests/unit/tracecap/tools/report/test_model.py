"""The capture as the report sees it: lines parsed, current records, processes and roots."""

from __future__ import annotations

from tracecap.tools.report import model


def test_parse_lines_counts_what_is_not_an_object() -> None:
    records, bad = model.parse_lines([b'{"a": 1}\n', b"\n", b"[1]\n", b'{"torn', b'{"b": 2}'])
    assert records == [{"a": 1}, {"b": 2}] and bad == 2


def test_the_last_line_of_a_path_is_current_and_pathless_records_stay() -> None:
    lines = [
        {"path": "host/a", "size": 1},
        {"path": None, "kind": "bpf", "duplicate_of": "host/b"},
        {"path": "host/b", "size": 5},
        {"path": "host/a", "size": 2},
        {"path": None, "kind": "bpf", "duplicate_of": "host/b"},
    ]
    assert model.current(lines) == [lines[3], lines[1], lines[2], lines[4]]


def test_processes_from_execs_and_artifacts() -> None:
    events = [
        {"event": "exec", "pid": 10, "ppid": 1, "comm": "bash", "argv": ["bash"], "ts": 5},
        {"event": "exec", "pid": 11, "ppid": 10, "comm": "sh", "argv": ["sh"], "ts": 6},
        {"event": "exec", "pid": 11, "ppid": 10, "comm": "curl", "argv": ["curl", 3], "ts": 7},
        {"event": "capture_start", "ts": 1},
    ]
    artifacts = [
        {"kind": "write", "pid": 11, "ppid": 10, "uid": 1000, "first_ts": 8, "last_ts": 9},
        {"kind": "bpf", "pid": 12, "ppid": 11, "comm": "bpftool", "ts": 10, "container_id": "c1"},
        {"kind": "gap", "pid": 99, "ts": 3},
        {"kind": "pcap", "pid": "x"},
    ]
    procs = model.processes(artifacts, events)
    assert sorted(procs) == [10, 11, 12]
    curl = procs[11]
    assert (curl.comm, curl.argv, curl.ppid, curl.uid) == ("curl", ["curl"], 10, 1000)
    assert (curl.start, curl.end) == (6, 9) and len(curl.execs) == 2
    assert procs[10].children == [11] and procs[11].children == [12]
    assert procs[12].container_id == "c1"
    assert model.roots(procs) == [10]


def test_roots_show_every_process_once_even_in_a_cycle() -> None:
    procs = {
        1: model.Process(1, ppid=2, start=5),
        2: model.Process(2, ppid=1, start=4),
        3: model.Process(3, ppid=3, start=1),  # its own parent
        4: model.Process(4, ppid=77, start=2),  # parent not seen
    }
    procs[2].children = [1]
    procs[1].children = [2]
    assert model.roots(procs) == [3, 4, 1]  # the cycle from its first pid seen


def test_fork_and_exit_give_true_parents_starts_ends_and_exit_codes() -> None:
    events = [
        {"event": "exec", "pid": 10, "ppid": 1, "comm": "sh", "argv": ["sh"], "ts": 5},
        # sh forks 11, which never executes anything (a subshell, python's os.fork())
        {"event": "fork", "pid": 10, "ppid": 1, "comm": "sh", "uid": 7, "container_id": "c1",
         "ts": 20, "child_pid": 11, "child_start": 19},
        # sh forks 12, which outlives it: its exec names a reaper (1) as its parent
        {"event": "fork", "pid": 10, "comm": "sh", "ts": 30, "child_pid": 12, "child_start": 30},
        {"event": "exit", "pid": 10, "comm": "sh", "ts": 40, "exit_code": 3, "signal": 0},
        {"event": "exec", "pid": 12, "ppid": 1, "comm": "sleep", "argv": ["sleep"], "ts": 45},
        {"event": "exit", "pid": 11, "comm": "sh", "ts": 50, "exit_code": 0, "signal": 9},
        {"event": "fork", "pid": 12, "ts": 46, "child_pid": "x"},  # altered: ignored child
    ]  # fmt: skip
    artifacts = [{"kind": "write", "pid": 11, "first_ts": 22, "last_ts": 60}]
    procs = model.processes(artifacts, events)
    assert sorted(procs) == [10, 11, 12]
    sh, sub, sleep = procs[10], procs[11], procs[12]
    assert (sub.ppid, sub.comm, sub.uid, sub.container_id) == (10, "sh", 7, "c1")
    assert (sub.start, sub.end, sub.exit_code, sub.signal) == (19, 50, 0, 9)
    assert sleep.ppid == 10 and sleep.start == 30 and sleep.exited is None
    assert (sh.start, sh.end, sh.exit_code) == (5, 40, 3)
    assert sh.children == [11, 12] and model.roots(procs) == [10]


def test_without_fork_or_exit_the_window_is_what_was_seen() -> None:
    events = [{"event": "exec", "pid": 10, "ppid": 1, "comm": "a", "ts": 5}]
    p = model.processes([{"kind": "write", "pid": 10, "first_ts": 6, "last_ts": 9}], events)[10]
    assert (p.start, p.end, p.exited, p.exit_code, p.forked_by) == (5, 9, None, None, None)
