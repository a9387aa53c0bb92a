#!/usr/bin/env python3
"""Benchmark of the fleet path: bus -> `tracecap bridge --nats` -> JetStream -> remote writer.

Prints figures, checks nothing (it is not a test). One `tracecap run --nats` (collector, local
file writer and the bridge, as deployed) on 127.0.0.1 with a real nats-server (JetStream, file
storage, max_payload 8MB), and one remote file writer. Each round writes a file of SIZE bytes in
64 KiB writes (scripts/bench.py's workload, unpaced or at a rate) and times, from the workload's
start, when the last byte is on disk locally and at the remote writer (artifact sizes polled
every 5 ms), then checks after the index lines that both copies are complete and equal to each
other (sha256): zero loss, or the round says it lost. Figures: MB/s and bus messages (events)/s to
the remote writer, against the local lossless write-capture rate of the same round.

Run as root after `make setup-test`: ``scripts/bench_fleet.py [--mib 256] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import write_argv

MIB = 1 << 20
MB = 1e6
CHUNK = 64 << 10
POLL_S = 0.005
TIMEOUT_S = 180.0
#: Paced rates tried in each round (0: as fast as the workload goes).
RATES = (0.0, 200 * MB, 100 * MB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_text(path: Path, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path}:\n{path.read_text()[-2000:]}")
        time.sleep(0.05)


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=f, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_messages(url: str) -> int:
    import nats

    async def main() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info("TRACECAP")).state.messages
        finally:
            await nc.close()

    return asyncio.run(main())


def records(index: Path, path: str) -> dict | None:
    if not index.exists():
        return None
    mine = [json.loads(line) for line in index.read_text().splitlines()]
    mine = [r for r in mine if r.get("path") == path]
    return mine[-1] if mine else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def one_round(
    work: Path, local_out: Path, remote_out: Path, url: str, size: int, rate: float, n: int
) -> dict:
    target = work / f"round-{n}.bin"
    before = stream_messages(url)
    t0 = time.monotonic()
    child = subprocess.Popen(write_argv(target, CHUNK, size, rate, 0), stdout=subprocess.PIPE)
    st = None
    done: dict[str, float] = {}
    deadline = t0 + TIMEOUT_S
    while len(done) < 2 and time.monotonic() < deadline:
        if st is None and target.exists():
            st = os.stat(target)
            dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
            name = f"host/write.dev-{dev}.inode-{st.st_ino}"
        if st is not None:
            for where, out in (("local", local_out), ("remote", remote_out / "bench")):
                if where not in done:
                    try:
                        if os.stat(out / name).st_size >= size:
                            done[where] = time.monotonic() - t0
                    except FileNotFoundError:
                        pass
        time.sleep(POLL_S)
    workload = json.loads(child.communicate(timeout=TIMEOUT_S)[0].decode().splitlines()[-1])
    time.sleep(2.5)  # the idle flush writes both index lines
    local = records(local_out / "index.jsonl", name)
    remote = records(remote_out / "bench" / "index.jsonl", name)
    messages = stream_messages(url) - before
    lossless = bool(
        local
        and remote
        and local["complete"]
        and remote["complete"]
        and local["size"] == remote["size"] == size
        and sha256(local_out / name) == sha256(remote_out / "bench" / name)
    )
    return {
        "rate": rate,
        "workload_mbps": workload["bytes"] / workload["elapsed"] / MB,
        "local_s": done.get("local"),
        "remote_s": done.get("remote"),
        "messages": messages,
        "lossless": lossless,
        "local_complete": bool(local and local["complete"]),
        "remote_complete": bool(remote and remote["complete"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="file size per round (MiB)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: run as root", file=sys.stderr)
        return 1
    size = args.mib * MIB
    base = Path(tempfile.mkdtemp(prefix="tcbf-", dir="/tmp"))
    base.chmod(0o755)
    run_dir = Path(tempfile.mkdtemp(prefix="tcbf-", dir="/run"))
    bridge_log = run_dir / "bridge-nats.log"  # `tracecap run --nats` starts the bridge
    procs: list[subprocess.Popen] = []
    results = []
    try:
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        conf = base / "nats.conf"
        conf.write_text(
            f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{base}/js" }}\nmax_payload: 8MB\n'
        )
        procs.append(start(["nats-server", "-c", str(conf)], base / "nats.log"))
        wait_text(base / "nats.log", "Server is ready")
        work = base / "work"
        work.mkdir()
        run_log = base / "run.log"
        procs.append(
            start(
                [
                    "tracecap", "run", "--run-dir", str(run_dir), "--capture",
                    f"dir:{base}/cap", "--capture", f"write={work}/*",
                    "--nats", url, "--host", "bench",
                ],
                run_log,
            )
        )  # fmt: skip
        wait_text(run_log, "tracecap: ready")
        remote = base / "remote"
        remote.mkdir()
        shutil.chown(remote, "tracecap", "tracecap")
        wrun = base / "wrun"
        (wrun / "stats").mkdir(parents=True)
        shutil.chown(wrun, "tracecap", "tracecap")
        shutil.chown(wrun / "stats", "tracecap", "tracecap")
        writer_log = base / "writer.log"
        wait_text(bridge_log, "publishing")
        procs.append(
            start(
                [
                    "tracecap", "writer", "file", "--connect", url, "--capture", f"dir:{remote}",
                    "--run-dir", str(wrun),
                ],
                writer_log,
            )
        )  # fmt: skip
        wait_text(writer_log, "consuming")
        time.sleep(1.0)
        n = 0
        for _ in range(args.rounds):
            for rate in RATES:
                r = one_round(work, base / "cap" / "out", remote / "out", url, size, rate, n)
                n += 1
                print(f"bench_fleet: {json.dumps(r)}", file=sys.stderr, flush=True)
                results.append(r)
    finally:
        for proc in reversed(procs):
            stop(proc, signal.SIGINT if proc is procs[1] else signal.SIGTERM)
        for log in (bridge_log, base / "writer.log"):
            if log.exists():
                print(log.read_text()[-600:], file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\nFleet: bus -> bridge -> JetStream -> remote file writer, {args.mib} MiB a file")
    print("  median (min-max) of the rounds; remote/local: per round, both lossless")
    print("  rate (MB/s)  local ok  remote ok  local MB/s          remote MB/s         "
          "remote/local        events/s")  # fmt: skip
    for rate in RATES:
        mine = [r for r in results if r["rate"] == rate]
        ok_local = sum(r["local_complete"] for r in mine)
        ok_remote = sum(r["lossless"] for r in mine)
        local = [size / r["local_s"] / MB for r in mine if r["local_complete"] and r["local_s"]]
        good = [r for r in mine if r["lossless"] and r["remote_s"] and r["local_s"]]
        remote_mbps = [size / r["remote_s"] / MB for r in good]
        ratios = [r["local_s"] / r["remote_s"] for r in good]
        events = [r["messages"] / r["remote_s"] for r in good]
        print(
            f"  {rate / MB if rate else 'unpaced':>11}  {ok_local}/{len(mine):<6}  "
            f"{ok_remote}/{len(mine):<7}  {_spread(local):<18}  {_spread(remote_mbps):<18}  "
            f"{_spread(ratios, '.2f'):<18}  {_spread(events, '.0f')}"
        )
    return 0


def _spread(values: list[float], fmt: str = ".1f") -> str:
    """``median (min-max)``, or ``-`` without values."""
    if not values:
        return "-"
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:{fmt}} ({low:{fmt}}-{high:{fmt}})"


if __name__ == "__main__":
    sys.exit(main())
