#!/usr/bin/env python3
"""Benchmark of `tracecap report` at scale: prints figures, asserts nothing.

A synthetic output directory of 100,000 artifacts (by default) in the proportions of a busy
capture: written and read files (index lines only), executed binaries, memory regions, BPF
programs and modules with real bytes on disk (ELF headers, .modinfo sections, instructions),
per-process pcap files of DNS and HTTP packets, and an events.jsonl of one exec per process.
Reported: the time to write the report (target under 60 s), the peak memory, the page's size,
and, when Debian's chromium is installed, how long headless Chromium takes to load the page, run
its script and paint the first screen (`--screenshot`; and `--dump-dom`, which also serialises
the whole DOM), against the same for an empty page (the browser's own start).

Run after `make setup-test` (`make bench` runs it with the other benchmarks).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import dpkt

from tracecap.tools.report import build

T0 = 1_700_000_000_000_000_000
#: Of every 100 artifacts: files, binaries, regions, programs, modules, pcaps.
SHARES = (("write", 70), ("read", 14), ("exec", 8), ("mem", 4), ("bpf", 2), ("module", 1),
          ("pcap", 1))  # fmt: skip
PROCESSES = 5000


def elf_head() -> bytes:
    return Path("/bin/ls").read_bytes()[:4096]


def module_image() -> bytes:
    """A relocatable ELF64 with a .modinfo section, as a .ko has."""
    modinfo = b"license=GPL\0name=bench_mod\0vermagic=6.1.0 SMP mod_unload\0"
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    head = bytearray(64)
    head[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HH", head, 16, 1, 62)
    shoff = 64 + len(modinfo) + len(shstrtab)
    struct.pack_into("<Q", head, 40, shoff)
    struct.pack_into("<HHH", head, 58, 64, 3, 2)

    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)

    sections = sh(0, 0, 0) + sh(1, 64, len(modinfo)) + sh(10, 64 + len(modinfo), len(shstrtab))
    return bytes(head) + modinfo + shstrtab + sections


def pcap_file(pid: int) -> bytes:
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf, linktype=101)
    query = bytes(dpkt.dns.DNS(id=pid & 0xFFFF, qd=[dpkt.dns.DNS.Q(name=f"h{pid}.test")]))
    for i in range(25):
        seg = dpkt.udp.UDP(sport=40000 + i, dport=53, data=query)
        seg.ulen = len(seg)
        writer.writepkt(bytes(dpkt.ip.IP(src=a, dst=b, p=17, data=seg)), ts=1_700_000_000 + i)
        tcp = dpkt.tcp.TCP(sport=50000, dport=80, data=b"GET /x HTTP/1.1\r\n\r\n")
        writer.writepkt(bytes(dpkt.ip.IP(src=a, dst=b, p=6, data=tcp)), ts=1_700_000_000 + i)
    return buf.getvalue()


def synthesize(out: Path, n: int) -> None:
    (out / "host").mkdir(parents=True)
    (out / "pcap" / "processes" / "host").mkdir(parents=True)
    bodies = {
        "exec": elf_head(),
        "mem": bytes(range(256)) * 16,
        "bpf": bytes.fromhex("b700000000000000850000000e0000009500000000000000") * 6,
        "module": module_image(),
    }
    kinds = [kind for kind, share in SHARES for _ in range(share)]
    with open(out / "index.jsonl", "w") as index:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            pid = 1000 + i % PROCESSES
            rec = {"kind": kind, "pid": pid, "tid": pid, "ppid": 1000 + (pid - 1000) // 4,
                   "uid": 0, "comm": f"proc{pid}", "container_id": "", "ts": T0 + i * 10**6,
                   "sha256": f"{i:064x}", "size": 4096, "complete": i % 50 != 0,
                   "missing": [] if i % 50 else [[100, 900]], "end": 4096}  # fmt: skip
            if kind in ("write", "read"):
                rec |= {"path": f"host/{kind}.dev-1.inode-{i}", "source_path": f"/srv/f{i}.dat",
                        "first_ts": rec.pop("ts"), "last_ts": T0 + i * 10**6 + 5}  # fmt: skip
            elif kind == "pcap":
                path = f"pcap/processes/host/proc{pid}_{pid}_{i}.pcap"
                (out / path).write_bytes(pcap_file(pid))
                rec |= {"path": path, "split": "process", "first_ts": rec.pop("ts")}
            else:
                path = f"host/{kind}.{i}"
                (out / path).write_bytes(bodies[kind])
                rec |= {"path": path, "source_path": f"/usr/bin/b{i}", "argv": ["b", str(i)],
                        "memfd": False, "address": 0x7F0000000000 + i * 4096,
                        "prot_before_rwx": "rw-", "prot_after_rwx": "r-x", "prog_name": f"p{i}",
                        "prog_type": 1, "insn_cnt": 18, "ret": 5, "params": "",
                        "syscall": "finit_module"}  # fmt: skip
            index.write(json.dumps(rec) + "\n")
    with open(out / "events.jsonl", "w") as events:
        events.write(json.dumps({"event": "capture_start", "ts": T0 - 10**9}) + "\n")
        for p in range(PROCESSES):
            pid = 1000 + p
            events.write(json.dumps({"event": "exec", "pid": pid, "ppid": 1000 + p // 4,
                                     "comm": f"proc{pid}", "argv": ["proc", str(pid)],
                                     "ts": T0 + p * 10**6, "container_id": "",
                                     "source_path": "/usr/bin/proc"}) + "\n")  # fmt: skip
        events.write(json.dumps({"event": "capture_stop", "ts": T0 + n * 10**6}) + "\n")


def chromium_seconds(page: Path, mode: str) -> float | None:
    """Wall seconds of headless Chromium opening ``page`` and either painting its first screen
    (``screenshot``: what opening it costs) or also serialising the whole DOM (``dump-dom``,
    which the end-to-end test reads)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    how = (
        [f"--screenshot={page.with_suffix('.png')}", "--window-size=1400,1000"]
        if mode == "screenshot"
        else ["--dump-dom"]
    )
    start = time.monotonic()
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", *how, page.as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=300,
    )  # fmt: skip
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tc-bench-report-") as tmp:
        out = Path(tmp) / "out"
        start = time.monotonic()
        synthesize(out, args.artifacts)
        print(f"synthetic capture: {args.artifacts} artifacts in {time.monotonic() - start:.1f} s")
        result = build.write_report(str(out))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"report: {result.seconds:.1f} s (target < 60 s), page {result.size / 1e6:.1f} MB, "
            f"peak RSS {peak_mb:.0f} MB, {result.artifacts} records, {result.events} events"
        )
        empty = Path(tmp) / "empty.html"
        empty.write_text("<!DOCTYPE html><title>x</title>")
        for mode in ("screenshot", "dump-dom"):
            base = chromium_seconds(empty, mode)
            loaded = chromium_seconds(Path(result.path), mode)
            if base is None or loaded is None:
                print("chromium: not installed (make setup-test), page load not measured")
                break
            print(
                f"chromium --headless --{mode}: {loaded:.1f} s for the report, {base:.1f} s for "
                f"an empty page: {loaded - base:.1f} s for the page"
                + (" to load and paint (target < 5 s)" if mode == "screenshot" else "")
            )


if __name__ == "__main__":
    main()
