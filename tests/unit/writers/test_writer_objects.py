"""The whole-object base: assembly, finishing, naming on disk and dedup state from the index.

The memory writer (no dedup) and the module writer (dedup by content) stand in for any kind.
The bookkeeping alone, without a file system, is tested in test_objectartifact.py.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.envelopes import mem_env, module_env
from tests.support.writer_harness import FakeClock, OutputTree, WriterHarness
from tracecap import bus
from writers import fileio, objects
from writers.memory import MemoryWriter
from writers.module import ModuleWriter
from writers.objects import ObjectWriter

DATA = bytes(range(256)) * 16  # 4 KiB, every byte value
CID = "0123456789abcdef" * 4


class Harness(WriterHarness[ObjectWriter]):
    """An object writer of ``cls`` on a fake clock."""

    def __init__(self, root: Path, cls: type[ObjectWriter] = MemoryWriter, **kwargs: Any) -> None:
        clock = self.clock = FakeClock()
        super().__init__(root, lambda out, index: cls(out, index, clock=clock, **kwargs))


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def no_partials(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".partial")]


# -- assembly --------------------------------------------------------------------------------


def test_chunks_are_assembled_byte_exact_in_any_order(h: Harness) -> None:
    chunks = [(off, DATA[off : off + 1024]) for off in range(0, len(DATA), 1024)]
    for n, order in enumerate(itertools.permutations(range(len(chunks)))):
        for pos, i in enumerate(order):
            off, data = chunks[i]
            # `last` rides on whichever chunk comes last on the wire, or on the highest offset.
            last = (pos == len(order) - 1) if n % 2 else (i == len(chunks) - 1)
            # one address per object: the same bytes at the same address would be one artifact
            h.send(data, mem_env(obj_id=n, ts=n, addr=n << 12, obj_off=off, last=last))
    h.writer.close()
    records = h.records()
    assert len(records) == 24
    for n, rec in enumerate(records):
        assert rec["complete"] is True and rec["missing"] == [], rec
        assert (h.root / rec["path"]).read_bytes() == DATA
        assert rec["sha256"] == hashlib.sha256(DATA).hexdigest()
        assert rec["path"] == f"host/mem.pid-100.ts-{n}"
    assert h.writer.counters["abandoned"] == 0 and h.writer.counters["evicted"] == 0
    assert no_partials(h.root)


def test_an_object_is_finished_as_soon_as_it_is_whole(h: Harness) -> None:
    h.send(DATA[:100], mem_env(obj_len=200, last=False))
    assert h.listing() == [".partial.7.1"]
    h.send(DATA[100:200], mem_env(obj_off=100, obj_len=200, last=True))
    assert h.listing() == ["mem.pid-100.ts-1000"]  # no tick or close needed
    st_ = os.stat(h.root / "host/mem.pid-100.ts-1000")
    assert stat.S_IMODE(st_.st_mode) == 0o640


def test_last_without_payload(h: Harness) -> None:
    h.send(DATA[:2048], mem_env(last=False))
    h.send(DATA[2048:], mem_env(obj_off=2048, last=False))
    h.send(None, mem_env(obj_off=len(DATA), last=True))
    (rec,) = h.records()
    assert rec["complete"] is True and rec["size"] == len(DATA)
    assert (h.root / rec["path"]).read_bytes() == DATA


def test_an_empty_object_is_an_empty_complete_artifact(h: Harness) -> None:
    h.send(None, mem_env(obj_len=0, len=0))
    (rec,) = h.records()
    assert rec["complete"] is True and rec["size"] == 0
    assert rec["sha256"] == hashlib.sha256(b"").hexdigest()
    assert (h.root / rec["path"]).read_bytes() == b""


def test_lost_ranges_make_an_incomplete_artifact_with_holes_zeroed(h: Harness) -> None:
    h.send(DATA[:1000], mem_env(last=False))
    h.send(None, mem_env(obj_off=1000, last=False, lost=[[1000, 3000]]))
    h.send(DATA[3000:], mem_env(obj_off=3000, last=True))
    (rec,) = h.records()
    assert rec["complete"] is False and rec["missing"] == [[1000, 3000]]
    data = (h.root / rec["path"]).read_bytes()
    assert data == DATA[:1000] + bytes(2000) + DATA[3000:]
    assert rec["size"] == len(DATA) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert h.writer.counters["incomplete"] == 1


def test_a_lost_tail_is_zero_filled_up_to_obj_len(h: Harness) -> None:
    h.send(DATA[:1000], mem_env(last=True, lost=[[1000, len(DATA)]]))
    (rec,) = h.records()
    assert rec["missing"] == [[1000, len(DATA)]] and rec["size"] == len(DATA)


def test_an_object_without_last_is_abandoned_after_the_idle_timeout(h: Harness) -> None:
    h.send(DATA[:1000], mem_env(last=False))
    h.clock.now += objects.IDLE_SECONDS - 1
    h.writer.tick(h.clock.now)
    assert not (h.root / "index.jsonl").read_text()  # not yet
    h.clock.now += 1
    h.writer.tick(h.clock.now)
    (rec,) = h.records()
    assert rec["complete"] is False and rec["missing"] == [[1000, len(DATA)]]
    assert (h.root / rec["path"]).read_bytes()[:1000] == DATA[:1000]
    assert h.writer.counters["abandoned"] == 1
    assert no_partials(h.root)
    # A straggler of the abandoned object is not a new object.
    h.send(DATA[1000:], mem_env(obj_off=1000, last=True))
    assert len(h.records()) == 1 and h.writer.counters["late_messages"] == 1


def test_last_seen_but_bytes_outstanding_waits_then_times_out(h: Harness) -> None:
    h.send(DATA[2048:], mem_env(obj_off=2048, last=True))
    assert h.listing() == [".partial.7.1"]  # the first half may still come
    h.clock.now += objects.IDLE_SECONDS
    h.writer.tick(h.clock.now)
    (rec,) = h.records()
    assert rec["missing"] == [[0, 2048]]


def test_close_finishes_objects_in_flight_as_incomplete(h: Harness) -> None:
    h.send(DATA[:10], mem_env(obj_id=1, last=False))
    h.send(DATA[:10], mem_env(obj_id=2, ts=2, last=False))
    h.writer.close()
    records = h.records()
    assert [r["complete"] for r in records] == [False, False]
    assert no_partials(h.root)


def test_objects_in_flight_are_bounded(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_in_flight=2)
    try:
        for obj_id in range(3):
            h.send(DATA[:10], mem_env(obj_id=obj_id, ts=obj_id, last=False))
        (rec,) = h.records()  # the oldest made room
        assert rec["obj_id"] == 0 and rec["complete"] is False
        assert h.writer.counters["evicted"] == 1
        assert sorted(h.listing()) == [".partial.7.1", ".partial.7.2", "mem.pid-100.ts-0"]
    finally:
        h.close()


def test_an_unreadable_object_is_recorded_with_its_error_and_no_file(h: Harness) -> None:
    h.send(None, mem_env(ok=False, error="EFAULT: region unmapped"))
    (rec,) = h.records()
    assert rec["path"] is None and rec["sha256"] is None and rec["size"] == 0
    assert rec["complete"] is False and rec["error"] == "EFAULT: region unmapped"
    assert rec["missing"] == [[0, len(DATA)]]
    assert rec["kind"] == "mem" and rec["prot_after_rwx"] == "r-x"
    assert not (h.root / "host").exists() or h.listing() == []
    assert h.writer.counters["failed"] == 1 and h.writer.counters["artifacts"] == 0


def test_a_failure_after_some_chunks_leaves_no_temporary_file(h: Harness) -> None:
    h.send(DATA[:100], mem_env(last=False))
    h.send(None, mem_env(ok=False, last=True, error=None))
    (rec,) = h.records()
    assert rec["error"] == "unreadable" and rec["path"] is None
    assert h.listing() == []


def test_bytes_beyond_obj_len_are_rejected(h: Harness) -> None:
    h.send(DATA[:100] + b"EXTRA", mem_env(obj_len=100, last=True))
    (rec,) = h.records()
    assert (h.root / rec["path"]).read_bytes() == DATA[:100]
    assert rec["complete"] is True and rec["size"] == 100
    assert h.writer.counters["rejected_bytes"] == 5


def test_a_chunk_wholly_beyond_obj_len_is_rejected(h: Harness) -> None:
    h.send(DATA[:100], mem_env(obj_len=100, last=False))
    h.send(b"EXTRA", mem_env(obj_off=500, obj_len=100, last=True))
    (rec,) = h.records()
    assert rec["size"] == 100 and h.writer.counters["rejected_bytes"] == 5


@pytest.mark.parametrize(
    "overrides",
    [
        {"obj_off": -1},
        {"obj_len": -1},
        {"obj_len": bus.MAX_OBJECT_BYTES + 1},
        {"obj_off": bus.MAX_OBJECT_BYTES + 1},
        {"ts": -5},
        {"pid": -1},
        {"lost": [[5, 1]]},
        {"lost": "everything"},
        {"ok": "no"},
        {"container_id": "../../etc"},
    ],
)
def test_impossible_messages_are_refused_and_counted(h: Harness, overrides: dict) -> None:
    h.send(DATA[:10], mem_env(**overrides))
    h.writer.close()
    assert h.writer.counters["rejected"] == 1
    assert not (h.root / "index.jsonl").read_text()
    assert not (h.root / "host").exists() or h.listing() == []


def test_a_file_that_grew_while_read_is_stored_whole(h: Harness) -> None:
    # The collector reads to EOF: obj_len grows with what it finds.
    h.send(DATA[:1000], mem_env(obj_len=1000, last=False))
    h.send(DATA[1000:3000], mem_env(obj_off=1000, obj_len=3000, last=False))
    h.send(None, mem_env(obj_off=3000, obj_len=3000, last=True))
    (rec,) = h.records()
    assert rec["complete"] is True and rec["size"] == 3000 and rec["obj_len"] == 3000
    assert (h.root / rec["path"]).read_bytes() == DATA[:3000]
    assert h.writer.counters["grown"] == 1 and h.writer.counters["rejected_bytes"] == 0


def test_a_read_error_midway_is_recorded_with_what_it_cost(h: Harness) -> None:
    # What the collector sends when pread fails part way: last, lost, error (ok stays true).
    h.send(DATA[:1000], mem_env(last=False))
    h.send(None, mem_env(obj_off=1000, last=True, lost=[[1000, len(DATA)]], error="EIO"))
    (rec,) = h.records()
    assert rec["complete"] is False and rec["missing"] == [[1000, len(DATA)]]
    assert rec["error"] == "EIO" and rec["path"] == "host/mem.pid-100.ts-1000"
    assert (h.root / rec["path"]).read_bytes()[:1000] == DATA[:1000]


def test_a_write_error_becomes_missing_bytes(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def failing(fd: int, data: Any, off: int) -> int:
        if off >= 2048:
            raise OSError(errno.ENOSPC, "full")
        return real(fd, data, off)

    monkeypatch.setattr(fileio.os, "pwrite", failing)
    h.send(DATA[:2048], mem_env(last=False))
    h.send(DATA[2048:], mem_env(obj_off=2048, last=True))
    (rec,) = h.records()
    assert rec["missing"] == [[2048, len(DATA)]]  # finished at once: nothing is outstanding
    assert h.writer.counters["write_errors"] == 1


def test_the_record_names_who_and_when(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.send(DATA[2048:], mem_env(obj_off=2048, ts=2_000, last=True, comm=b"x\xff\n"))
        h.send(DATA[:2048], mem_env(ts=1_500, last=False, container_id=CID))
        (rec,) = h.records()
        assert rec["path"] == "host/mem.pid-100.ts-1500"  # named by the earliest message
        assert (rec["ts"], rec["last_ts"]) == (1_500, 2_000)
        assert (rec["pid"], rec["tid"], rec["ppid"], rec["uid"], rec["cgroup_id"]) == (
            100,
            101,
            1,
            1000,
            5,
        )
        assert rec["comm"] == "x\\xff\n" and rec["comm_hex"] == "78ff0a"
        assert (rec["epoch"], rec["obj_id"], rec["obj_len"]) == (7, 1, len(DATA))
        assert len((h.root / "index.jsonl").read_text().splitlines()) == 1
    finally:
        h.close()


def test_containers_get_their_own_directory(h: Harness) -> None:
    h.send(DATA, mem_env(container_id=CID))
    (rec,) = h.records()
    assert rec["path"] == f"{CID}/mem.pid-100.ts-1000" and rec["container_id"] == CID
    assert (h.root / rec["path"]).read_bytes() == DATA


# -- the file system is hostile ----------------------------------------------------------------


def test_a_planted_symlink_at_the_final_name_is_not_followed(h: Harness, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (h.root / "host").mkdir()
    (h.root / "host/mem.pid-100.ts-1000").symlink_to(victim)
    h.send(DATA, mem_env())
    (rec,) = h.records()
    assert rec["path"] == "host/mem.pid-100.ts-1000.1"
    assert (h.root / rec["path"]).read_bytes() == DATA
    assert victim.read_bytes() == b"precious"
    assert (h.root / "host/mem.pid-100.ts-1000").is_symlink()
    assert h.writer.counters["name_collisions"] == 1


def test_an_existing_artifact_is_never_replaced(h: Harness) -> None:
    h.send(b"first", mem_env(obj_id=1, obj_len=5))
    h.send(b"second", mem_env(obj_id=2, obj_len=6))  # same pid and ts: same name
    h.send(b"third", mem_env(obj_id=3, obj_len=5))
    paths = [r["path"] for r in h.records()]
    base = "host/mem.pid-100.ts-1000"
    assert paths == [base, f"{base}.1", f"{base}.2"]
    assert [(h.root / p).read_bytes() for p in paths] == [b"first", b"second", b"third"]


def test_planted_temporary_names_are_replaced_not_followed(h: Harness, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (h.root / "host").mkdir()
    (h.root / "host/.partial.7.1").symlink_to(victim)
    (h.root / "host/.partial.7.2").write_bytes(b"stale leftover of a killed writer")
    h.send(DATA, mem_env(obj_id=1))
    h.send(DATA[:5], mem_env(obj_id=2, ts=2, obj_len=5))
    assert [(h.root / r["path"]).read_bytes() for r in h.records()] == [DATA, DATA[:5]]
    assert victim.read_bytes() == b"precious"
    assert no_partials(h.root)


def test_a_symlinked_container_directory_is_refused(h: Harness, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (h.root / CID).symlink_to(elsewhere)
    h.send(DATA, mem_env(container_id=CID))
    assert list(elsewhere.iterdir()) == []
    (rec,) = h.records()  # still one line saying the object existed
    assert rec["path"] is None and "not stored" in rec["error"]
    assert h.writer.counters["write_errors"] >= 1


# -- dedup state from the index --------------------------------------------------------------


def test_dedup_state_is_rebuilt_from_the_index_skipping_bad_lines(tmp_path: Path) -> None:
    sha = hashlib.sha256(DATA).hexdigest()
    root = tmp_path / "out"
    root.mkdir()
    lines = [
        b"garbage\n",
        b"[1]\n",
        json.dumps({"kind": "module", "complete": True, "path": "host/m", "sha256": sha}).encode(),
        b"\n",
        json.dumps({"kind": "module", "complete": True, "path": "x", "sha256": 5}).encode(),
        b'{"kind": "module", "torn',
    ]
    (root / "index.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    h = Harness(tmp_path, ModuleWriter)
    try:
        assert h.writer.counters["dedup_rebuilt"] == 1
        assert h.writer.counters["index_bad_lines"] == 4
        h.send(DATA, module_env())
        assert h.writer.counters["duplicates"] == 1
        assert h.listing() == []
    finally:
        h.close()


def test_incomplete_records_do_not_block_a_new_capture(tmp_path: Path) -> None:
    sha = hashlib.sha256(DATA).hexdigest()
    root = tmp_path / "out"
    root.mkdir()
    rec = {"kind": "module", "complete": False, "path": "host/m", "sha256": sha}
    (root / "index.jsonl").write_text(json.dumps(rec) + "\n")
    h = Harness(tmp_path, ModuleWriter)
    try:
        h.send(DATA, module_env())
        assert h.writer.counters["artifacts"] == 1
    finally:
        h.close()


def test_a_planted_index_symlink_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not an index\n")
    root = tmp_path / "out"
    root.mkdir()
    (root / "index.jsonl").symlink_to(secret)
    with OutputTree(tmp_path, index_name="other.jsonl") as tree:
        writer = ModuleWriter(tree.out, tree.index)
        assert writer.counters["index_errors"] == 1 and writer.counters["index_bad_lines"] == 0


def test_a_fifo_planted_as_the_index_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    os.mkfifo(root / "index.jsonl")
    with OutputTree(tmp_path, index_name="other.jsonl") as tree:
        assert ModuleWriter(tree.out, tree.index).counters["index_errors"] == 1


def test_dedup_keys_are_bounded(tmp_path: Path) -> None:
    h = Harness(tmp_path, ModuleWriter, max_dedup_keys=2)
    try:
        for i in range(3):
            h.send(bytes([i]), module_env(obj_id=i, obj_len=1))
        h.send(bytes([0]), module_env(obj_id=9, obj_len=1))  # forgotten: captured again
        h.send(bytes([2]), module_env(obj_id=10, obj_len=1))  # remembered
        assert h.writer.counters["artifacts"] == 4 and h.writer.counters["duplicates"] == 1
    finally:
        h.close()


# -- no input crashes it ---------------------------------------------------------------------

_chunk = st.fixed_dictionaries(
    {
        "obj_id": st.integers(0, 3),
        "obj_off": st.integers(-2, 5000),
        "obj_len": st.integers(-1, 5000),
        "last": st.booleans(),
        "ts": st.integers(-1, 3),
    },
    optional={
        "lost": st.lists(st.lists(st.integers(-2, 6000), min_size=0, max_size=3), max_size=3),
        "ok": st.sampled_from([True, False, 0, None]),
        "error": st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.none()),
    },
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_chunk, st.binary(max_size=300)), max_size=12), st.booleans())
def test_any_message_sequence_is_survived_and_cleaned_up(
    chunks: list[tuple[dict[str, Any], bytes]], module: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp), ModuleWriter if module else MemoryWriter, max_in_flight=2)
        try:
            for env, payload in chunks:
                h.send(payload or None, (module_env if module else mem_env)(**env))
                h.clock.now += 10
                h.writer.tick(h.clock.now)
            h.writer.close()
            for rec in h.records():
                if rec["path"] is not None:
                    assert (h.root / rec["path"]).stat().st_size == rec["size"]
            assert no_partials(h.root)
        finally:
            h.close()
