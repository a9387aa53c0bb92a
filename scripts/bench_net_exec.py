#!/usr/bin/env python3
"""Benchmark of network and exec capture: prints figures, asserts nothing.

Measured in one run, beside the tool a user would otherwise use, because this machine is noisy:
- the highest rate of packets `tcpdump -i lo -w` takes with no kernel drop and the highest
  `tracecap --capture network` takes with zero loss, each searched by bisection between the
  highest lossless and the lowest lossy rate the sender reached, in rounds, with the sender
  pinned to one CPU and the capture (tcpdump, or tracecap's processes) to another, so that both
  face the same sender and neither steals its CPU;
- a loopback TCP transfer's time with network capture on versus off (a ratio);
- how long a 100 MB executed binary takes to land as an artifact.

Run as root after `make setup` (`make bench` runs it after scripts/bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from collector.probes import PACKET_RING_BYTES
from tracecap.options import mem_total_kib, ring_mb_for_memory

PY = sys.executable
#: The CPU the UDP sender is pinned to, and the CPUs of the capture under test (tcpdump or
#: tracecap's processes, which inherit it): on the 2-core bench machine an unpinned sender
#: shared its CPU with the collector and reached 41,520 packets/s beside tracecap against
#: 110,979 beside tcpdump (NOTES.md, issue 16), so the ratio measured the sender.
SENDER_CPUS = {1}
CAPTURE_CPUS = {0}
#: Ring space of one bench packet (collector/probes.py PACKET_RING_BYTES): an 88-byte
#: record, 28 bytes of IPv4 and UDP headers, the ring's 8-byte header.
RING_PACKET_BYTES = 128
#: The bisection stops when the lowest lossy rate is within this fraction of the highest
#: lossless one.
WITHIN = 0.05
#: Below this many packets a second a search gives up (nothing is lossless).
FLOOR_RATE = 1_000.0

UDP_FLOOD = """
import socket, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
srv.bind(("127.0.0.1", 0))
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"TCBENCH-" + b"x" * 92
start = time.monotonic()
for i in range(n):
    cli.sendto(payload, srv.getsockname())
    if rate and i % 100 == 0:
        ahead = i / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(time.monotonic() - start)
"""

TCP_TRANSFER = """
import socket, sys, threading, time
total = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
def sink():
    c, _ = srv.accept()
    got = 0
    while got < total:
        got += len(c.recv(1 << 20))
t = threading.Thread(target=sink)
t.start()
cli = socket.create_connection(srv.getsockname())
block = b"z" * (1 << 20)
start = time.monotonic()
for _ in range(total >> 20):
    cli.sendall(block)
