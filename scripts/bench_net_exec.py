#!/usr/bin/env python3
"""Benchmark of network and exec capture: prints figures, asserts nothing.

Measured in one run, beside the tool a user would otherwise use, because this machine is noisy:
- packets per second through `tracecap --capture network` with zero loss, and beside it
  `tcpdump -i lo -w` on the same kind of traffic;
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
from pathlib import Path

PY = sys.executable

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

    def __init__(self, workdir: Path, *args: str) -> None:
        self.root = workdir / f"cap-{time.monotonic_ns()}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="tcb-", dir="/run"))
        self.err = self.root.with_suffix(".err")
        argv = ["tracecap", "run", "--run-dir", str(self.run_dir),
                "--capture", f"dir:{self.root}", *args]  # fmt: skip
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
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


def udp_trial(workdir: Path, n: int, rate: float) -> dict:
    tc = Tracecap(workdir, "--capture", "network", "--capture", "pcap-snaplen:headers")
    try:
        seconds = run_py(UDP_FLOOD, str(n), str(rate))
        time.sleep(1.0)
    finally:
        summary = tc.stop()
    seen = count_bench_packets(tc.out / "pcap" / "single.pcap")
    return {"sent": n, "seconds": seconds, "pps": n / seconds, "expected": 2 * n,
            "captured": seen, "losses": kernel_losses(summary),
            "gaps": bus_gaps(summary)}  # fmt: skip


def tcpdump_trial(workdir: Path, n: int) -> dict:
    out = workdir / f"tcpdump-{time.monotonic_ns()}.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-w", str(out), "-B", "16384", "udp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    try:
        seconds = run_py(UDP_FLOOD, str(n), "0")
        time.sleep(1.0)
    finally:
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=30)
    dropped = re.search(r"(\d+) packets dropped by kernel", err)
    seen = count_bench_packets(out)
    return {"sent": n, "seconds": seconds, "pps": n / seconds, "captured": seen,
            "dropped": int(dropped.group(1)) if dropped else -1}  # fmt: skip


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
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("tracecap"):
        print("bench: run as root after `make setup`", file=sys.stderr)
        return 2
    n = 20_000 if args.quick else 100_000
    workdir = Path(tempfile.mkdtemp(prefix="tcbench-"))
    workdir.chmod(0o755)  # the writers run as the tracecap user
    # `make bench` runs this right after the write benchmark: without this, the kernel would
    # still be writing its gigabytes back, on the CPUs this measures (half the packets were
    # lost in that state; none standalone).
    os.sync()
    try:
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print("\nnetwork: UDP, 100-byte payloads on loopback (each packet seen out and in)")
        best = None
        for rate in (0, 100_000, 50_000, 20_000, 10_000):
            r = udp_trial(workdir, n, rate)
            zero = r["losses"] == 0 and r["gaps"] == 0 and r["captured"] == r["expected"]
            label = "unpaced" if rate == 0 else f"paced {rate:,}/s"
            print(f"  tracecap {label:>14}: {r['pps']:,.0f} packets/s sent, "
                  f"{2 * r['pps']:,.0f} captured/s, {r['captured']}/{r['expected']} in pcap, "
                  f"kernel losses {r['losses']}, bus gaps {r['gaps']}"
                  f"{'  ZERO-LOSS' if zero else ''}")  # fmt: skip
            if zero:
                best = r
                break
        if best:
            print(f"  highest zero-loss rate tried: {2 * best['pps']:,.0f} packets/s "
                  "(both directions)")  # fmt: skip
        d = tcpdump_trial(workdir, n)
        # on lo, tcpdump sees each packet once; cgroup_skb sees it leaving and arriving
        print(f"  tcpdump -i lo -w (same flood, unpaced): {d['pps']:,.0f} packets/s sent, "
              f"{d['captured']}/{n} in pcap, {d['dropped']} dropped by kernel")  # fmt: skip
        # the machine-independent figure: the same traffic, sent packets per second, one run
        if best and d["dropped"] == 0 and d["captured"] == n:
            print(f"  tracecap zero-loss / tcpdump -w: {best['pps'] / d['pps']:.2f}x "
                  "(packets sent per second, both without loss)")  # fmt: skip
        else:
            print("  tracecap zero-loss / tcpdump -w: not comparable (one of them lost packets)")
        total = (64 if args.quick else 512) << 20
        ratios = tcp_ratio(workdir, total, 2 if args.quick else 4)
        print(
            f"\nloopback TCP transfer of {total >> 20} MiB, network capture on / off: "
            + fmt(ratios, "x")
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
