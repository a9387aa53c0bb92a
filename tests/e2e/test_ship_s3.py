"""`tracecap writer ship` against a real S3 API: OpenStack Swift 2.30 with s3api on 127.0.0.1
(tests/support/swift.py), fed by the real pipeline capturing real programs.

Each test downloads what the store holds and compares it by sha256 with the index and with the
local files; the index objects, put end to end, must be index.jsonl byte for byte (no line
missing, none twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import Run, wait_until
from tests.support.swift import Swift
from tracecap import segments

pytestmark = pytest.mark.ebpf

BUCKET = "tracecap-e2e"
PREFIX = "e2e"
HOST = socket.gethostname()
MODULE_CACHE = Path("/var/cache/tracecap-test/modules")
SHIP_TIMEOUT_S = 90


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def swift() -> Iterator[Swift]:
    root = Path(tempfile.mkdtemp(prefix="tcs-", dir="/tmp"))
    store = Swift(root)
    store.configure()
    store.start()
    try:
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        store.stop()
        shutil.rmtree(root, ignore_errors=True)


class Shipper:
    """One `tracecap writer ship` process (started as root: it drops to tracecap)."""

    def __init__(self, run: Run, swift: Swift, *extra: str) -> None:
        self.log = run.workdir / "ship.stderr"
        argv = [
            "tracecap", "writer", "ship", "--capture", f"dir:{run.out_dir.parent}",
            "--run-dir", str(run.run_dir), "--bucket", BUCKET, "--prefix", PREFIX, *extra,
        ]  # fmt: skip
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **swift.env()}, stdout=subprocess.DEVNULL, stderr=err
            )
        self.stats_path = run.run_dir / "stats" / "writer-ship.json"

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.log.read_text()
        return self.log.read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def listing(client) -> dict[str, dict[str, Any]]:
    """Every object of the bucket: key -> {etag, modified}."""
    out: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = {"etag": obj["ETag"], "modified": obj["LastModified"]}
    return out


def index_lines(run: Run) -> list[bytes]:
    """Every line of the index: its rotated segments in order (gzip or not), then the live file
    (tracecap.segments, as the product reads it)."""
    fd = os.open(run.out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [line for _, line in segments.iter_lines(fd, "index.jsonl")]
    finally:
        os.close(fd)


def current(run: Run) -> dict[str, dict[str, Any]]:
    """The last index line of each artifact that stores bytes, by path."""
    out: dict[str, dict[str, Any]] = {}
    for line in index_lines(run):
        record = json.loads(line)
        if record.get("path") and "duplicate_of" not in record:
            out[record["path"]] = record
    return out


def key_of(path: str) -> str:
    return f"{PREFIX}/{HOST}/{path}"


def all_shipped(run: Run, client) -> bool:
    keys = listing(client)
    index_done = index_bytes(client, keys) == b"".join(index_lines(run))
    return index_done and all(key_of(path) in keys for path in current(run))


def wait_shipped(run: Run, client, shipper: Shipper, what: str = "every artifact") -> None:
    """Until the store holds every current artifact and the whole index; on a timeout, the
    failure names what is missing and shows the shipper's log."""
    deadline = time.monotonic() + SHIP_TIMEOUT_S
    while not all_shipped(run, client):
        if shipper.proc.poll() is not None or time.monotonic() > deadline:
            keys = listing(client)
            missing = [p for p in current(run) if key_of(p) not in keys]
            pytest.fail(
                f"{what}: not in the store (shipper: {shipper.proc.returncode}): {missing[:10]} "
                f"({len(missing)}), index objects {[k for k in keys if '/index/' in k]}\n"
                f"stats {shipper.stats()}\n{shipper.log.read_text()[-3000:]}"
            )
        time.sleep(0.1)


def file_order(key: str) -> tuple[int, str]:
    """Index objects in the index's order: by file (``<inode>`` for the first,
    ``<inode>-<NNNNNN>`` for file N), then by byte range."""
    name = key.rsplit("/", 1)[1]
    file_id, _, byte_range = name.partition(".")
    return int(file_id.partition("-")[2] or 1), byte_range


def index_bytes(client, keys: dict[str, Any]) -> bytes:
    chunks = sorted((k for k in keys if k.startswith(f"{PREFIX}/{HOST}/index/")), key=file_order)
    return b"".join(client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in chunks)