t.join()
print(time.monotonic() - start)
"""


class Tracecap:
    """`tracecap run` started like the end-to-end tests start it, always stopped."""

    def __init__(self, workdir: Path, *args: str, cpus: set[int] | None = None) -> None:
        self.root = workdir / f"cap-{time.monotonic_ns()}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="tcb-", dir="/run"))
        self.err = self.root.with_suffix(".err")
        argv = ["tracecap", "run", "--run-dir", str(self.run_dir),
                "--capture", f"dir:{self.root}", *args]  # fmt: skip
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                         preexec_fn=pinned(cpus))  # fmt: skip
        deadline = time.monotonic() + 60
        while b"tracecap: ready" not in self.err.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tracecap did not start:\n{self.err.read_text()}")
            time.sleep(0.05)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(120)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.err.read_text(errors="replace")


#: (sender CPUs, capture CPUs); None: not pinned.
Pins = tuple[set[int] | None, set[int] | None]


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child (and everything it starts) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def pinning() -> Pins:
    """(sender CPUs, capture CPUs), or no pinning on a machine without both CPUs usable."""
    usable = os.sched_getaffinity(0)
    if usable >= SENDER_CPUS | CAPTURE_CPUS:
        return SENDER_CPUS, CAPTURE_CPUS
    return None, None


@dataclass(frozen=True)
class Trial:
    """One flood: the rate asked (None: unpaced), the rate the sender reached, and whether
    the capture took every packet."""

    asked: float | None
    reached: float
    lossless: bool


def highest_lossless(trials: Sequence[Trial]) -> Trial | None:
    ok = [t for t in trials if t.lossless]
    return max(ok, key=lambda t: t.reached) if ok else None


def lowest_lossy(trials: Sequence[Trial]) -> Trial | None:
    lost = [t for t in trials if not t.lossless]
    return min(lost, key=lambda t: t.reached) if lost else None


def next_rate(trials: Sequence[Trial], within: float = WITHIN) -> float | None:
    """The next rate to ask for, or None when the search is over: after an unpaced flood,
    halve from the lowest lossy reached rate until one is lossless, then bisect between the
    highest lossless and the lowest lossy reached rates until they are within ``within``.
    Over as well when nothing was lost (the sender is the bound), when a lossless rate is at or
    above a lossy one (the threshold is not a single rate in this run: say so, not guess), when
    the rate falls under FLOOR_RATE, or when the last flood moved neither bound (the sender
    cannot reach more). The rate asked is the wanted reached rate raised by the last paced flood's
    shortfall (asked over reached): a sender short of CPU falls behind its pacing."""
    lo, hi = highest_lossless(trials), lowest_lossy(trials)
    if hi is None:
        return None
    if len(trials) > 1 and trials[-1] not in (lo, hi):
        return None
    if lo is None:
        rate = hi.reached / 2
        if rate < FLOOR_RATE:
            return None
    elif lo.reached >= hi.reached or hi.reached <= lo.reached * (1 + within):
        return None
    else:
        rate = (lo.reached + hi.reached) / 2
    paced = [t for t in trials if t.asked is not None and t.reached > 0]
    if paced:
        rate *= min(2.0, max(1.0, paced[-1].asked / paced[-1].reached))
    return rate


def search(trial: Callable[[float | None], Trial], max_trials: int = 10) -> list[Trial]:
    """Unpaced first, then the rates ``next_rate`` asks for, at most ``max_trials`` floods."""
    trials = [trial(None)]
    while len(trials) < max_trials:
        rate = next_rate(trials)
        if rate is None:
            break
        trials.append(trial(rate))
    return trials


def threshold_text(trials: Sequence[Trial]) -> str:
    """Both ends of a search: the highest lossless and the lowest lossy reached rates."""
    lo, hi = highest_lossless(trials), lowest_lossy(trials)
    low = f"{lo.reached:,.0f}/s" if lo else "none"
    if hi is None:
        return f"lossless up to {low} (nothing lost: the sender is the bound)"
    note = "  NOT MONOTONE: lossless above a lossy rate" if lo and lo.reached >= hi.reached else ""
    return f"lossless at {low}, lossy at {hi.reached:,.0f}/s{note}"


def ratio_text(tc: Sequence[Trial], td: Sequence[Trial]) -> str:
    """tracecap's lossless rate over tcpdump's, and tracecap's lowest lossy rate over the same."""
    tc_lo, td_lo = highest_lossless(tc), highest_lossless(td)
    if tc_lo is None or td_lo is None:
        return "not comparable (one of them lost packets at every rate)"
    ratio = f"{tc_lo.reached / td_lo.reached:.2f}x"
    tc_hi, td_hi = lowest_lossy(tc), lowest_lossy(td)
    sender = "; tcpdump lost nothing: the sender bounds it" if td_hi is None else ""
    if tc_hi is None and td_hi is None:
        return f"{ratio} of the sender's rates (neither lost a packet: the sender bounds both)"
    if tc_hi is None:
        return f"at least {ratio} (tracecap lost nothing: the sender bounds it{sender})"
    return f"{ratio} (tracecap lossy at {tc_hi.reached / td_lo.reached:.2f}x{sender})"


def kernel_losses(summary: str) -> int:
    match = re.search(r"kernel ring buffer (\d+) records", summary)
    return int(match.group(1)) if match else -1


