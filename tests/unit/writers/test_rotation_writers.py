"""Rotation of index.jsonl (shared by writer processes) and of pcap files, on a real disk."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import dpkt

from tests.support.writer_harness import read_index
from tests.unit.writers.test_writer_pcap import Harness, icmp_echo, udp
from tracecap import rotation
from tracecap.rotation import Rotation
from writers.index import Index
from writers.outdir import OutputDir


def _segments(root: Path, base: str) -> list[str]:
    return rotation.ordered_segments(base, os.listdir(root))


def test_index_rotates_between_processes_and_reads_back_whole(tmp_path: Path):
    out_a, out_b = OutputDir(str(tmp_path / "out")), OutputDir(str(tmp_path / "out"))
    how = Rotation(4096, None, True)
    a, b = Index(out_a, rotation=how), Index(out_b, rotation=how)  # two writers' own fds
    sent = []
    for n in range(600):
        record = {"kind": "write", "n": n, "pad": "z" * (n % 40)}
        (a if n % 3 else b).append(record)
        sent.append(record)
    a.close(), b.close(), out_a.close(), out_b.close()
    root = tmp_path / "out"
    names = _segments(root, "index.jsonl")
    assert len(names) > 5 and names[-1] == "index.jsonl"
    assert all(n.endswith(".jsonl.gz") for n in names[:-1]), names
    records = read_index(root)
    assert [r for r in records if r["kind"] == "write"] == sent  # every record, in order
    rotations = [r for r in records if r["kind"] == "rotation"]
    assert a.rotations + b.rotations == len(rotations) == len(names) - 1
    assert a.rotations and b.rotations  # both processes rotated, each following the other
    for number, note in enumerate(rotations, start=1):
        assert note["previous"] == rotation.segment_name("index.jsonl", number)
        assert (note["segment"], note["file"], note["compressed"]) == (number, "index.jsonl", True)
    for name in names:  # each segment is whole lines within the size
        data = (root / name).read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        assert data.endswith(b"\n") and len(data) <= 4096
        # every segment after the first begins with the record naming the one before it
        assert name == names[0] or data.startswith(b'{"compressed": true, "file": "index.jsonl"')


def test_index_count_removes_old_segments_and_says_so(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    index = Index(out, rotation=Rotation(1024, 2))
    for n in range(200):
        index.append({"kind": "x", "n": n, "pad": "p" * 30})
    index.close()
    out.close()
    root = tmp_path / "out"
    names = _segments(root, "index.jsonl")
    assert len(names) == 3  # two closed, the live one
    notes = [r for r in read_index(root) if r["kind"] == "rotation"]
    last = notes[-1]
    assert last["removed"] == [rotation.segment_name("index.jsonl", last["segment"] - 2)]
    assert not (root / last["removed"][0]).exists()


def test_find_last_looks_into_rotated_segments(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    index = Index(out, rotation=Rotation(1024))
    index.append({"kind": "write", "path": "host/x"})
    for n in range(150):
        index.append({"kind": "other", "n": n})
    assert index.rotations >= 2
    found = index.find_last(b"host/x", lambda r: r.get("path") == "host/x")
    assert found == {"kind": "write", "path": "host/x"}
    index.close()
    out.close()


def test_an_index_without_rotation_never_rotates(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    index = Index(out)
    for n in range(2000):
        index.append({"n": n})
    index.close()
    out.close()
    assert os.listdir(tmp_path / "out") == ["index.jsonl"]


def _packets(path: Path) -> list[bytes]:
    with path.open("rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcapng.Reader(f)]


def test_pcap_segments_are_whole_pcapng_files_with_every_packet(tmp_path: Path):
    h = Harness(tmp_path, ("single", "process"), rotation=Rotation(2048, None, False))
    sent = [udp(b"%05d" % n + b"u" * (n % 90)) if n % 2 else icmp_echo(b"%05d" % n) for n in
            range(400)]  # fmt: skip
    for n, payload in enumerate(sent):
        h.feed(payload, ts=1_000_000_000 + n)
    records = h.close()
    for split_dir in ("pcap", "pcap/processes/host"):
        d = tmp_path / "out" / split_dir
        base = min((n for n in os.listdir(d) if n.endswith(".pcap")), key=len)  # the live one
        names = _segments(d, base)
        assert len(names) > 5
        got = []
        for name in names:
            packets = _packets(d / name)  # dpkt reads each alone: SHB + IDB at its start
            assert packets and (d / name).stat().st_size <= 2048
            got += packets
            shown = subprocess.run(["tcpdump", "-nr", str(d / name)], capture_output=True,
                                   check=True, timeout=60)  # fmt: skip
            assert shown.stdout.count(b"\n") == len(packets)
        assert got == sent
        rel = str((d / base).relative_to(tmp_path / "out"))
        segs = [r for r in records if r.get("rotated_from") == rel]
        notes = [r for r in records if r["kind"] == "rotation" and r["file"] == rel]
        live = [r for r in records if r["kind"] == "pcap" and r["path"] == rel]
        assert len(segs) == len(notes) == len(names) - 1 == live[0]["segments"]
        assert sum(r["packets"] for r in segs + live) == len(sent)
        for r in segs:
            seg = tmp_path / "out" / r["path"]
            assert r["size"] == seg.stat().st_size
            assert r["sha256"] == hashlib.sha256(seg.read_bytes()).hexdigest()


def test_pcap_segments_compressed_and_counted(tmp_path: Path):
    h = Harness(tmp_path, ("single",), rotation=Rotation(1024, 3, True))
    sent = [udp(b"%05d" % n + b"v" * 80) for n in range(200)]
    for n, payload in enumerate(sent):
        h.feed(payload, ts=2_000_000_000 + n)
    records = h.close()
    d = tmp_path / "out" / "pcap"
    names = _segments(d, "single.pcap")
    assert len(names) == 4 and all(n.endswith(".pcap.gz") for n in names[:-1])
    kept = []
    for name in names[:-1]:
        (tmp_path / "plain.pcap").write_bytes(gzip.decompress((d / name).read_bytes()))
        kept += _packets(tmp_path / "plain.pcap")
    kept += _packets(d / "single.pcap")
    assert kept == sent[-len(kept) :]
    removed = [n for r in records if r["kind"] == "rotation" for n in r["removed"]]
    segs = [r for r in records if r.get("rotated_from") == "pcap/single.pcap"]
    assert len(removed) == len(segs) - 3
    # every packet is in a kept file or in a segment the index says was removed
    removed_packets = sum(r["packets"] for r in segs if r["path"] in removed)
    assert removed_packets + len(kept) == len(sent)


def _no_rename(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.EROFS, "read-only file system")


def test_a_failed_index_rotation_loses_no_record(tmp_path: Path, monkeypatch):
    out = OutputDir(str(tmp_path / "out"))
    monkeypatch.setattr(os, "rename", _no_rename)
    index = Index(out, rotation=Rotation(1024))
    counters: dict[str, int] = {}
    logged: list[str] = []
    for n in range(50):
        index.append_or_count({"n": n, "pad": "q" * 40}, counters, lambda _k, m: logged.append(m),
                              "record")  # fmt: skip
    index.close()
    out.close()
    assert [r["n"] for r in read_index(tmp_path / "out") if "n" in r] == list(range(50))
    assert counters["rotation_errors"] > 0 and "index_errors" not in counters
    assert "not rotated" in logged[0]


def test_a_failed_pcap_rotation_loses_no_packet(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(os, "rename", _no_rename)
    h = Harness(tmp_path, ("single",), rotation=Rotation(1024))
    sent = [udp(b"%05d" % n + b"w" * 60) for n in range(40)]
    for n, payload in enumerate(sent):
        h.feed(payload, ts=3_000_000_000 + n)
    h.close()
    assert _packets(tmp_path / "out" / "pcap" / "single.pcap") == sent
    assert h.writer.counters["rotation_errors"] > 0 and h.writer.counters["write_errors"] == 0
