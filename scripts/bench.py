#!/usr/bin/env python3
"""Benchmark of tracecap's write capture: prints figures, checks nothing (it is not a test).

Why it exists: a forensic capture is only worth having if it is complete, so the figure that
matters is not "how fast can it go" but "how fast can a process write before tracecap loses a
byte". The benchmark finds that rate for large (64 KiB) and small (4 KiB) writes by running the
real pipeline (``tracecap run``: supervisord, collector, writers) against a workload child,
checking the artifact byte for byte and the loss counters of the summary line, and bisecting a
paced rate when the unpaced workload loses data. Around it, the figures a user weighs before
deploying: what tracecap costs processes it does NOT capture (the probes see every syscall), how
long it takes to start, how much memory the collector holds, and what the tool one would
otherwise reach for (``strace -e write=all``) does to the same workload.

Every ``tracecap run`` is started the way tests/e2e/conftest.py starts it (fresh ``--run-dir``
under /run, wait for ``tracecap: ready`` on stderr, stop with SIGINT, read ``<dir>/out``) and
always stopped, even when the benchmark is interrupted.

Run as root: ``make bench`` (full, about 4-6 minutes) or ``scripts/bench.py --quick`` (~1.5 min).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 120.0
SLOW_READY_S = 10.0
SLOW_STOP_S = 15.0
MIB = 1 << 20
MB = 1_000_000

# The writing workload, run as a child so that tracecap sees an ordinary process (it excludes
# its own process tree) and so that its timing excludes interpreter start-up. Data come from a
# pregenerated random pool at a moving, unaligned offset: every chunk differs from its
# neighbours, so a chunk stored at the wrong offset changes the sha256. Pacing is a token bucket
# (a virtual schedule whose unused credit is capped at BURST_S), sleeping only when more than
# 1 ms ahead, because sub-millisecond sleeps cost more than a 4 KiB write.
WRITE_WORKLOAD = textwrap.dedent(
    """
    import json, os, sys, time
    path, chunk, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rate, max_s = float(sys.argv[4]), float(sys.argv[5])
    BURST_S = 0.005
    POOL = 1 << 22
    pool = memoryview(os.urandom(POOL + chunk))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = writes = 0
    write, clock = os.write, time.monotonic
    t0 = start = clock()
    while written < total:
        if rate > 0:
            now = clock()
            due = start + written / rate
            if due - now > 0.001:
                time.sleep(due - now)
            elif now - due > BURST_S:
                start += now - due - BURST_S
        elif writes & 63 == 0:
            now = clock()
        if max_s > 0 and now - t0 > max_s:
            break
        off = (writes * 65537) % POOL
        written += write(fd, pool[off : off + min(chunk, total - written)])
        writes += 1
    elapsed = clock() - t0
    os.close(fd)
    print(json.dumps({"bytes": written, "writes": writes, "elapsed": elapsed}))
    """
)

# Syscall-heavy, out-of-scope workload: small writes and reads, the worst case for probes
# that run on every syscall entry and exit and must decide "not in scope" there.
SYSCALL_WORKLOAD = textwrap.dedent(
    """
    import json, os, sys, time
    n = int(sys.argv[1])
    wfd = os.open("/dev/null", os.O_WRONLY)
    rfd = os.open("/dev/zero", os.O_RDONLY)
    buf = b"x" * 64
    write, read = os.write, os.read
    t0 = time.perf_counter()
    for _ in range(n):
        write(wfd, buf)
    for _ in range(n // 2):
        read(rfd, 64)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"syscalls": n + n // 2, "elapsed": elapsed}))
    """
)

SUMMARY_FIELDS: dict[str, str] = {
    "events": r"summary: (\d+) events",
    "bytes_captured": r"(\d+) bytes captured",
    "artifacts": r"(\d+) artifacts",
    "ring_records": r"kernel ring buffer (\d+) records",
    "ring_bytes": r"kernel ring buffer \d+ records \((\d+) bytes\)",
    "table_full": r"syscall table full (\d+)",
    "decode_errors": r"collector decode errors (\d+)",
    "bus_gaps": r"bus gaps (\d+) messages",
    "malformed": r"malformed messages (\d+)",
    "writer_errors": r"writer errors (\d+)",
    "bus_backlog": r"bus backlog full (\d+) messages",
    "budget_refused": r"disk budget (\d+) bytes refused",
    "not_read_back": r"not read back (\d+) bytes",
}
LOSS_FIELDS = (
    "ring_records",
    "ring_bytes",
    "table_full",
    "decode_errors",
    "bus_gaps",
    "malformed",
    "writer_errors",
    "bus_backlog",
    "budget_refused",
    "not_read_back",
)

PROBLEMS: dict[str, list[Any]] = {}  # kind -> [first evidence, occurrences]


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the report."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def problem(msg: str, kind: str | None = None) -> None:
    """Something wrong with tracecap itself: reported at the end with its first evidence and
    how often it happened (``kind`` groups occurrences whose messages differ in numbers)."""
    entry = PROBLEMS.setdefault(kind or msg, [msg, 0])
    entry[1] += 1
    log(f"PROBLEM: {msg}")


# --------------------------------------------------------------------------------------------
# Processes


def proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def proc_children(ppid: int) -> list[int]:
    """Children by scanning /proc (children files need CONFIG_PROC_CHILDREN, not always on)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised comm, which may contain spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == ppid:
            kids.append(int(entry))
    return kids


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and the Rss parts in KiB, {} once the process is gone.

    The parts tell the collector's own heap (RssAnon) from mapped ring buffers (RssShmem or
    RssFile), which count in VmRSS without being memory the collector allocated.
    """
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def run_child(argv: Sequence[str], timeout: float = 600.0) -> dict[str, Any]:
    """Run a workload child and return the JSON it prints last."""
    res = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if res.returncode != 0:
        raise RuntimeError(f"workload failed ({res.returncode}): {argv[:3]}...\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_argv(path: Path, chunk: int, total: int, rate: float, max_s: float) -> list[str]:
    return [
        sys.executable,
        "-c",
        WRITE_WORKLOAD,
        str(path),
        str(chunk),
        str(total),
        str(rate),
        str(max_s),
    ]


def syscall_argv(n: int) -> list[str]:
    return [sys.executable, "-c", SYSCALL_WORKLOAD, str(n)]


def diff_against_missing(
    source: Path, artifact: Path, missing: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """Bytes of ``source`` that ``artifact`` lacks or gets wrong, and how many of them lie
    outside the index's ``missing`` ranges, at 4 KiB granularity.

    The second number is the one a forensic user cannot see: ``complete=false`` alone says
    "something is missing", the ranges are what tells a hole of zeros from written zeros.
    """
    ranges = sorted((int(a), int(b)) for a, b in missing)
    starts = [a for a, _ in ranges]

    def covered(off: int) -> bool:
        i = bisect.bisect_right(starts, off) - 1
        return i >= 0 and off < ranges[i][1]

    page = 4096
    lost = unreported = 0
    off = 0
    with open(source, "rb") as fs, open(artifact, "rb") as fa:
        while block := fs.read(4 * MIB):
            other = fa.read(len(block))
            if block != other:
                for i in range(0, len(block), page):
                    if block[i : i + page] != other[i : i + page]:
                        n = len(block[i : i + page])
                        lost += n
                        if not covered(off + i):
                            unreported += n
            off += len(block)
    return lost, unreported


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# tracecap run


@dataclass
class MemPeak:
    """Highest VmRSS seen while sampling, and the last VmHWM read before stopping."""

    rss_kib: int = 0
    hwm_kib: int = 0
    parts: dict[str, int] = field(default_factory=dict)  # Rss* at the highest VmRSS

    def update(self, mem: dict[str, int]) -> None:
        if mem.get("VmRSS", 0) > self.rss_kib:
            self.rss_kib = mem["VmRSS"]
            self.parts = {k: v for k, v in mem.items() if k.startswith("Rss")}
        self.hwm_kib = max(self.hwm_kib, mem.get("VmHWM", 0))


@dataclass
class Stopped:
    returncode: int | None
    stderr: str
    summary: dict[str, int]
    index: list[dict[str, Any]]
    stop_s: float


class Tracecap:
    """One ``tracecap run``, as tests/e2e/conftest.py starts it; use as a context manager so
    that it is stopped and its run directory removed on every path, including Ctrl-C."""

    def __init__(self, args: Sequence[str], out_root: Path, log_dir: Path) -> None:
        self.args = list(args)
        self.out_root = out_root
        self.out_dir = out_root / "out"
        self.run_dir = Path(tempfile.mkdtemp(prefix="tcb-", dir="/run"))
        self.stderr_path = log_dir / f"{self.run_dir.name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = float("nan")
        self.collector = MemPeak()
        self.writer = MemPeak()
        self._pids: dict[str, int] = {}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.result: Stopped | None = None

    def __enter__(self) -> Tracecap:
        try:
            self.start()
        except BaseException:  # Ctrl-C while waiting for ready: __exit__ will not run
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def start(self) -> None:
        argv = [
            "tracecap",
            "run",
            "--run-dir",
            str(self.run_dir),
            "--capture",
            f"dir:{self.out_root}",
            *self.args,
        ]
        t0 = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            # Own session: a Ctrl-C on the benchmark's terminal must not reach tracecap before
            # the benchmark has decided to stop it (it does so in __exit__).
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = t0 + READY_TIMEOUT_S
        while b"tracecap: ready" not in self.stderr_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"tracecap did not get ready (exit {self.proc.returncode}):\n"
                    + self.stderr_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.02)
        self.ready_s = time.monotonic() - t0
        if self.ready_s > SLOW_READY_S:
            problem(
                f"slow start: `tracecap run` took {self.ready_s:.1f}s to print ready", kind="slow"
            )
        self._find_pids()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _find_pids(self) -> None:
        """The collector and file writer: children of supervisord, itself a child of `run`."""
        assert self.proc is not None
        for sup in proc_children(self.proc.pid):
            if "supervisord" not in proc_cmdline(sup):
                continue
            for kid in proc_children(sup):
                cmd = f" {proc_cmdline(kid)} "
                if " collector " in cmd:
                    self._pids["collector"] = kid
                elif " writer file " in cmd:
                    self._pids["writer"] = kid
        if "collector" not in self._pids:
            problem("could not find the collector process (child of supervisord)")

    def _sample(self) -> None:
        while not self._sampling.wait(0.1):
            self.sample_memory()

    def sample_memory(self) -> None:
        if "collector" in self._pids:
            self.collector.update(proc_memory_kib(self._pids["collector"]))
        if "writer" in self._pids:
            self.writer.update(proc_memory_kib(self._pids["writer"]))

    def stop(self) -> Stopped:
        if self.result is not None:
            return self.result
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        self.sample_memory()
        t0 = time.monotonic()
        returncode, interrupted = self._terminate()
        stop_s = time.monotonic() - t0
        if interrupted:  # tracecap is down and nothing left behind: now give up
            self.result = Stopped(returncode, "", {}, [], stop_s)
            raise KeyboardInterrupt
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        index_path = self.out_dir / "index.jsonl"
        index = []
        if index_path.exists():
            for line in index_path.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    index.append(json.loads(line))
        self.result = Stopped(returncode, stderr, parse_summary(stderr), index, stop_s)
        self._check(self.result)
        return self.result

    def _terminate(self) -> tuple[int | None, bool]:
        """SIGINT, as a user stops it, and wait for the flush; escalate only after a long
        timeout. A Ctrl-C of the benchmark meanwhile does not cut the wait short (tracecap
        would outlive us and keep its run directory), it is returned to be raised after."""
        if self.proc is None:
            return None, False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        interrupted = False
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while True:
            try:
                return self.proc.wait(max(0.0, deadline - time.monotonic())), interrupted
            except KeyboardInterrupt:
                interrupted = True
            except subprocess.TimeoutExpired:
                break
        problem(f"`tracecap run` did not stop within {STOP_TIMEOUT_S:.0f}s of SIGINT")
        self.proc.terminate()
        try:
            return self.proc.wait(20), interrupted
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(), interrupted

    def _check(self, res: Stopped) -> None:
        where = f"(stderr: {self.stderr_path}, kept with --keep-logs)"
        if res.returncode not in (0, None):
            problem(f"`tracecap run` exited with status {res.returncode} {where}")
        if not res.summary:
            problem(f"no `tracecap: summary:` line on stderr {where}")
        if "Traceback" in res.stderr:
            problem(
                f"a Python traceback on stderr: {traceback_gist(res.stderr)} {where}",
                kind="traceback",
            )
        if res.stop_s > SLOW_STOP_S:
            problem(f"slow stop: {res.stop_s:.1f}s from SIGINT to exit", kind="slow-stop")


def traceback_gist(stderr: str) -> str:
    """The exception line and the innermost frame of the last traceback, as evidence.

    supervisord interleaves program logs, so lines of a traceback may be split by others.
    """
    lines = stderr.splitlines()
    exc = [ln.strip() for ln in lines if re.match(r"^\s*[A-Za-z_.]*(Error|Exception)\b.*:", ln)]
    frames = [ln.strip() for ln in lines if re.match(r'^\s*File ".*", line \d+', ln)]
    return f"{exc[-1] if exc else '?'} (at {frames[-1] if frames else '?'})"


def parse_summary(stderr: str) -> dict[str, int]:
    line = next((ln for ln in stderr.splitlines() if "tracecap: summary:" in ln), "")
    if not line:
        return {}
    out = {}
    for key, pattern in SUMMARY_FIELDS.items():
        m = re.search(pattern, line)
        if m:
            out[key] = int(m.group(1))
    return out


# --------------------------------------------------------------------------------------------
# Write capture trials


@dataclass
class Trial:
    """One workload run under tracecap, and whether every byte arrived."""

    chunk: int
    target_mbps: float | None  # None: unpaced
    bytes: int = 0
    writes: int = 0
    elapsed: float = 0.0
    summary: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    sha_ok: bool = False
    missing_bytes: int = 0
    lost_bytes: int = 0  # bytes of the source the artifact lacks or gets wrong
    unreported_bytes: int = 0  # of those, outside the index's missing ranges
    notes: list[str] = field(default_factory=list)

    @property
    def mbps(self) -> float:
        return self.bytes / self.elapsed / MB if self.elapsed else 0.0

    @property
    def wps(self) -> float:
        return self.writes / self.elapsed if self.elapsed else 0.0

    @property
    def losses(self) -> int:
        return sum(self.summary.get(k, 0) for k in LOSS_FIELDS)

    @property
    def zero_loss(self) -> bool:
        return bool(self.summary) and self.losses == 0 and self.complete and self.sha_ok

    def describe(self) -> str:
        target = "unpaced" if self.target_mbps is None else f"target {self.target_mbps:7.1f}"
        s = self.summary
        verdict = "ZERO-LOSS" if self.zero_loss else "LOSSY"
        notes = " " + "; ".join(self.notes) if self.notes else ""
        return (
            f"{self.chunk // 1024:>2} KiB {target}: {self.mbps:7.1f} MB/s {self.wps:8.0f} w/s "
            f"{self.bytes / MIB:6.0f} MiB {self.elapsed:4.1f}s -> {verdict} "
            f"(ring {s.get('ring_records', '?')} rec/"
            f"{s.get('ring_bytes', '?')} B, table {s.get('table_full', '?')}, gaps "
            f"{s.get('bus_gaps', '?')}, backlog {s.get('bus_backlog', '?')} msg, index missing "
            f"{self.missing_bytes} B, lost "
            f"{self.lost_bytes} B, unlisted {self.unreported_bytes} B, complete={self.complete}, "
            f"sha={'ok' if self.sha_ok else 'MISMATCH'}){notes}"
        )


@dataclass
class Bench:
    """Parameters of a run (full or --quick) and everything measured."""

    quick: bool
    workdir: Path
    ready_s: list[float] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    heaviest: Tracecap | None = None
    heaviest_bytes: int = 0
    idle_collector_rss: list[int] = field(default_factory=list)
    counter: int = 0
    peak_collector_kib: int = 0
    peak_collector_run: str = ""
    page_cache_mbps: list[float] = field(default_factory=list)  # at the start and at the end

    @property
    def unpaced_s(self) -> float:
        return 1.5 if self.quick else 2.5

    @property
    def paced_s(self) -> float:
        return 1.0 if self.quick else 2.0

    @property
    def bisect_steps(self) -> int:
        # Six steps from the unpaced rate resolve the zero-loss rate to about 5%; four left the
        # 64 KiB figure at the last passing probe, 15% under the first failing one.
        return 2 if self.quick else 6

    @property
    def confirm_runs(self) -> int:
        return 0 if self.quick else 2

    @property
    def pairs(self) -> int:
        return 2 if self.quick else 5

    @property
    def syscalls(self) -> int:
        # Long enough (~0.1-0.3 s untraced) that timer and scheduling noise stay small.
        return 300_000 if self.quick else 1_000_000

    @property
    def baseline_runs(self) -> int:
        return 1 if self.quick else 3

    def unpaced_total(self, chunk: int) -> int:
        """Large enough that an unpaced run outlasts what the kernel ring buffer (64 MiB)
        absorbs, so its loss counts show the steady state, not just a burst."""
        big = chunk >= 65536
        return (512 if big else 256) * MIB if self.quick else (1024 if big else 512) * MIB

    def fresh(self) -> tuple[Path, Path]:
        """A data directory (under the path filter) and an output root, new for each run."""
        self.counter += 1
        data = self.workdir / "w"
        data.mkdir(exist_ok=True)
        return data / f"f{self.counter}", self.workdir / f"cap{self.counter}"

    def tracecap(self, args: Sequence[str], out_root: Path) -> Tracecap:
        return Tracecap(args, out_root, self.workdir)

    def record_run(self, tc: Tracecap) -> None:
        self.ready_s.append(tc.ready_s)
        if tc.collector.rss_kib > self.peak_collector_kib:
            self.peak_collector_kib = tc.collector.rss_kib
            self.peak_collector_run = " ".join(tc.args)
        if tc.result is not None:
            self.stop_s.append(tc.result.stop_s)

    def write_trial(self, chunk: int, target_mbps: float | None) -> Trial:
        target, out_root = self.fresh()
        if target_mbps is None:
            total, rate, max_s = self.unpaced_total(chunk), 0.0, self.unpaced_s
        else:
            rate = target_mbps * MB
            # A target the traced workload cannot reach must not turn into a long run.
            total, max_s = int(rate * self.paced_s), self.paced_s * 1.5
        trial = Trial(chunk, target_mbps)
        # Each trial starts with nothing left to write back: otherwise the previous (often
        # unpaced, gigabyte) trial's writeback throttles this one's writer, and the figure
        # measures the order of the trials.
        os.sync()
        tc = self.tracecap(["--capture", f"write={target.parent}/*"], out_root)
        try:
            with tc:
                res = run_child(write_argv(target, chunk, total, rate, max_s))
            self.record_run(tc)
            trial.bytes, trial.writes, trial.elapsed = res["bytes"], res["writes"], res["elapsed"]
            assert tc.result is not None
            self._verify(trial, target, tc.result, tc.out_dir)
            if target_mbps is None and trial.bytes >= self.heaviest_bytes and chunk >= 65536:
                self.heaviest, self.heaviest_bytes = tc, trial.bytes
        finally:
            target.unlink(missing_ok=True)
            shutil.rmtree(out_root, ignore_errors=True)
        log(trial.describe())
        return trial

    def _verify(self, trial: Trial, target: Path, res: Stopped, out_dir: Path) -> None:
        trial.summary = res.summary
        records = [
            r for r in res.index if r.get("kind") == "write" and r.get("source_path") == str(target)
        ]
        if not records:
            trial.notes.append("no index record")
            return
        if len(records) > 1:
            trial.notes.append(f"{len(records)} index records")
        rec = records[-1]
        trial.complete = rec.get("complete") is True
        trial.missing_bytes = sum(b - a for a, b in rec.get("missing", []))
        artifact = out_dir / rec.get("path", "?")
        if not artifact.exists():
            trial.notes.append(f"artifact {rec.get('path')} absent")
            return
        source_sha = sha256_file(target)
        artifact_sha = sha256_file(artifact)
        trial.sha_ok = source_sha == artifact_sha == rec.get("sha256")
        if source_sha == artifact_sha != rec.get("sha256"):
            trial.notes.append("index sha256 differs from the artifact's")
        if trial.complete and not trial.sha_ok:
            problem(
                f"index says complete=true but the artifact differs from the source "
                f"({trial.chunk} B writes, {trial.bytes} B; source {source_sha[:12]}, "
                f"artifact {artifact_sha[:12]}, index {str(rec.get('sha256'))[:12]})"
            )
        if not trial.sha_ok and source_sha != artifact_sha:
            lost, unreported = diff_against_missing(target, artifact, rec.get("missing", []))
            trial.lost_bytes, trial.unreported_bytes = lost, unreported
            if unreported:
                problem(
                    f"the index under-reports losses: {unreported} of {lost} bytes that differ "
                    f"from the source lie outside its `missing` ranges ({trial.chunk} B writes, "
                    f"{'unpaced' if trial.target_mbps is None else 'paced'}; kernel ring buffer "
                    f"dropped {trial.summary.get('ring_bytes', '?')} bytes; the index lists "
                    f"{trial.missing_bytes} missing, artifact size {rec.get('size')} of "
                    f"{trial.bytes}): the artifact holds zeros the index presents as captured",
                    kind="under-reported",
                )
        if trial.summary and trial.losses == 0 and not trial.complete:
            problem(
                f"silent loss: summary shows zero losses but the artifact is incomplete "
                f"({trial.missing_bytes} bytes missing, {trial.chunk} B writes)"
            )

    def search(self, chunk: int) -> dict[str, Any]:
        """Unpaced first; if lossy, bisect the paced rate between a passing and a failing one,
        halving downwards until something passes. Then repeat the best rate to see whether
        zero loss there is reproducible rather than luck."""
        unpaced = self.write_trial(chunk, None)
        trials = [unpaced]
        best: Trial | None = unpaced if unpaced.zero_loss else None
        if best is None:
            # Bounds are ACHIEVED rates: under tracecap the workload may not reach its target
            # (the capture costs CPU on a 2-core box), and what was lossless is what it did.
            hi, lo = unpaced.mbps, 0.0
            rate = hi / 2
            for _ in range(self.bisect_steps):
                t = self.write_trial(chunk, rate)
                trials.append(t)
                if t.zero_loss:
                    lo = max(lo, t.mbps)
                    if t.mbps < 0.9 * rate:  # saturated: more target, same rate
                        hi = min(hi, rate)
                    if best is None or t.mbps > best.mbps:
                        best = t
                else:
                    hi = min(hi, t.mbps, rate)
                if lo and hi <= lo * 1.03:
                    break  # converged (or noise made a lossy run slower than a clean one)
                rate = (lo + hi) / 2 if lo else hi / 2
        confirms: list[Trial] = []
        if best is not None and best.target_mbps is not None:
            for _ in range(self.confirm_runs):
                confirms.append(self.write_trial(chunk, best.target_mbps))
        return {"unpaced": unpaced, "trials": trials, "best": best, "confirms": confirms}

    def untraced(self, chunk: int, wrapper: Sequence[str] = (), max_s: float = 0.0) -> Trial:
        """The same unpaced workload without tracecap, optionally under a wrapper (strace)."""
        target, _ = self.fresh()
        trial = Trial(chunk, None)
        try:
            total = self.unpaced_total(chunk)
            res = run_child(
                [*wrapper, *write_argv(target, chunk, total, 0.0, max_s or self.unpaced_s)]
            )
            trial.bytes, trial.writes, trial.elapsed = res["bytes"], res["writes"], res["elapsed"]
        finally:
            target.unlink(missing_ok=True)
        return trial

    def overhead(self) -> dict[str, Any]:
        """Interleaved untraced/traced/empty-hook runs of the out-of-scope syscall workload; the
        order rotates so that drift (page cache, CPU frequency) does not favour one. The
        empty-hook runs (scripts/hook_floor.bpf.c) show what the tracepoints alone cost."""
        plain: list[float] = []
        traced: list[float] = []
        empty: list[float] = []
        ratios: list[float] = []
        floor_ratios: list[float] = []
        calls = 0
        floor = hook_floor_object(self.workdir)
        modes = ["plain", "traced"] + (["empty"] if floor else [])
        for i in range(self.pairs):
            times: dict[str, float] = {}
            for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
                if mode == "plain":
                    res = run_child(syscall_argv(self.syscalls))
                elif mode == "empty":
                    assert floor is not None
                    with empty_hooks(floor):
                        res = run_child(syscall_argv(self.syscalls))
                else:
                    _, out_root = self.fresh()
                    tc = self.tracecap(
                        ["--scope", "comm=nomatch-xyz", "--capture", "write"], out_root
                    )
                    try:
                        with tc:
                            res = run_child(syscall_argv(self.syscalls))
                            tc.sample_memory()
                        self.record_run(tc)
                        self.idle_collector_rss.append(tc.collector.rss_kib)
                        if tc.result and tc.result.summary.get("events", 0) > 0:
                            problem(
                                f"out-of-scope run captured {tc.result.summary['events']} events"
                                " with --scope comm=nomatch-xyz"
                            )
                    finally:
                        shutil.rmtree(out_root, ignore_errors=True)
                times[mode] = res["elapsed"]
                calls = res["syscalls"]
            plain.append(times["plain"])
            traced.append(times["traced"])
            ratios.append(times["traced"] / times["plain"])
            if "empty" in times:
                empty.append(times["empty"])
                floor_ratios.append(times["empty"] / times["plain"])
            log(
                f"overhead round {i + 1}: untraced {times['plain']:.3f}s traced "
                f"{times['traced']:.3f}s ratio {ratios[-1]:.2f}"
                + (f", empty hooks {floor_ratios[-1]:.2f}" if "empty" in times else "")
            )
        return {
            "plain": plain,
            "traced": traced,
            "ratios": ratios,
            "empty": empty,
            "floor_ratios": floor_ratios,
            "calls": calls,
        }


def hook_floor_object(workdir: Path) -> Path | None:
    """Build scripts/hook_floor.bpf.c (needs clang and bpf/vmlinux.h, which `make setup`
    provides); None, with a note, when it cannot be built."""
    source = Path(__file__).with_name("hook_floor.bpf.c")
    bpf_dir = Path(__file__).resolve().parent.parent / "bpf"
    out = workdir / "hook_floor.bpf.o"
    clang = shutil.which("clang")
    try:
        import collector.libbpf  # noqa: F401  (the tracecap venv's python runs the bench)
    except ImportError:
        clang = None
    if clang is None or not (bpf_dir / "vmlinux.h").exists():
        log("empty-hook floor skipped: needs clang, bpf/vmlinux.h and tracecap (make setup)")
        return None
    cmd = [clang, "-g", "-O2", "-target", "bpf", f"-I{bpf_dir}", "-c", str(source), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        log(f"empty-hook floor skipped: {res.stderr.strip()[:300]}")
        return None
    return out


@contextlib.contextmanager
def empty_hooks(obj_path: Path) -> Iterator[None]:
    """The empty programs attached (through links: closing detaches them)."""
    from collector.libbpf import BpfObject

    obj = BpfObject(str(obj_path))
    try:
        obj.load()
        for name in obj.programs:
            obj.attach(name)
        yield
    finally:
        obj.close()


# --------------------------------------------------------------------------------------------
# Report


def med_range(values: Sequence[float], fmt: Callable[[float], str]) -> tuple[str, str]:
    if not values:
        return "n/a", ""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med), "(1 run)"
    return fmt(med), f"{fmt(min(values))} .. {fmt(max(values))} (n={len(values)})"


def table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"  {'figure':<{w0}}  {'median/value':>{w1}}  range")
    for name, value, rng in rows:
        print(f"  {name:<{w0}}  {value:>{w1}}  {rng}")


def page_cache_write_mbps(directory: Path, total: int = 512 * MIB) -> float:
    """How fast this machine takes writes into new page-cache pages (256 KiB pwrites to a new
    file). Every capture writes its artifact this way, so it bounds the write capture. On a
    VM whose memory is backed by the hypervisor on first touch it is much lower at first
    than once the guest has used its memory (measured here: 340 MB/s before, 3 GB/s after)."""
    path = directory / "page-cache-probe"
    buf = os.urandom(256 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for i in range(total // len(buf)):
            os.pwrite(fd, buf, i * len(buf))
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return total / elapsed / MB


#: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (linux/fs.h, x86-64) and FS_TOPDIR_FL ("chattr +T").
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_subdirectories(directory: Path) -> bool:
    """Ask ext2/3/4 to place each new subdirectory of ``directory`` in a block group of its own
    choosing (the top-level rule), as ``chattr +T`` does; False where the file system has no
    such flag. Why: ext4 without a journal (this VM's root) skips inodes freed in the last
    minutes when it allocates one, reading each one's inode block, so a file created where
    thousands were just deleted cost 174-367 us of CPU, against 8-14 us in a fresh group
    (measured here). Every round of a benchmark deletes its files; without this, later
    rounds, traced or not, measure that scan more than the workload or the capture."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        value = int.from_bytes(flags, "little") | FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, value.to_bytes(8, "little"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def create_cost_us(directory: Path, files: int = 1000) -> float:
    """CPU microseconds a new empty file costs (create, close, later unlink not counted) in a
    fresh subdirectory of ``directory``: the file system's share of any per-file figure."""
    sub = Path(tempfile.mkdtemp(dir=directory))
    try:
        dir_fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            t0 = time.process_time()
            for i in range(files):
                os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600,
                                 dir_fd=dir_fd))  # fmt: skip
            return (time.process_time() - t0) / files * 1e6
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(sub, ignore_errors=True)