def check_store(run: Run, client, local: dict[str, bytes] | None = None) -> dict[str, dict]:
    """Every current artifact is in the store, its bytes hashing to its index line's sha256
    (and equal to the local file, or to ``local[path]`` for copies already deleted), with the
    line's facts as metadata; the index objects are index.jsonl exactly."""
    keys = listing(client)
    assert index_bytes(client, keys) == b"".join(index_lines(run))
    records = current(run)
    for path, record in records.items():
        obj = client.get_object(Bucket=BUCKET, Key=key_of(path))
        data = obj["Body"].read()
        meta = obj["Metadata"]
        assert sha(data) == record["sha256"] == meta["sha256"], path
        on_disk = run.out_dir / path
        if on_disk.exists():
            assert data == on_disk.read_bytes(), path
        elif local is not None and path in local:
            assert data == local[path], path
        assert meta["kind"] == record["kind"]
        assert meta["complete"] == json.dumps(record["complete"])
        if "pid" in record:
            assert meta["pid"] == str(record["pid"])
        missing = record.get("missing") or []
        assert int(meta.get("missing-bytes", 0)) == sum(e - s for s, e in missing), path
    return records


LUA = """
local total = 0
for i = 1, 40 do
  local f = loadstring("local s = 0 for j = 1, 300 do s = s + (j % 7) * " .. i .. " end return s")
  total = total + f()
end
print(total)
"""


def test_every_kind_is_shipped_and_comes_back_identical(tracecap, workdir: Path, swift: Swift):
    assert (MODULE_CACHE / "crc7.ko").exists(), "run `make setup-test`"
    comms = "head,cat,tc-ship-true,luajit,insmod,bpftrace,ping"
    run = tracecap(
        "--capture", f"write={workdir}/*", "--capture", f"read={workdir}/*",
        "--capture", "exec", "--capture", "mem", "--capture", "module", "--capture", "bpf",
        "--capture", "pcap", "--scope", f"comm={comms}", "--ring-mb", "64",
    )  # fmt: skip
    shipper = Shipper(run, swift)
    big = workdir / "big.bin"
    subprocess.run(["head", "-c", str(20 << 20), "/dev/urandom"], stdout=big.open("wb"), check=True)
    subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)
    true = workdir / "tc-ship-true"
    shutil.copy("/bin/true", true)
    subprocess.run([str(true)], check=True)
    script = workdir / "jit.lua"
    script.write_text(textwrap.dedent(LUA))
    subprocess.run(["luajit", str(script)], check=True, capture_output=True)
    ko = Path(shutil.copy(MODULE_CACHE / "crc7.ko", workdir))
    subprocess.run(["insmod", str(ko)], check=False, capture_output=True)  # ENOSYS here
    subprocess.run(["bpftrace", "-e", "BEGIN { exit(); }"], check=True, capture_output=True)
    subprocess.run(["ping", "-c", "3", "-i", "0.2", "127.0.0.1"], check=True, capture_output=True)
    run.stop()
    client = swift.client()
    wait_shipped(run, client, shipper)
    log = shipper.stop()
    records = check_store(run, client)
    kinds = {r["kind"] for r in records.values()}
    assert kinds >= {"write", "read", "exec", "mem", "module", "bpf", "pcap"}, kinds
    big_path = next(p for p, r in records.items() if r.get("source_path") == str(big))
    assert records[big_path]["size"] == 20 << 20
    head = client.head_object(Bucket=BUCKET, Key=key_of(big_path))
    assert head["ETag"].rstrip('"').endswith("-3"), "20 MiB go up in three 8 MiB parts"
    shipped = int(log.split("shipped_artifacts ")[1].split(",")[0])
    assert shipped >= len(records), log


def test_a_killed_shipper_resumes_without_duplicates_or_gaps(tracecap, workdir: Path, swift):
    run = tracecap("--capture", f"write={workdir}/*", "--capture", "exec", "--scope",
                   "comm=head,tc-ship-bin")  # fmt: skip
    subprocess.run(
        ["bash", "-c", "for i in $(seq 150); do head -c 200000 /dev/urandom > w$i; done"],
        cwd=workdir, check=True,
    )  # fmt: skip
    for i in range(20):  # 20 distinct binaries (inodes) of one name
        (workdir / f"b{i}").mkdir()
        binary = Path(shutil.copy("/bin/true", workdir / f"b{i}" / "tc-ship-bin"))
        subprocess.run([str(binary)], check=True)

    def indexed() -> bool:
        kinds = [r["kind"] for r in current(run).values()]
        execs = [p for p in current(run) if p.endswith(".tc-ship-bin")]
        return kinds.count("write") == 150 and len(execs) == 20

    wait_until("150 written files and 20 binaries indexed", indexed, 30)
    client = swift.client()
    first = Shipper(run, swift, "--delete-after-upload")

    def some_shipped() -> bool:
        return len([k for k in listing(client) if "/index/" not in k]) >= 10

    wait_until("some artifacts in the store", some_shipped, SHIP_TIMEOUT_S)
    first.kill()
    before = listing(client)
    assert [p for p in current(run) if key_of(p) not in before], "killed before it was done"
    local = {p: (run.out_dir / p).read_bytes() for p in current(run) if (run.out_dir / p).exists()}
    second = Shipper(run, swift, "--delete-after-upload")
    wait_shipped(run, client, second)
    run.stop()
    wait_shipped(run, client, second, "after the stop")
    second.stop()
    records = check_store(run, client, local)
    after = listing(client)
    again = [k for k, v in before.items() if after[k]["modified"] != v["modified"]]
    # the one object in flight at the kill may go up once more, under the same key
    assert len(again) <= 1, again
    assert set(after) - {k for k in after if "/index/" in k} == {key_of(p) for p in records}
    execs = [p for p, r in records.items() if r["kind"] == "exec"]
    assert len([p for p in execs if p.endswith(".tc-ship-bin")]) == 20, execs
    assert not any((run.out_dir / p).exists() for p in execs), "stored copies are deleted"


