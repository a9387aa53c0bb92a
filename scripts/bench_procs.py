#!/usr/bin/env python3
"""Benchmark of the fork and exit records every capture sends: prints figures, asserts nothing.

A process that forks children which exit at once (Python's os.fork() and os._exit(0), the
parent reaping each) and a shell that runs /bin/true in a loop (a fork, an exec and an exit
each), untraced and under `tracecap run --capture write` (the fork and exit programs are on
whatever is captured; write is the cheapest common capture beside them), in pairs. Reported:
the slowdown (traced / untraced wall time; and of the workload's own CPU time, where the
kernel's work in its fork and exit hooks is counted), forks per second, and the accounting:
every fork and exit of the workload is in events.jsonl, and the kernel's ``proc.`` counters
say how many records were sent and dropped (target 0).

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

PY = sys.executable
#: After `ready`, the pipeline's start-up work ends before the traced run starts.
SETTLE_S = 1.0

FORKS = """
import os, sys, time
n = int(sys.argv[1])
start = time.monotonic()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(time.monotonic() - start)
"""

#: Workloads: name -> (argv for n iterations, forks each iteration makes).
WORKLOADS = {
    "fork+exit (python os.fork)": (lambda n: [PY, "-c", FORKS, str(n)], 1),
    "fork+exec+exit (sh: /bin/true)": (
        lambda n: ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"],
        1,
    ),
}


def events_of(out: Path, pid: int) -> dict[str, int]:
    """Forks made by ``pid`` and exits of its children, as events.jsonl has them."""
    forks, children = 0, set()
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    for rec in records:
        if rec.get("event") == "fork" and rec.get("pid") == pid:
            forks += 1
            children.add(rec.get("child_pid"))
    exits = sum(1 for r in records if r.get("event") == "exit" and r.get("pid") in children)
    return {"forks": forks, "exits": exits}


def traced_trial(workdir: Path, argv: list[str]) -> dict[str, Any]:
    tc = Tracecap(workdir, "--capture", "write")
    try:
        time.sleep(SETTLE_S)
        seconds, cpu, pid = timed_run(argv)
        time.sleep(1.5)  # the last records reach the events writer
        kernel = kernel_counters(tc.run_dir, "proc.")
    finally:
        summary = tc.stop()
    figures = events_of(tc.out, pid)
    figures.update(seconds=seconds, cpu=cpu, kernel=kernel, ring_losses=kernel_losses(summary))
    shutil.rmtree(tc.root, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("tracecap"):
        print("bench: run as root after `make setup-test`", file=sys.stderr)
        return 2
    n = 2_000 if args.quick else 10_000
    pairs = 2 if args.quick else 6
    workdir = Path(tempfile.mkdtemp(prefix="tcbench-"))
    workdir.chmod(0o755)  # the writers run as the tracecap user
    try:
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        for name, (make_argv, per_iteration) in WORKLOADS.items():
            argv = make_argv(n)
            print(f"\nprocs: {name}, {n:,} iterations, untraced / --capture write, "
                  f"{pairs} pairs")  # fmt: skip
            ratios, cpu_ratios, rates, trials = [], [], [], []
            for i in range(pairs):
                # alternating which goes first cancels the machine's drift
                if i % 2:
                    trial = traced_trial(workdir, argv)
                plain, plain_cpu, _pid = timed_run(argv)
                if not i % 2:
                    trial = traced_trial(workdir, argv)
                ratios.append(trial["seconds"] / plain)
                cpu_ratios.append(trial["cpu"] / plain_cpu)
                rates.append(n * per_iteration / trial["seconds"])
                trials.append(trial)
                k = trial["kernel"]
                print(f"  untraced {plain:.2f} s, traced {trial['seconds']:.2f} s "
                      f"({trial['seconds'] / plain:.2f}x, CPU {trial['cpu'] / plain_cpu:.2f}x); "
                      f"in events.jsonl {trial['forks']:,} "
                      f"forks, {trial['exits']:,} exits of {n * per_iteration:,}; kernel "
                      f"proc.events {k.get('proc.events', 0):,}, proc.event_drops "
                      f"{k.get('proc.event_drops', 0)}; ring losses "
                      f"{trial['ring_losses']}")  # fmt: skip
            print(f"  slowdown: {fmt(ratios, 'x')}; the workload's CPU time: "
                  f"{fmt(cpu_ratios, 'x')}; traced: {fmt(rates, 'forks/s')}")  # fmt: skip
            drops = sum(t["kernel"].get("proc.event_drops", 0) for t in trials)
            print(f"  accounted for: {sum(t['forks'] for t in trials):,} forks and "
                  f"{sum(t['exits'] for t in trials):,} exits of {pairs * n * per_iteration:,} "
                  f"each; kernel drops {drops} (target 0)")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