def machine_facts(page_cache_mbps: Sequence[float]) -> list[tuple[str, str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kib / MIB:.1f} GiB"
    fs = "?"
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if "/tmp/".startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, fs = mnt, f"{fstype} on {dev} ({mnt})"
    version = "?"
    with contextlib.suppress(Exception):
        from importlib.metadata import version as pkg_version

        version = pkg_version("tracecap")
    return [
        ("nproc (online / usable)", f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}", ""),
        ("kernel", platform.release(), platform.version()),
        ("cpu", cpu, ""),
        ("memory", mem, ""),
        ("/tmp filesystem", fs, ""),
        (
            "page-cache writes, new file",
            " / ".join(fmt_mbps(v) for v in page_cache_mbps),
            "256 KiB pwrites, at the start / end: what writing an artifact costs",
        ),
        ("python (workload)", platform.python_version(), sys.executable),
        ("tracecap", version, shutil.which("tracecap") or "not on PATH"),
    ]


def fmt_mbps(v: float) -> str:
    return f"{v:.1f} MB/s"


def fmt_wps(v: float) -> str:
    return f"{v:,.0f} w/s"


def rss_parts(mem: MemPeak) -> str:
    return ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in sorted(mem.parts.items()))


def fmt_calls(v: float) -> str:
    return f"{v:,.0f} calls/s"


