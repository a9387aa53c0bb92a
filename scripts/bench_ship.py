#!/usr/bin/env python3
"""Benchmark of `tracecap writer ship` into a real S3 API: prints figures, asserts nothing.

A local OpenStack Swift 2.30 with s3api (tests/support/swift.py: one proxy, one device per ring,
on this machine's disk, so the store competes with the shipper for the same 2 cores) receives
an output tree made here: many small artifacts (artifacts/s: per-object cost) and a few large
ones (MB/s: multipart, 8 MiB parts). Each trial is one shipper round over a fresh tree and
prefix, timed from the first index line read to the last object stored (index objects
included), with each object's sha256 checked by the shipper against its index line.

Run as root after `make setup-test` (`make bench` runs it after the other benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.swift import Swift
from writers.s3store import S3Store
from writers.shipper import Shipper

BUCKET = "tracecap-bench"
TRIALS = 3
#: (name, artifacts, bytes each)
WORKLOADS = (("small", 1000, 4 << 10), ("large", 8, 32 << 20))


def make_tree(root: Path, count: int, size: int) -> int:
    """An out/ tree of ``count`` exec-like artifacts of ``size`` random bytes, indexed."""
    (root / "host").mkdir(parents=True, mode=0o750)
    lines = []
    for i in range(count):
        data = os.urandom(size)
        path = f"host/exec.{i}.bench"
        (root / path).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        record = {"path": path, "kind": "exec", "sha256": digest, "size": size,
                  "complete": True, "missing": [], "pid": 1, "comm": "bench"}  # fmt: skip
        lines.append(json.dumps(record))
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    return count * size


def trial(swift: Swift, work: Path, n: int, name: str, count: int, size: int) -> float:
    root = work / f"{name}-{n}" / "out"
    total = make_tree(root, count, size)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        shipper = Shipper(fd, S3Store(BUCKET, swift.endpoint), "bench", f"{name}-{n}")
        started = time.monotonic()
        shipper.step()
        took = time.monotonic() - started
        counters = shipper.counters
        if counters["shipped_artifacts"] != count or counters["ship_pending"]:
            raise SystemExit(f"bench: shipped {counters}, expected {count} artifacts")
        assert counters["shipped_bytes"] == total
        shipper.close()
    finally:
        os.close(fd)
    shutil.rmtree(root.parent)
    return took


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("swift-proxy-server"):
        print("bench: run as root after `make setup-test` (swift)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tcb-ship-", dir="/var/tmp"))
    swift = Swift(work / "swift")
    try:
        swift.configure()
        os.environ.update(swift.env())  # boto3's standard variables, as a user sets them
        swift.start()
        swift.client().create_bucket(Bucket=BUCKET)
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print("\nship: writer ship -> Swift 2.30 s3api on 127.0.0.1 (same machine), "
              f"{TRIALS} trials each, median")  # fmt: skip
        for name, count, size in WORKLOADS:
            secs = [trial(swift, work, n, name, count, size) for n in range(TRIALS)]
            med = statistics.median(secs)
            mb = count * size / (1 << 20)
            print(
                f"  {name}: {count} artifacts of {size >> 10} KiB: "
                f"{count / med:,.1f} artifacts/s, {mb / med:,.1f} MiB/s "
                f"(trials {', '.join(f'{s:.2f}' for s in secs)} s)"
            )
    finally:
        swift.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
