"""events.jsonl end to end, through the real pipeline: every module load attempt of kmod's
insmod (refused here: no module support) and every BPF load of bpftool, accepted or refused by
the verifier, with its return value, process and artifact; and events.jsonl rotated with
`index-rotate:` under a small `limit:`, every exec there across the segments, the budget kept
with the events lines counted in it, and `tracecap report` reading the segments in order."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_module_capture import ENOSYS, MODULE_CACHE
from tracecap import rotation, segments
from writers.budget import tree_usage

pytestmark = pytest.mark.ebpf

EVENTS = "events.jsonl"
MIB = 1 << 20
#: The collector's data chunk: the budget decides per chunk (tests/e2e/test_disk_budget.py).
CHUNK = 32 << 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def events_of(out: Path) -> list[dict]:
    """Every line of events.jsonl: its closed segments in order, then the live file."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [json.loads(line) for _, line in segments.iter_lines(fd, EVENTS)]
    finally:
        os.close(fd)


def same_as_index(run, loads: list[dict]) -> None:
    """Each attempt is the index's record of it, field for field (one record per attempt)."""
    index = {(r["epoch"], r["obj_id"]): r for r in run.index if r.get("kind") in ("module", "bpf")}
    for event in loads:
        record = index[event["epoch"], event["obj_id"]]
        for key, value in event.items():
            assert key == "event" or record[key] == value, (key, event, record)


def test_every_insmod_attempt_is_an_event_with_its_error_and_one_artifact(tracecap, workdir: Path):
    """Two insmods of one real module: kmod tries finit_module, then init_module on a mapping
    of the .ko; all four attempts fail with ENOSYS and each is an event of its own, the image
    stored once by the first and the others pointing at it."""
    if not (MODULE_CACHE / "version").exists():
        pytest.fail(f"{MODULE_CACHE} holds no modules: run `make setup-test`")
    ko = Path(shutil.copy(MODULE_CACHE / "wp512.ko", workdir))
    run = tracecap("--capture", "module")
    pids = []
    for params in ("answer=1", "answer=2"):
        insmod = subprocess.Popen(["insmod", str(ko), params], stderr=subprocess.PIPE, text=True)
        _, err = insmod.communicate(timeout=60)
        assert insmod.returncode != 0 and "Function not implemented" in err, err
        pids.append(insmod.pid)
    time.sleep(1)
    run.stop()
    data = ko.read_bytes()
    loads = sorted(
        (e for e in events_of(run.out_dir) if e["event"] == "module_load"), key=lambda e: e["ts"]
    )
    assert [(e["pid"], e["syscall"], e["params"]) for e in loads] == [
        (pids[0], "finit_module", "answer=1"), (pids[0], "init_module", "answer=1"),
        (pids[1], "finit_module", "answer=2"), (pids[1], "init_module", "answer=2"),
    ], loads  # fmt: skip
    for e in loads:
        assert (e["ret"], e["comm"], e["container_id"], e["uid"]) == (ENOSYS, "insmod", "", 0)
        assert e["sha256"] == sha(data) and e["complete"] is True, e
    stored = [e for e in loads if e["path"] is not None]
    assert len(stored) == 1 and (run.out_dir / stored[0]["path"]).read_bytes() == data
    assert all(e["duplicate_of"] == stored[0]["path"] for e in loads if e is not stored[0])
    finit = [e for e in loads if e["syscall"] == "finit_module"]
    assert all(e["source_path"] == str(ko) and e["inode"] == ko.stat().st_ino for e in finit)
    same_as_index(run, loads)