def timed_run(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds of one run of ``argv``, the CPU seconds (user and system) of it and its
    children (the kernel's work in its hooks is counted there) and its pid."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime, proc.pid


def kernel_counters(run_dir: Path, prefix: str) -> dict[str, int]:
    """The collector's live kernel counters whose names start with ``prefix``
    (`tracecap status`)."""
    out = subprocess.run(["tracecap", "status", "--run-dir", str(run_dir)], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    kernel = json.loads(out)["collector"]["kernel"]
    return {k: v for k, v in kernel.items() if k.startswith(prefix)}


def bus_gaps(summary: str) -> int:
    match = re.search(r"bus gaps (\d+) messages", summary)
    return int(match.group(1)) if match else -1


def count_bench_packets(pcap: Path) -> int:
    if not pcap.exists():
        return 0
    shown = subprocess.run(["tcpdump", "-n", "-r", str(pcap), "udp"], capture_output=True,
                           text=True)  # fmt: skip
    return sum(1 for line in shown.stdout.splitlines() if "UDP, length 100" in line)


def run_py(code: str, *args: str) -> float:
    done = subprocess.run([PY, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, check=True, timeout=600)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def tree_cpu(root: int) -> float:
    """CPU seconds (user and system) so far of ``root`` and every live descendant of it
    (tracecap's supervisor, collector and writers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        spent[pid] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, cpu in spent.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        total += cpu if p == root else 0.0
    return total


def settled_cpu(root: int, quiet_s: float = 0.5, limit_s: float = 60.0) -> float:
    """``tree_cpu(root)`` once the tree has spent under 2% of a CPU for ``quiet_s`` (or after
    ``limit_s``): what tracecap's processes spent on work that has ended, their catching up
    included."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu(root)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = tree_cpu(root)
        if now - last < 0.02 * quiet_s:
            return now
        last = now
    return last


def flood(n: int, rate: float | None, cpus: set[int] | None) -> tuple[float, float]:
    """Send ``n`` datagrams at ``rate`` (None: unpaced): the wall seconds and the sender's CPU
    seconds, user and system (its share of the kernel's per-packet work, BPF programs included,
    is counted there: loopback delivers in the sender's context)."""
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(UDP_FLOOD), str(n), str(rate or 0)],
                            stdout=subprocess.PIPE, text=True, preexec_fn=pinned(cpus))  # fmt: skip
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"the UDP sender failed ({proc.returncode})")
    return float(out.split()[-1]), usage.ru_utime + usage.ru_stime


def udp_trial(workdir: Path, n: int, rate: float | None, pins: Pins, ring_mb: int) -> dict:
    sender, capture = pins
    tc = Tracecap(workdir, "--capture", "network", "--capture", "pcap-snaplen:headers",
                  "--ring-mb", str(ring_mb), cpus=capture)  # fmt: skip
    try:
        before = tree_cpu(tc.proc.pid)
        seconds, cpu = flood(n, rate, sender)
        capture_cpu = settled_cpu(tc.proc.pid) - before
    finally:
        summary = tc.stop()
    seen = count_bench_packets(tc.out / "pcap" / "single.pcap")
    r = {"sent": n, "seconds": seconds, "pps": n / seconds, "cpu": cpu,
         "capture_cpu": capture_cpu, "expected": 2 * n,
         "captured": seen, "losses": kernel_losses(summary), "gaps": bus_gaps(summary)}  # fmt: skip
    r["lossless"] = r["losses"] == 0 and r["gaps"] == 0 and seen == 2 * n
    return r


def host_ring_mb() -> int:
    """The ``--ring-mb`` tracecap gives itself on this host (from its memory)."""
    return ring_mb_for_memory(mem_total_kib(Path("/proc/meminfo").read_text()))


def packet_ring_kib(ring_mb: int) -> int:
    """The packet ring tracecap gets with ``--ring-mb`` (collector/probes.py ring_sizes),
    which tcpdump gets as its buffer (``-B``): the same room for a burst, so the search
    compares how fast each drains it."""
    return max(PACKET_RING_BYTES, ring_mb << 20) >> 10


#: tcpdump's packet buffer timeout (its default, 1000 ms): the kernel hands libpcap a block of
#: its ring (TPACKET_V3) when the block fills or this long after its first packet. tcpdump
#: stopped before that loses the last block's packets without counting them as dropped:
#: measured at 85,000 datagrams/s, 312 and 548 of 300,000 missing with "0 dropped by kernel"
#: when stopped once its CPU settled, none when stopped 2.5 s later.
TCPDUMP_TIMEOUT_S = 1.0


def tcpdump_trial(workdir: Path, n: int, rate: float | None, pins: Pins, ring_mb: int) -> dict:
    sender, capture = pins
    out = workdir / f"tcpdump-{time.monotonic_ns()}.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-w", str(out), "-B", str(packet_ring_kib(ring_mb)), "udp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(capture),
    )
    time.sleep(1.5)
    try:
        before = tree_cpu(dump.pid)
        seconds, cpu = flood(n, rate, sender)
        capture_cpu = settled_cpu(dump.pid) - before
        time.sleep(2 * TCPDUMP_TIMEOUT_S)  # the last block handed over and written
    finally:
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=30)
    found = re.search(r"(\d+) packets dropped by kernel", err)
    dropped = int(found.group(1)) if found else -1
    seen = count_bench_packets(out)
    out.unlink(missing_ok=True)
    return {"sent": n, "seconds": seconds, "pps": n / seconds, "cpu": cpu,
            "capture_cpu": capture_cpu, "captured": seen,
            "dropped": dropped, "lossless": dropped == 0 and seen == n}  # fmt: skip