def fmt_s(v: float) -> str:
    return f"{v:.2f} s"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}x"


def report(
    bench: Bench,
    searches: dict[int, list[dict[str, Any]]],
    baselines: dict[int, list[Trial]],
    straced: dict[int, list[Trial]] | None,
    overhead: dict[str, Any],
    elapsed: float,
) -> None:
    mode = "quick" if bench.quick else "full"
    print(f"\ntracecap benchmark ({mode} run, {elapsed:.0f}s)")
    table("Machine", machine_facts(bench.page_cache_mbps))

    for chunk, rounds in searches.items():
        kib = chunk // 1024
        s = rounds[-1]  # the last round in detail; every round's search is listed below
        best: Trial | None = s["best"]
        un: Trial = s["unpaced"]
        rows: list[tuple[str, str, str]] = []
        per_round = [r["best"].mbps if r["best"] is not None else 0.0 for r in rounds]
        base = baselines[chunk]
        base_mbps = statistics.median([t.mbps for t in base])
        rows.append(("ZERO-LOSS RATE, EACH ROUND", *med_range(per_round, fmt_mbps)))
        # the figure that carries between machines: the same workload untraced, same run
        rows.append(
            (
                "  zero-loss / untraced rate",
                *med_range([v / base_mbps for v in per_round], fmt_ratio),
            )
        )
        rows.append(
            (
                "  writes (events) per second",
                *med_range([v * 1e6 / chunk for v in per_round], fmt_wps),
            )
        )
        if len(rounds) > 1:
            rows.append(("last round:", "", ""))
        if best is None:
            lowest = min(t.target_mbps or un.mbps for t in s["trials"])
            rows.append(("highest zero-loss rate", "none found", f"lossy down to {lowest:.1f}"))
        else:
            runs = [best, *s["confirms"]]
            ok = [t for t in runs if t.zero_loss]
            rows.append(("highest zero-loss rate", *med_range([t.mbps for t in runs], fmt_mbps)))
            rows.append(
                ("  writes (events) per second", *med_range([t.wps for t in runs], fmt_wps))
            )
            target = "unpaced" if best.target_mbps is None else f"{best.target_mbps:.1f} MB/s"
            sat = best.target_mbps is not None and best.mbps < 0.9 * best.target_mbps
            rows.append(
                (
                    "  paced target",
                    target,
                    f"zero-loss in {len(ok)}/{len(runs)} runs"
                    + ("; workload could not reach the target under tracecap" if sat else ""),
                )
            )
            rows.append(("  data per run", f"{best.bytes / MIB:.0f} MiB", ""))
        lossy = [t for t in s["trials"] if not t.zero_loss and t is not un]
        if lossy:
            slowest = min(lossy, key=lambda t: t.mbps)
            rows.append(
                (
                    "  slowest lossy paced run",
                    fmt_mbps(slowest.mbps),
                    f"target {slowest.target_mbps:.1f} MB/s, "
                    f"ring drops {slowest.summary.get('ring_records', '?')} records",
                )
            )
        rows.append(("unpaced under tracecap", fmt_mbps(un.mbps), f"{fmt_wps(un.wps)}, 1 run"))
        rows.append(
            ("  zero loss at unpaced", "yes" if un.zero_loss else "NO", f"{un.bytes / MIB:.0f} MiB")
        )
        sm = un.summary
        rows.append(
            (
                "  kernel ring buffer drops",
                f"{sm.get('ring_records', '?')} rec",
                f"{sm.get('ring_bytes', '?')} bytes",
            )
        )
        for key, label in (
            ("table_full", "syscall table full"),
            ("decode_errors", "collector decode errors"),
            ("bus_gaps", "bus gaps (messages)"),
            ("malformed", "malformed messages"),
            ("writer_errors", "writer errors"),
            ("bus_backlog", "bus backlog full (messages)"),
        ):
            rows.append((f"  {label}", str(sm.get(key, "?")), ""))
        rows.append(
            (
                "  artifact",
                "complete" if un.complete else "INCOMPLETE",
                f"{un.lost_bytes} of {un.bytes} bytes lost; index lists {un.missing_bytes} "
                f"missing, {un.unreported_bytes} lost bytes unlisted; sha256 "
                + ("matches" if un.sha_ok else "differs"),
            )
        )
        rows.append(
            (
                "  events / bytes in summary",
                str(sm.get("events", "?")),
                f"{sm.get('bytes_captured', '?')} bytes captured",
            )
        )
        rows.append(("untraced (no tracecap)", *med_range([t.mbps for t in base], fmt_mbps)))
        rows.append(("  untraced writes", *med_range([t.wps for t in base], fmt_wps)))
        if straced is None:
            rows.append(("under strace -e write=all", "strace not installed", ""))
        else:
            st = straced[chunk]
            rows.append(("under strace -e write=all", *med_range([t.mbps for t in st], fmt_mbps)))
            st_med = statistics.median([t.mbps for t in st])
            rows.append(
                ("  strace / untraced", f"{st_med / base_mbps:.3f}x", f"{fmt_wps(st[0].wps)}")
            )
            if any(per_round):
                rows.append(
                    (
                        "  tracecap zero-loss / strace",
                        f"{statistics.median(per_round) / st_med:.1f}x",
                        "median round's complete capture vs strace hex dump to /dev/null",
                    )
                )
        table(f"Write capture, {kib} KiB writes to one file on {'/tmp'}", rows)
        for i, r in enumerate(rounds, 1):
            print(f"  search, round {i}:")
            for t in r["trials"] + r["confirms"]:
                print(f"    {t.describe()}")

    ov_rows = [
        (
            "traced / untraced time",
            *med_range(overhead["ratios"], fmt_ratio),
        ),
        ("untraced time", *med_range(overhead["plain"], fmt_s)),
        ("traced time", *med_range(overhead["traced"], fmt_s)),
        (
            "untraced syscall rate",
            *med_range([overhead["calls"] / t for t in overhead["plain"]], fmt_calls),
        ),
        (
            "added cost per syscall",
            *med_range(
                [
                    (t - p) / overhead["calls"] * 1e9
                    for p, t in zip(overhead["plain"], overhead["traced"], strict=True)
                ],
                lambda v: f"{v:.0f} ns",
            ),
        ),
    ]
    if overhead["floor_ratios"]:
        ov_rows += [
            (
                "empty hooks / untraced time",
                *med_range(overhead["floor_ratios"], fmt_ratio),
            ),
            (
                "  cost of the hook itself",
                *med_range(
                    [
                        (e - p) / overhead["calls"] * 1e9
                        for p, e in zip(overhead["plain"], overhead["empty"], strict=True)
                    ],
                    lambda v: f"{v:.0f} ns",
                ),
            ),
        ]
    table(
        f"Out-of-scope overhead ({overhead['calls']:,} syscalls: 64 B writes to /dev/null and "
        f"reads of /dev/zero; tracecap --scope comm=nomatch-xyz --capture write; the same "
        f"tracepoints with empty programs (scripts/hook_floor.bpf.c); "
        f"{len(overhead['ratios'])} interleaved rounds)",
        ov_rows,
    )

    life = [
        ("time to ready", *med_range(bench.ready_s, fmt_s)),
        ("time to stop (SIGINT to exit)", *med_range(bench.stop_s, fmt_s)),
    ]
    h = bench.heaviest
    if h is not None:
        life.append(
            (
                "collector VmRSS, heaviest run (peak)",
                f"{h.collector.rss_kib / 1024:.1f} MiB",
                f"VmHWM {h.collector.hwm_kib / 1024:.1f} MiB; {rss_parts(h.collector)}; "
                f"unpaced 64 KiB, {bench.heaviest_bytes / MIB:.0f} MiB written",
            )
        )
        life.append(
            (
                "file writer VmRSS, heaviest run",
                f"{h.writer.rss_kib / 1024:.1f} MiB",
                f"VmHWM {h.writer.hwm_kib / 1024:.1f} MiB; {rss_parts(h.writer)}",
            )
        )
    if bench.peak_collector_kib:
        life.append(
            (
                "collector VmRSS, highest of all runs",
                f"{bench.peak_collector_kib / 1024:.1f} MiB",
                f"tracecap run {bench.peak_collector_run}",
            )
        )
    if bench.idle_collector_rss:
        life.append(
            (
                "collector VmRSS, out-of-scope runs",
                *med_range([v / 1024 for v in bench.idle_collector_rss], lambda v: f"{v:.1f} MiB"),
            )
        )
    table(f"Pipeline ({len(bench.ready_s)} tracecap runs)", life)

    print("\nProblems seen in tracecap")
    if PROBLEMS:
        for msg, count in PROBLEMS.values():
            print(f"  - {msg}" + (f" [seen in {count} runs]" if count > 1 else ""))
    else:
        print("  none")