def usage_bytes(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*"))


def test_store_down_artifacts_wait_within_the_budget_then_ship(tracecap, workdir: Path, swift):
    limit = 24 << 20
    run = tracecap("--capture", f"write={workdir}/*", "--capture", "limit:24mb",
                   "--scope", "comm=head")  # fmt: skip
    shipper = Shipper(run, swift)
    client = swift.client()
    subprocess.run(["bash", "-c", "head -c 1000000 /dev/urandom > early"], cwd=workdir, check=True)
    wait_shipped(run, client, shipper, "the first")
    swift.stop()
    peak = 0
    for i in range(40):
        subprocess.run(["head", "-c", "1000000", "/dev/urandom"],
                       stdout=(workdir / f"late{i}").open("wb"), check=True)  # fmt: skip
        peak = max(peak, usage_bytes(run.out_dir))
        time.sleep(0.05)
    time.sleep(2)  # the writers index the last files after a second idle
    peak = max(peak, usage_bytes(run.out_dir))
    # a writer measures the tree once a second: it may pass the limit by a second of writing
    assert peak <= limit + (8 << 20), peak
    stats = wait_until("the shipper's round", lambda: shipper.stats().get("ship_pending"), 10)
    assert stats and shipper.stats()["ship_store_errors"] >= 1
    pending = shipper.stats()
    assert pending["ship_pending"] >= 10 and pending["ship_pending_bytes"] >= 10 << 20, pending
    index = [json.loads(x) for x in index_lines(run)]
    assert any(r.get("kind") == "budget" and r.get("state") == "refusing" for r in index)
    swift.start()
    wait_shipped(run, client, shipper)
    run.stop()
    wait_shipped(run, client, shipper, "after the stop")
    log = shipper.stop()
    records = check_store(run, client)
    assert len(records) == 41
    refused = [r for r in records.values() if not r["complete"]]
    assert refused, "the budget refused data while the store was down"
    assert "store unreachable" in log and "store reachable again" in log, log


def test_a_rotated_index_is_shipped_whole_across_rotations_and_a_kill(
    tracecap, workdir: Path, swift
):
    """index-rotate:2kb,compress renames the index into gzip segments every few lines while the
    shipper runs, is killed and restarted: every artifact of every segment is in the store,
    equal to its file, and the index objects are every segment's lines, each once."""
    run = tracecap("--capture", f"write={workdir}/*", "--capture", "index-rotate:2kb,compress",
                   "--scope", "comm=head")  # fmt: skip
    client = swift.client()
    first = Shipper(run, swift)

    def write(names: range) -> None:
        for i in names:
            subprocess.run(["head", "-c", str(3000 + 101 * i), "/dev/urandom"],
                           stdout=(workdir / f"r{i}").open("wb"), check=True)  # fmt: skip
            time.sleep(0.05)

    write(range(40))

    def some_shipped() -> bool:
        return len([k for k in listing(client) if "/index/" not in k]) >= 10

    wait_until("some artifacts in the store", some_shipped, SHIP_TIMEOUT_S)
    first.kill()
    write(range(40, 80))
    time.sleep(1.5)  # indexed after a second idle
    second = Shipper(run, swift)
    wait_shipped(run, client, second)
    run.stop()
    wait_shipped(run, client, second, "after the stop")
    second.stop()
    closed = sorted(p.name for p in run.out_dir.glob("index.*.jsonl.gz"))
    assert len(closed) >= 10, closed  # the index rotated many times, under both shippers
    records = check_store(run, client)
    written = {r["source_path"]: r for r in records.values() if r["kind"] == "write"}
    assert len(written) == 80
    for i in range(80):
        source = workdir / f"r{i}"
        record = written[str(source)]
        assert record["sha256"] == sha(source.read_bytes())
        body = client.get_object(Bucket=BUCKET, Key=key_of(record["path"]))["Body"].read()
        assert sha(body) == record["sha256"]
    lines = index_bytes(client, listing(client)).splitlines()
    assert len(lines) == len(set(lines)) == len(index_lines(run))  # none missing, none twice