def packet_round(
    workdir: Path, n: int, pins: Pins, ring_mb: int
) -> tuple[list[Trial], list[Trial]]:
    """One round: tcpdump's search, then tracecap's, each trial printed as it ends."""

    def traced(name: str, run: Callable[..., dict]) -> Callable[[float | None], Trial]:
        def trial(rate: float | None) -> Trial:
            r = run(workdir, n, rate, pins, ring_mb)
            asked = "unpaced" if rate is None else f"asked {rate:,.0f}/s"
            lost = (f"dropped by kernel {r['dropped']}" if "dropped" in r
                    else f"kernel ring losses {r['losses']}, bus gaps {r['gaps']}")  # fmt: skip
            expected = r.get("expected", n)
            print(f"    {name} {asked:>16}: reached {r['pps']:,.0f}/s "
                  f"(CPU a datagram: sender {r['cpu'] / n * 1e6:.1f} us, "
                  f"capture {r['capture_cpu'] / n * 1e6:.1f} us), "
                  f"{r['captured']}/{expected} in pcap, {lost}"
                  f"{'  LOSSLESS' if r['lossless'] else ''}", flush=True)  # fmt: skip
            return Trial(rate, r["pps"], r["lossless"])

        return trial

    td = search(traced("tcpdump ", tcpdump_trial))
    tc = search(traced("tracecap", udp_trial))
    return td, tc


def tcp_ratio(workdir: Path, total: int, pairs: int) -> list[float]:
    ratios = []
    for _ in range(pairs):
        plain = run_py(TCP_TRANSFER, str(total))
        tc = Tracecap(workdir, "--capture", "network")
        try:
            traced = run_py(TCP_TRANSFER, str(total))
        finally:
            tc.stop()
        ratios.append(traced / plain)
    return ratios


def exec_capture_seconds(workdir: Path, size: int) -> tuple[float, float]:
    """From exec to the binary's index line (the whole file written and hashed), and beside it
    what `cp` of the same binary takes untraced (the machine's own cost of moving it)."""
    binary = workdir / f"big-{time.monotonic_ns()}"
    with open("/bin/true", "rb") as src, open(binary, "wb") as dst:
        dst.write(src.read())
        dst.write(os.urandom(size))  # trailing bytes: the ELF still runs
    binary.chmod(0o755)
    copy = binary.with_suffix(".copy")
    cp_seconds = timed_run(["cp", str(binary), str(copy)])[0]
    copy.unlink()
    tc = Tracecap(workdir, "--capture", "exec")
    try:
        start = time.monotonic()
        subprocess.run([str(binary)], check=True)
        index = tc.out / "index.jsonl"
        while time.monotonic() - start < 300:
            if index.exists():
                for line in index.read_text().splitlines():
                    rec = json.loads(line)
                    if rec.get("kind") == "exec" and rec.get("inode") == binary.stat().st_ino:
                        return time.monotonic() - start, cp_seconds
            time.sleep(0.02)
        raise RuntimeError("the binary never reached the index")
    finally:
        tc.stop()
        binary.unlink()