# --------------------------------------------------------------------------------------------


def preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (tracecap loads eBPF programs)")
    if not shutil.which("tracecap"):
        sys.exit("bench: tracecap is not on PATH: run `make setup`")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        sys.exit("bench: the kernel has no BTF (/sys/kernel/btf/vmlinux)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark tracecap's write capture: highest zero-loss rate for 64 KiB and 4 KiB "
            "writes, out-of-scope overhead, time to ready, collector memory, and strace for "
            "comparison. Prints a report; needs root."
        )
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer and shorter runs (about 1.5 minutes)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="searches of the highest zero-loss rate per write size, reported as median and "
        "range (default 3, with --quick 1)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the work directory (tracecap stderr of every run) instead of deleting it",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    preflight()

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwind through every finally: stop tracecap, clean up

    signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background of a script, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tcb-", dir="/tmp"))
    workdir.chmod(0o755)  # the unprivileged writers must reach <workdir>/capN
    spread_subdirectories(workdir)  # each trial's files in a group no earlier trial churned
    bench = Bench(args.quick, workdir)
    strace = shutil.which("strace")
    try:
        searches: dict[int, list[dict[str, Any]]] = {65536: [], 4096: []}
        baselines: dict[int, list[Trial]] = {}
        straced: dict[int, list[Trial]] | None = {} if strace else None
        bench.page_cache_mbps.append(page_cache_write_mbps(workdir))
        for chunk in (65536, 4096):
            log(f"untraced baseline, {chunk // 1024} KiB writes")
            bench.untraced(chunk)  # warm-up, discarded: the first run pays for cold caches
            baselines[chunk] = [bench.untraced(chunk) for _ in range(bench.baseline_runs)]
            if straced is not None and strace:
                log(f"under strace, {chunk // 1024} KiB writes")
                wrapper = [strace, "-f", "-e", "trace=write", "-e", "write=all", "-o", "/dev/null"]
                straced[chunk] = [
                    bench.untraced(chunk, wrapper, max_s=bench.paced_s)
                    for _ in range(bench.baseline_runs)
                ]
        # Rounds interleave the sizes, so that a slow spell of the machine (writeback, the
        # hypervisor) spreads over both rather than sinking one.
        for rnd in range(args.rounds):
            for chunk in searches:
                log(
                    f"round {rnd + 1}/{args.rounds}: searching the highest zero-loss rate, "
                    f"{chunk // 1024} KiB writes"
                )
                searches[chunk].append(bench.search(chunk))
        log("out-of-scope overhead")
        overhead = bench.overhead()
        bench.page_cache_mbps.append(page_cache_write_mbps(workdir))
        report(bench, searches, baselines, straced, overhead, time.monotonic() - started)
    except KeyboardInterrupt:
        log("interrupted: tracecap stopped, cleaning up")
        return 130
    finally:
        if args.keep_logs:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
