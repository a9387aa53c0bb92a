"""Forks and exits of real process trees: in events.jsonl whatever is captured, as Tracee's
sched_process_fork and sched_process_exit when --events names them, and in the report's process
tree (true parents, starts, ends, exit codes), including children that fork and never exec."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_report import Dom
from tests.support import tracee_decode
from tests.support.pipeline import Run

#: Forks two children that never exec: one exits with 7, one is killed by SIGKILL; prints both.
FORKS_WITHOUT_EXEC = """
import os, signal, sys
open(sys.argv[1] + "/parent.out", "w").write("parent")
a = os.fork()
if a == 0:
    os._exit(7)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGKILL)
os.waitpid(a, 0)
os.waitpid(b, 0)
print(a, b)
"""
#: sh forks a background sleep (which execs) and exits 3 while its child still runs.
SH_BACKGROUND = "sleep 0.2 & echo $!; exit 3"
PROC_EVENTS = "sched_process_fork,sched_process_exit"


def run_workloads(workdir: Path) -> dict[str, int]:
    """The two process trees; their pids."""
    py = subprocess.Popen([sys.executable, "-c", FORKS_WITHOUT_EXEC, str(workdir)],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = py.communicate(timeout=60)
    assert py.returncode == 0
    exited, killed = map(int, out.split())
    sh = subprocess.Popen(["sh", "-c", SH_BACKGROUND], stdout=subprocess.PIPE, text=True)
    out, _ = sh.communicate(timeout=60)
    assert sh.returncode == 3
    time.sleep(0.6)  # the background sleep exits, and its exit reaches the writer
    return {"py": py.pid, "exited": exited, "killed": killed, "sh": sh.pid, "sleep": int(out)}


def events_jsonl(run: Run) -> list[dict]:
    return [json.loads(line) for line in (run.out_dir / "events.jsonl").read_text().splitlines()]


def one(records: list[dict], **match: object) -> dict:
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_forks_and_exits_reach_events_jsonl_tracee_json_and_the_report(
    tracecap, workdir: Path, tmp_path: Path
):
    # no exec capture: forks and exits come whatever is captured
    run = tracecap("--capture", f"write={workdir}/*", "--output", "json", "--events", PROC_EVENTS)
    pids = run_workloads(workdir)
    run.stop()
    assert run.returncode == 0, run.stderr

    records = events_jsonl(run)
    py, sh = pids["py"], pids["sh"]
    fork_a = one(records, event="fork", pid=py, child_pid=pids["exited"])
    fork_b = one(records, event="fork", pid=py, child_pid=pids["killed"])
    fork_sleep = one(records, event="fork", pid=sh, child_pid=pids["sleep"])
    assert fork_sleep["comm"] == "sh"  # the parent's context
    for fork in (fork_a, fork_b, fork_sleep):
        assert fork["ts"] - 10**9 < fork["child_start"] <= fork["ts"]
    exited = one(records, event="exit", pid=pids["exited"])
    assert (exited["exit_code"], exited["signal"], exited["wait_status"]) == (7, 0, 7 << 8)
    killed = one(records, event="exit", pid=pids["killed"])
    assert (killed["signal"], killed["wait_status"]) == (9, 9)
    assert one(records, event="exit", pid=sh)["exit_code"] == 3
    sleep_exit = one(records, event="exit", pid=pids["sleep"])
    assert (sleep_exit["exit_code"], sleep_exit["comm"]) == (0, "sleep")
    assert sleep_exit["ts"] > one(records, event="exit", pid=sh)["ts"]  # it outlived sh
    assert one(records, event="exit", pid=py)["exit_code"] == 0
    assert exited["ts"] > fork_a["ts"]

    # Tracee's events, printed because --events names them
    printed = [tracee_decode.decode(line) for line in run.stdout.splitlines()]
    assert {e["eventName"] for e in printed} == {"sched_process_fork", "sched_process_exit"}
    (tracee_fork,) = [
        e for e in printed if e["eventName"] == "sched_process_fork"
        and e["args"][6]["value"] == pids["sleep"]
    ]  # fmt: skip
    args = {a["name"]: a["value"] for a in tracee_fork["args"]}
    assert (tracee_fork["hostProcessId"], args["parent_pid"], args["child_tid"]) == (
        sh, sh, pids["sleep"],
    )  # fmt: skip
    assert args["start_time"] == fork_sleep["child_start"]
    (tracee_exit,) = [
        e for e in printed if e["eventName"] == "sched_process_exit" and e["hostProcessId"] == sh
    ]
    assert [a["value"] for a in tracee_exit["args"]] == [3 << 8, True]

    # the report: the children that never exec'd hang under their parent, with how they ended
    page = tmp_path / "report.html"
    done = subprocess.run(["tracecap", "report", str(run.out_dir), "-o", str(page)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    dom = Dom()
    dom.feed(html)
    assert dom.parent[pids["exited"]] == py and dom.parent[pids["killed"]] == py
    assert dom.parent[pids["sleep"]] == sh  # its parent exited first: the fork says who it was

    def summary(pid: int) -> str:
        found = re.search(rf'id="proc-{pid}"[^>]*><details[^>]*><summary>(.*?)</summary>', html)
        assert found, pid
        return found.group(1)

    assert '<span class="exit">exit 7</span>' in summary(pids["exited"])
    assert '<span class="exit">killed by signal 9</span>' in summary(pids["killed"])
    assert '<span class="exit">exit 3</span>' in summary(sh)


def test_forks_and_exits_are_printed_only_when_named(tracecap, workdir: Path):
    run = tracecap("--capture", "exec", "--output", "json")
    pids = run_workloads(workdir)
    run.stop()
    assert run.returncode == 0, run.stderr
    printed = {tracee_decode.decode(line)["eventName"] for line in run.stdout.splitlines()}
    assert printed == {"sched_process_exec"}
    # the events writer has them all the same
    assert one(events_jsonl(run), event="exit", pid=pids["sh"])["exit_code"] == 3
