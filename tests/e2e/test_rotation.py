"""Rotation under a flood, through the real pipeline: the events file (`--output json:/path`
with option:rotate-*), index.jsonl (`index-rotate:`) and pcaps (`pcap-rotate:`), with every event
line, index record and packet accounted for across the segments (packets against a simultaneous
`tcpdump -w`), and the gzip segments readable."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

import dpkt

from tests.e2e.test_network_capture import involves, tcpdump_packets
from tracecap import rotation, segments


def _lines(directory: Path, base: str) -> list[tuple[str, bytes]]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return list(segments.iter_lines(fd, base))
    finally:
        os.close(fd)


def _pcap_packets(data: bytes) -> list[bytes]:
    return [bytes(buf) for _, buf in dpkt.pcapng.Reader(io.BytesIO(data))]


def start_tcpdump(dump: Path, addr: str) -> subprocess.Popen:
    """tcpdump on lo for ``addr``, with a kernel buffer a flood does not overrun (its default
    2 MiB dropped two thirds of a `ping -f`) and its output buffered (flushed when it stops)."""
    proc = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "131072", "--time-stamp-precision",
         "nano", "-w", str(dump), "host", addr],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stderr.readline()
    assert "listening on lo" in line, line
    return proc


def _dd_files(directory: Path, n: int) -> None:
    for i in range(n):
        subprocess.run(["dd", "if=/dev/urandom", f"of={directory}/f{i:03d}", "bs=4k", "count=2",
                        "status=none"], check=True, timeout=30)  # fmt: skip


def _check_index_segments(out: Path, index: list[dict]) -> list[str]:
    """The index's segments, checked: every one after the first starts with the rotation record
    naming the one before, and the records of every segment, read in order, are ``index``."""
    names = rotation.ordered_segments("index.jsonl", os.listdir(out))
    assert len(names) >= 3 and names[-1] == "index.jsonl", names
    notes = [r for r in index if r.get("kind") == "rotation" and r["file"] == "index.jsonl"]
    assert len(notes) == len(names) - 1
    firsts = []
    for name in names:
        data = (out / name).read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        assert data.endswith(b"\n")
        firsts.append(json.loads(data.split(b"\n", 1)[0]))
    for number, (first, name) in enumerate(zip(firsts[1:], names, strict=False), start=1):
        assert first["kind"] == "rotation" and first["segment"] == number
        assert first["previous"] == name.removesuffix(".gz")
    assert [r for _, line in _lines(out, "index.jsonl") for r in [json.loads(line)]] == index
    return names


def test_events_and_index_rotate_under_a_write_flood(tracecap, workdir: Path):
    """400 real dd processes each write a 16 KiB file. Every byte of every file is in the
    vfs_write events of the rotated, gzip-compressed events file, and every file has its
    complete record in the rotated index."""
    files = workdir / "files"
    files.mkdir()
    events = workdir / "ev" / "events.json"  # ev/ is created by tracecap, root's, 0750
    run = tracecap(
        "--capture", f"write={files}/*", "--scope", "comm=dd",
        "--output", f"json:{events}",
        "--output", "option:rotate-size=16kb,rotate-compress",
        "--capture", "index-rotate:32kb,compress",
    )  # fmt: skip
    n, size = 400, 16 << 10
    for i in range(n):
        subprocess.run(["dd", "if=/dev/urandom", f"of={files}/f{i:03d}", "bs=4k", "count=4",
                        "status=none"], check=True, timeout=30)  # fmt: skip
    time.sleep(1)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # the events went to the file

    # the events file: closed segments compressed, each whole JSON lines, all read in order
    names = rotation.ordered_segments("events.json", os.listdir(events.parent))
    assert len(names) >= 5 and names[-1] == "events.json", names
    assert all(name.endswith(".json.gz") for name in names[:-1])
    assert (events.parent.stat().st_mode & 0o777, events.stat().st_mode & 0o777) == (0o750, 0o640)
    lines = _lines(events.parent, "events.json")
    written = re.search(r"events file: (\d+) events written, (\d+) rotations, 0 events lost",
                        run.stderr)  # fmt: skip
    assert written, run.stderr
    assert (int(written[1]), int(written[2])) == (len(lines), len(names) - 1)
    assert run.stderr.count("tracecap: events file: closed segment ") == len(names) - 1
    got: dict[str, int] = {}
    for _, line in lines:
        event = json.loads(line)
        assert event["eventName"] == "vfs_write" and event["processName"] == "dd"
        args = {a["name"]: a["value"] for a in event["args"]}
        got[args["pathname"]] = got.get(args["pathname"], 0) + args["count"]
    assert got == {f"{files}/f{i:03d}": size for i in range(n)}

    # the index: every file's record, complete and with its real hash, across the segments
    _check_index_segments(run.out_dir, run.index)
    writes = {r["source_path"]: r for r in run.records("write")}
    assert set(writes) == set(got)
    for path, record in writes.items():
        assert record["complete"] and record["size"] == size, record
        assert record["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_pcaps_and_index_rotate_under_a_ping_flood(tracecap, workdir: Path):
    """`ping -f` against an address of the test's own, captured by tracecap with pcap-rotate
    and index-rotate and by `tcpdump -w` at the same time: the single.pcap segments, each a
    pcapng tcpdump reads alone (gzip-compressed, decompressed here), hold together every packet
    tcpdump saw and nothing else, their index records count them all, and each rotation is in
    the rotated index."""
    a, b, c = secrets.randbelow(180) + 64, secrets.randbelow(254) + 1, secrets.randbelow(252) + 2
    addr = f"127.{a}.{b}.{c}"
    addr_bytes = socket.inet_aton(addr)
    files = workdir / "files"
    files.mkdir()
    run = tracecap(
        "--capture", "network", "--capture", "pcap-snaplen:max",
        "--capture", "pcap-rotate:64kb,compress", "--capture", "index-rotate:8kb",
        "--capture", f"write={files}/*",
    )  # fmt: skip
    dump = workdir / "tcpdump.pcap"
    tcpdump = start_tcpdump(dump, addr)
    # the file writer appends to the index at the same time as the pcap writer rotates it
    writes = threading.Thread(target=_dd_files, args=(files, 150))
    writes.start()
    try:
        flood = subprocess.run(["ping", "-f", "-q", "-c", "3000", "-s", "200", addr],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert flood.returncode == 0, flood.stdout + flood.stderr
        assert " 3000 received" in flood.stdout, flood.stdout
    finally:
        writes.join(120)
        time.sleep(0.5)
        tcpdump.terminate()
        tail = tcpdump.communicate(timeout=10)[1]
    time.sleep(1.5)  # past the pcap writer's 1 s reorder window
    run.stop()
    assert run.returncode == 0, run.stderr
    assert re.search(r"\b0 packets dropped by kernel", tail), tail

    pcap_dir = run.out_dir / "pcap"
    names = rotation.ordered_segments("single.pcap", os.listdir(pcap_dir))
    assert len(names) >= 10 and names[-1] == "single.pcap", names
    ours: list[bytes] = []
    for name in names:
        data = (pcap_dir / name).read_bytes()
        if name != "single.pcap":
            assert name.endswith(".pcap.gz")
            data = gzip.decompress(data)
        alone = workdir / "segment.pcap"
        alone.write_bytes(data)  # each segment on its own: SHB and IDB at its start
        shown = subprocess.run(["tcpdump", "-nr", str(alone)], capture_output=True, check=True,
                               timeout=60)  # fmt: skip
        packets = _pcap_packets(data)
        assert packets and shown.stdout.count(b"\n") == len(packets), name
        ours += packets

    records = [r for r in run.index if r.get("kind") == "pcap"]
    by_path = {r["path"]: r for r in records}
    closed = [r for r in records if r.get("rotated_from") == "pcap/single.pcap"]
    assert [r["path"] for r in closed] == [f"pcap/{name}" for name in names[:-1]]
    assert by_path["pcap/single.pcap"]["segments"] == len(closed)
    assert sum(r["packets"] for r in [*closed, by_path["pcap/single.pcap"]]) == len(ours)
    assert all(r["complete"] and r["compressed"] for r in closed)
    notes = [
        r for r in run.index if r.get("kind") == "rotation" and r["file"] == "pcap/single.pcap"
    ]
    assert [r["previous"] for r in notes] == [r["path"] for r in closed]

    # every echo request and reply of the flood, each once, byte for byte as tcpdump saw it
    # (tcpdump itself may miss a few: it is the reference for the bytes, ping for the count)
    mine = {data for data in ours if involves(addr_bytes, data)}
    echoes = {(icmp.type, icmp.data.seq) for icmp in (dpkt.ip.IP(d).data for d in mine)}
    assert len(mine) == len(echoes) == 6000
    assert echoes == {(kind, seq) for kind in (0, 8) for seq in range(1, 3001)}
    reference = [data for _, data in tcpdump_packets(dump)]
    assert len(set(reference)) == len(reference) >= 5900, tail
    assert set(reference) <= mine
    names = _check_index_segments(run.out_dir, run.index)
    assert len(names) >= 10
    written = {r["source_path"]: r for r in run.records("write")}
    assert set(written) == {str(p) for p in files.iterdir()} and len(written) == 150
    assert all(r["complete"] and r["size"] == 8192 for r in written.values())
