"""The disk budget (`--capture limit:`), end to end: the real writers stop at the limit, say so in
the index, and resume once space returns."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import Run, artifact_name
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

MIB = 1 << 20
#: The collector's data chunk: the budget decides per chunk, so the artifact may pass the limit
#: by less than one chunk of what the tree held when it was last measured.
CHUNK = 32 << 10
BIG = 3 * MIB
#: The child's data: random, so a misplaced chunk cannot look right.
BIG_CODE = "import random; data = random.Random(6).randbytes({size})\n"


def big_data() -> bytes:
    return random.Random(6).randbytes(BIG)


def live_index(run: Run) -> list[dict[str, Any]]:
    """The index while the pipeline runs (whole lines only: the last may be being written)."""
    path = run.out_dir / "index.jsonl"
    if not path.exists():
        return []
    text = path.read_bytes()
    return [json.loads(line) for line in text[: text.rfind(b"\n") + 1].splitlines()]


def wait_for(run: Run, what: str, found: Callable[[list[dict[str, Any]]], bool]) -> None:
    deadline = time.monotonic() + 30
    while not found(live_index(run)):
        if time.monotonic() > deadline:
            run.stop()
            pytest.fail(f"no {what} in the index:\n{run.index}\n{run.stderr}")
        time.sleep(0.1)


def covered(ranges: list[list[int]], start: int, end: int) -> bool:
    """Whether the union of ``ranges`` covers ``[start, end)``."""
    pos = start
    for s, e in sorted(ranges):
        if s > pos:
            break
        pos = max(pos, e)
    return pos >= end


def test_a_limit_stops_file_data_and_capture_resumes_when_space_returns(
    tracecap, workdir: Path
) -> None:
    run = tracecap("--capture", "limit:1mb", "--capture", f"write={workdir}/*")
    big = workdir / "big"
    python(BIG_CODE.format(size=BIG) + f"open({str(big)!r}, 'wb').write(data)")
    big_name = artifact_name("write", big)
    big_path = f"host/{big_name}"
    wait_for(run, "record of the big file", lambda ix: any(r.get("path") == big_path for r in ix))

    index = live_index(run)
    refusing = [r for r in index if r["kind"] == "budget" and r["state"] == "refusing"]
    assert len(refusing) == 1, index
    assert refusing[0]["writer"] == "file"
    assert refusing[0]["reason"].startswith(f"limit {MIB} bytes reached (used ")
    kept = run.artifact(big_name)
    assert 0 < len(kept) <= MIB + CHUNK
    assert kept == big_data()[: len(kept)]
    record = [r for r in index if r.get("path") == big_path][-1]
    assert record["complete"] is False
    assert covered(record["missing"], len(kept), BIG), record["missing"]

    # Space returns: the analyst (root) removes the artifact; the next walk (at most a second
    # later) sees it gone, and the next write is captured whole.
    (run.out_dir / big_path).unlink()
    time.sleep(1.5)
    small = workdir / "small"
    python(f"open({str(small)!r}, 'wb').write(b'after the budget came back\\n')")
    small_path = f"host/{artifact_name('write', small)}"
    wait_for(
        run, "record of the small file", lambda ix: any(r.get("path") == small_path for r in ix)
    )
    run.stop()
    assert run.returncode == 0, run.stderr
    assert "tracecap: summary:" in run.stderr

    assert (run.out_dir / small_path).read_bytes() == b"after the budget came back\n"
    [small_record] = [r for r in run.records("write") if r["path"] == small_path]
    assert small_record["complete"] is True
    budget = [r for r in run.index if r["kind"] == "budget"]
    assert [r["state"] for r in budget] == ["refusing", "resumed"], budget
    assert budget[1]["refused_bytes"] >= BIG - len(kept) - CHUNK
    # one warning line for the refusing period, one for the resumption
    assert run.stderr.count("budget_refusing:") == 1, run.stderr
    assert run.stderr.count("budget_resumed:") == 1, run.stderr