ACCEPTED = """
__attribute__((section("socket"), used)) int tc_accepted(void *ctx) { return 0; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""
#: A read far past the socket filter's context: the verifier refuses it (EACCES).
REFUSED = """
__attribute__((section("socket"), used)) int tc_refused(void *ctx) {
    return ((volatile int *)ctx)[1000];
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def bpf_object(workdir: Path, name: str, source: str) -> tuple[Path, bytes]:
    """A BPF object built with clang, and the instructions of its program."""
    src, obj, insns = workdir / f"{name}.c", workdir / f"{name}.o", workdir / f"{name}.bin"
    src.write_text(source)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", src, "-o", obj], check=True)
    subprocess.run(["llvm-objcopy", "-O", "binary", "--only-section=socket", obj, insns],
                   check=True)  # fmt: skip
    return obj, insns.read_bytes()


def test_every_bpftool_load_accepted_or_refused_is_an_event(tracecap, workdir: Path):
    accepted, accepted_insns = bpf_object(workdir, "accepted", ACCEPTED)
    refused, refused_insns = bpf_object(workdir, "refused", REFUSED)
    pins = [Path(f"/sys/fs/bpf/{workdir.name}-{n}") for n in ("a", "r")]
    run = tracecap("--capture", "bpf")
    try:
        ok = subprocess.Popen(["bpftool", "prog", "load", accepted, pins[0]])
        assert ok.wait(60) == 0
        bad = subprocess.Popen(["bpftool", "prog", "load", refused, pins[1]],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        _, err = bad.communicate(timeout=60)
        assert bad.returncode != 0 and "Permission denied" in err, err
    finally:
        for pin in pins:
            pin.unlink(missing_ok=True)
    time.sleep(1)
    run.stop()
    loads = [e for e in events_of(run.out_dir) if e["event"] == "bpf_load"]
    # every load of the capture is an event, and the index has the same attempts
    assert len(loads) == len(run.records("bpf")) and loads
    same_as_index(run, loads)
    [good] = [e for e in loads if e["prog_name"] == "tc_accepted"]
    assert good["ret"] >= 0 and (good["pid"], good["comm"]) == (ok.pid, "bpftool")
    assert good["sha256"] == sha(accepted_insns) and good["insn_cnt"] == len(accepted_insns) // 8
    stored = good["path"] or good["duplicate_of"]  # libbpf's probes load the same two insns
    assert (run.out_dir / stored).read_bytes() == accepted_insns
    # libbpf loads a refused program again with the verifier's log: both attempts are there
    rejected = [e for e in loads if e["prog_name"] == "tc_refused"]
    assert rejected and all(e["ret"] == -13 and e["pid"] == bad.pid for e in rejected), rejected
    assert all(e["sha256"] == sha(refused_insns) and e["complete"] for e in rejected)
    [kept] = [e for e in rejected if e["path"] is not None]
    assert (run.out_dir / kept["path"]).read_bytes() == refused_insns
    assert all(e["duplicate_of"] == kept["path"] for e in rejected if e is not kept)


#: 400 executions (about 340 bytes of events.jsonl each), then 3 MiB written to one file: past
#: the 1 MiB limit.
ROTATE_WORKLOAD = """
import json, subprocess, sys, time
open("/proc/self/comm", "w").write("tc-evrot")
pids = []
for i in range(400):
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    pids.append(child.pid)
time.sleep(1.5)  # the file writer measures the tree again: the events lines are in it
with open(sys.argv[1], "wb") as f:
    f.write(bytes(range(256)) * (3 << 12))
print(json.dumps(pids))
"""


def test_events_rotate_with_the_index_and_count_in_the_budget(tracecap, workdir: Path, tmp_path):
    big = workdir / "big"
    run = tracecap(
        "--capture", "exec", "--capture", f"write={big}*", "--capture", "limit:1mb",
        "--capture", "index-rotate:4kb", "--scope", "comm=tc-evrot", "--scope", "follow",
    )  # fmt: skip
    done = subprocess.run(
        ["python3", "-c", ROTATE_WORKLOAD, str(big)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    pids = json.loads(done.stdout)
    time.sleep(1.5)
    run.stop()
    assert run.returncode == 0, run.stderr
    out = run.out_dir

    # rotated: 4 KiB segments, each live file after the first opening with its rotation record
    names = rotation.ordered_segments(EVENTS, os.listdir(out))
    assert len(names) >= 25 and names[-1] == EVENTS, names
    assert all((out / name).stat().st_size <= 4096 for name in names)
    for number, (previous, name) in enumerate(itertools.pairwise(names), start=1):
        first = json.loads((out / name).read_bytes().split(b"\n", 1)[0])
        assert first["kind"] == "rotation" and first["file"] == EVENTS, first
        assert (first["segment"], first["previous"], first["removed"]) == (number, previous, [])

    # nothing lost, and a loss would have been counted
    events = events_of(out)
    execs = [e for e in events if e.get("event") == "exec" and e["argv"] == ["/bin/true"]]
    assert sorted(e["pid"] for e in execs) == sorted(pids)
    assert re.search(r"index records lost 0, events lost 0\)", run.stderr), run.stderr

    # the budget: the file was cut short at the limit, with the events lines counted in the
    # tree (more than 100 KiB of them), so the tree stayed within the limit and one chunk:
    # had they not been counted, it would be over by all of them
    [record] = [r for r in run.records("write") if r["source_path"] == str(big)]
    assert record["complete"] is False and record["missing"]
    assert any(r["kind"] == "budget" and r["state"] == "refusing" for r in run.index)
    kept = (out / record["path"]).stat().st_blocks * 512
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        usage, truncated = tree_usage(fd)
    finally:
        os.close(fd)
    events_usage = sum((out / name).stat().st_blocks * 512 for name in names)
    assert not truncated and events_usage > 100 << 10
    # after the refusal only small lines were appended (its record, the stop, a few segments)
    assert usage <= MIB + CHUNK + (64 << 10), (usage, kept)
    print(f"{len(names)} events segments, {events_usage} bytes allocated to them; tree {usage} "
          f"bytes of which {kept} the file cut at the limit")  # fmt: skip

    # the report reads every segment in order, then the live file
    page = tmp_path / "report.html"
    report = subprocess.run(["tracecap", "report", str(out), "-o", str(page)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert f"{len(events)} events" in report.stderr, report.stderr
    html = page.read_text()
    assert all(f'data-pid="{pid}"' in html for pid in pids)
