#!/usr/bin/env python3
"""Benchmark of bounded state: prints figures, asserts nothing.

The resident memory (RSS) of the collector and of every writer after 10,000 small-file
artifacts and after 100,000 (target: no process grows by more than 10 MB between the two),
with the artifacts per second the file writer recorded.

Run as root after `make setup` (`make bench` runs it after the other benchmarks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PY = sys.executable
SUPERVISORCTL = os.path.join(os.path.dirname(PY), "supervisorctl")
PROGRAMS = ("collector", "writer-file", "writer-exec")
#: The target of issue 13: growth from the first checkpoint to the second, per process.
TARGET_MB = 10

WRITE_FILES = """
import os, sys
base, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(start, end):
    d = f"{base}/d{i // 1000}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i}", "wb") as f:
        f.write(b"%08d small file for the state benchmark\\n" % i)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Tracecap:
    """`tracecap run` capturing writes under ``watched`` and executed binaries."""

    def __init__(self, workdir: Path, watched: Path) -> None:
        self.root = workdir / "cap"
        self.run_dir = Path(tempfile.mkdtemp(prefix="tcs-", dir="/run"))
        self.err = workdir / "run.err"
        argv = ["tracecap", "run", "--run-dir", str(self.run_dir), "--capture", f"dir:{self.root}",
                "--capture", f"write={watched}/*", "--capture", "exec"]  # fmt: skip
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 90
        while b"tracecap: ready" not in self.err.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tracecap did not start:\n{self.err.read_text()}")
            time.sleep(0.05)

    def pid(self, program: str) -> int:
        shown = subprocess.run(
            [SUPERVISORCTL, "-c", str(self.run_dir / "supervisord.conf"), "pid", program],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        out = shown.stdout.strip()
        return int(out) if out.isdigit() else 0

    def records(self) -> int:
        """Write-artifact lines in the index so far."""
        path = self.root / "out" / "index.jsonl"
        return path.read_bytes().count(b'"kind": "write"') if path.exists() else 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(300)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.err.read_text(errors="replace")


def fill(run: Tracecap, watched: Path, start: int, end: int) -> float:
    """Write files ``start..end`` and wait until each has its index line; artifacts/s."""
    began = time.monotonic()
    subprocess.run([PY, "-c", textwrap.dedent(WRITE_FILES), str(watched), str(start), str(end)],
                   check=True, timeout=1800)  # fmt: skip
    deadline = time.monotonic() + 1800
    while run.records() < end:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {run.records()} of {end} artifacts recorded")
        time.sleep(0.5)
    took = time.monotonic() - began
    time.sleep(2)  # the writers' idle flushes and journal compaction settle
    return (end - start) / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 artifacts")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("tracecap"):
        print("bench: run as root after `make setup`", file=sys.stderr)
        return 2
    first, total = (2_000, 20_000) if args.quick else (10_000, 100_000)
    workdir = Path(tempfile.mkdtemp(prefix="tcstate-"))
    workdir.chmod(0o755)  # the writers run as the tracecap user
    watched = workdir / "w"
    watched.mkdir(mode=0o755)
    run = Tracecap(workdir, watched)
    try:
        rate1 = fill(run, watched, 0, first)
        pids = {name: run.pid(name) for name in PROGRAMS}
        before = {name: rss_mb(pid) for name, pid in pids.items() if pid}
        rate2 = fill(run, watched, first, total)
        after = {name: rss_mb(pid) for name, pid in pids.items() if pid}
        restarted = [n for n in PROGRAMS if pids[n] and run.pid(n) != pids[n]]
        print(f"\nbounded state: RSS after {first:,} and {total:,} small-file artifacts "
              f"(target: growth <= {TARGET_MB} MB)")  # fmt: skip
        for name in before:
            growth = after.get(name, 0.0) - before[name]
            verdict = "ok" if growth <= TARGET_MB else "OVER TARGET"
            print(f"  {name:>12}: {before[name]:7.1f} MB -> {after.get(name, 0.0):7.1f} MB "
                  f"({growth:+.1f} MB) {verdict}")  # fmt: skip
        print(f"  file writer: {rate1:,.0f} artifacts/s (first {first:,}), {rate2:,.0f}/s "
              f"(next {total - first:,})")  # fmt: skip
        if restarted:
            print(f"  WARNING: restarted during the run: {', '.join(restarted)}")
    finally:
        summary = [ln for ln in run.stop().splitlines() if "tracecap: summary" in ln]
        print("  " + (summary[-1] if summary else "no summary line"))
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
