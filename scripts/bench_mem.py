#!/usr/bin/env python3
"""Benchmark of memory capture against a real JIT: prints figures, asserts nothing.

LuaJIT compiling many small functions (each loop a trace, each trace two mprotects: its
machine-code area made writable, then executable again) for a few seconds, untraced and with
`tracecap run --capture mem` (scoped to luajit, so the machine's other processes stay out of
the figures), in pairs. Reported: the slowdown (traced / untraced wall time, target at most
1.10x; and of luajit's own CPU time, where the kernel's work for it is counted), the
protection changes Tracee alerts on per second and what became of them (alert events sent,
artifacts, what the process's allowances skipped), the share of artifacts that are complete
(target 100%), and the accounting: every change the kernel saw is in the index as an
artifact occurrence, an alert record or a counted skip, and the kernel ring lost nothing
(targets: equal, 0).

Run as root after `make setup-test` (`make bench` runs it after the other benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_net_exec import Tracecap, fmt, kernel_counters, kernel_losses, timed_run

#: The target of issue 14.
TARGET_RATIO = 1.10
#: After `ready`, the pipeline's start-up work (freeing libbpf's heap, the first stats) ends
#: before the traced run starts: the figure is the steady state's.
SETTLE_S = 1.0

MANY_TRACES = """
local n = tonumber(arg[1])
local total = 0
for i = 1, n do
  local f = loadstring("local s = 0 for j = 1, 300 do s = s + (j % 7) * " .. i .. " end return s")
  total = total + f()
end
io.write(total, "\\n")
"""


def index_figures(out: Path, pid: int) -> dict[str, Any]:
    """What the index says of one luajit process: artifacts (current line per path), alert
    records, budget reports."""
    current: dict[str, dict[str, Any]] = {}
    alerts: list[dict[str, Any]] = []
    budget: list[dict[str, Any]] = []
    for line in (out / "index.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("pid") != pid:
            continue
        if rec["kind"] == "mem":
            current[rec["path"]] = rec
        elif rec["kind"] == "mem_alert":
            alerts.append(rec)
        elif rec["kind"] == "mem_budget":
            budget.append(rec)
    arts = list(current.values())
    return {
        "artifacts": len(arts),
        "complete": sum(r["complete"] for r in arts),
        "occurrences": sum(r["occurrences"] for r in arts),
        "alert_occurrences": sum(r["occurrences"] for r in alerts if r["alert"]),
        "budget_skips": sum(r["occurrences"] for r in alerts if r["dump"] == "budget"),
        "skipped_events": sum(r["skipped_events"] for r in budget),
        "skipped_dumps": sum(r["skipped_dumps"] for r in budget),
        "bytes": sum(r["size"] for r in arts),
    }


def traced_trial(workdir: Path, script: Path, n: int) -> dict[str, Any]:
    tc = Tracecap(workdir, "--capture", "mem", "--scope", "comm=luajit")
    try:
        time.sleep(SETTLE_S)
        seconds, cpu, pid = timed_run(["luajit", str(script), str(n)])
        time.sleep(1.5)  # the last records reach the collector
        kernel = kernel_counters(tc.run_dir, "mem.")
    finally:
        summary = tc.stop()
    figures = index_figures(tc.out, pid)
    figures.update(seconds=seconds, cpu=cpu, kernel=kernel, ring_losses=kernel_losses(summary))
    shutil.rmtree(tc.root, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("tracecap") or not shutil.which("luajit"):
        print("bench: run as root after `make setup-test` (tracecap, luajit)", file=sys.stderr)
        return 2
    n = 30_000 if args.quick else 100_000
    pairs = 2 if args.quick else 8
    workdir = Path(tempfile.mkdtemp(prefix="tcbench-"))
    workdir.chmod(0o755)  # the writers run as the tracecap user
    script = workdir / "traces.lua"
    script.write_text(MANY_TRACES)
    os.sync()
    try:
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print(f"\nmem: LuaJIT compiling {n:,} small functions (one trace each), "
              f"untraced / --capture mem, {pairs} pairs")  # fmt: skip
        ratios, cpu_ratios, trials = [], [], []
        for i in range(pairs):
            # alternating which goes first cancels the machine's drift
            if i % 2:
                trial = traced_trial(workdir, script, n)
            plain, plain_cpu, _pid = timed_run(["luajit", str(script), str(n)])
            if not i % 2:
                trial = traced_trial(workdir, script, n)
            ratios.append(trial["seconds"] / plain)
            cpu_ratios.append(trial["cpu"] / plain_cpu)
            trials.append(trial)
            k = trial["kernel"]
            seen = k["mem.alerts"] + k["mem.unexamined"]
            counted = trial["occurrences"] + trial["alert_occurrences"] + trial["skipped_events"]
            print(f"  untraced {plain:.2f} s, traced {trial['seconds']:.2f} s "
                  f"({trial['seconds'] / plain:.2f}x); changes seen {seen:,} "
                  f"({seen / trial['seconds']:,.0f}/s, {k['mem.unexamined']:,} past the "
                  f"allowance); events sent "
                  f"{k['mem.events']:,}; artifacts {trial['artifacts']} "
                  f"({trial['complete']} complete), occurrences {trial['occurrences']}, "
                  f"dumps skipped {k['mem.skipped_dumps']:,}; in the index {counted:,} of "
                  f"{seen:,}; ring losses {trial['ring_losses']}, event drops "
                  f"{k['mem.event_drops']}, chunk drops {k['mem.chunk_drops']}")  # fmt: skip
        secs = [t["seconds"] for t in trials]
        arts = sum(t["artifacts"] for t in trials)
        complete = sum(t["complete"] for t in trials)
        alerts = sum(t["kernel"]["mem.alerts"] + t["kernel"]["mem.unexamined"] for t in trials)
        sent = sum(t["kernel"]["mem.events"] for t in trials)
        indexed = sum(t["occurrences"] + t["alert_occurrences"] + t["skipped_events"]
                      for t in trials)  # fmt: skip
        drops = sum(t["kernel"]["mem.event_drops"] + t["kernel"]["mem.chunk_drops"]
                    for t in trials)  # fmt: skip
        print(f"\n  slowdown: {fmt(ratios, 'x')} (target at most {TARGET_RATIO:.2f}x); "
              f"luajit's CPU time: {fmt(cpu_ratios, 'x')}")  # fmt: skip
        print(f"  per second traced: {alerts / sum(secs):,.0f} protection changes to executable, "
              f"{sent / sum(secs):,.0f} alert events sent, {arts / sum(secs):,.1f} artifacts "
              f"({sum(t['bytes'] for t in trials) / sum(secs) / 1e6:,.2f} MB)")  # fmt: skip
        print(f"  artifacts complete: {complete}/{arts} "
              f"({100 * complete / arts if arts else 0:.0f}%, target 100%)")  # fmt: skip
        print(
            f"  accounted for: {indexed:,} of {alerts:,} changes in the index "
            f"(dumped, alerted or counted as skipped); kernel ring drops {drops} (target 0)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