def fmt(values: list[float], unit: str) -> str:
    return (f"{statistics.median(values):,.2f} {unit} (range {min(values):,.2f} .. "
            f"{max(values):,.2f}, n={len(values)})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs")
    parser.add_argument("--rounds", type=int, help="packet rounds (default 3, with --quick 1)")
    parser.add_argument("--packets-only", action="store_true", help="only the packet rounds")
    parser.add_argument("--ring-mb", type=int, help="tracecap's --ring-mb for the packet "
                        "rounds, and tcpdump's -B to match (default: from the host's memory, "
                        "as tracecap sizes it)")  # fmt: skip
    parser.add_argument("--datagrams", type=int, help="datagrams a flood (default 100,000, "
                        "with --quick 20,000); more than the packet ring holds measures a "
                        "sustained rate rather than a burst")  # fmt: skip
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    if os.geteuid() != 0 or not shutil.which("tracecap"):
        print("bench: run as root after `make setup`", file=sys.stderr)
        return 2
    n = args.datagrams or (20_000 if args.quick else 100_000)
    workdir = Path(tempfile.mkdtemp(prefix="tcbench-"))
    workdir.chmod(0o755)  # the writers run as the tracecap user
    # `make bench` runs this right after the write benchmark: without this, the kernel would
    # still be writing its gigabytes back, on the CPUs this measures (half the packets were
    # lost in that state; none standalone).
    os.sync()
    try:
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        pins = pinning()
        ring_mb = args.ring_mb or host_ring_mb()
        ring_kib = packet_ring_kib(ring_mb)
        where = (f"sender on CPU {sorted(pins[0])}, capture on CPU {sorted(pins[1])}"
                 if pins[0] else "not pinned (fewer than 2 usable CPUs)")  # fmt: skip
        print(f"\nnetwork: UDP, 100-byte payloads on loopback, {n:,} a flood, {where}, "
              f"tracecap --ring-mb {ring_mb}, tcpdump -B {ring_kib} (tracecap's packet ring); "
              "rates "
              "are datagrams sent a second, as the sender reached them (tracecap sees each "
              "twice, out and in; tcpdump -i lo once)")  # fmt: skip
        if 2 * n * RING_PACKET_BYTES <= ring_kib << 10:
            print("  (a flood fits in tracecap's packet ring whole: this measures a burst; "
                  "--datagrams above "
                  f"{(ring_kib << 10) // (2 * RING_PACKET_BYTES):,} measures a "
                  "sustained rate)")  # fmt: skip
        table = []
        for k in range(args.rounds):
            print(f"  round {k + 1}:", flush=True)
            td, tc = packet_round(workdir, n, pins, ring_mb)
            table.append((td, tc))
            print(f"    tcpdump -w: {threshold_text(td)}")
            print(f"    tracecap:   {threshold_text(tc)}")
            print(f"    tracecap / tcpdump: {ratio_text(tc, td)}", flush=True)
        ratios = [highest_lossless(tc).reached / highest_lossless(td).reached
                  for td, tc in table if highest_lossless(tc) and highest_lossless(td)]  # fmt: skip
        if ratios:
            print("  tracecap lossless / tcpdump lossless: " + fmt(ratios, "x"))
        if args.packets_only:
            return 0
        total = (64 if args.quick else 512) << 20
        tcp = tcp_ratio(workdir, total, 2 if args.quick else 4)
        print(
            f"\nloopback TCP transfer of {total >> 20} MiB, network capture on / off: "
            + fmt(tcp, "x")
        )
        size = (16 if args.quick else 100) << 20
        pairs = [exec_capture_seconds(workdir, size) for _ in range(2 if args.quick else 3)]
        times = [t for t, _ in pairs]
        print(
            f"\nexec capture of a {size >> 20} MB binary (exec to index line): "
            + fmt(times, "s")
            + f"; {size / 1e6 / statistics.median(times):,.0f} MB/s; "
            + "/ untraced cp of it: "
            + fmt([t / c for t, c in pairs], "x")
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
