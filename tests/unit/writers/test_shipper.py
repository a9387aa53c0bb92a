"""The shipper's logic against a dict-backed store and a real output tree: what ships, once,
across restarts, store failures and files that change under it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from writers.s3store import ObjectRefused, StoreError
from writers.shipper import BACKOFF_FIRST_S, HashingReader, Shipper
from writers.shipstate import STATE_NAME, StateJournal, replay


class FakeStore:
    """Objects by key; ``down`` makes every call fail; ``puts`` counts every put by key."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.puts: dict[str, int] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError("connection refused")

    def put_file(self, key: str, fileobj: BinaryIO, metadata: dict[str, str]) -> None:
        self._check()
        data = b""
        while block := fileobj.read(3):  # small reads: the hasher must follow them
            data += block
        fileobj.close()  # as s3transfer does
        self.objects[key] = (data, dict(metadata))
        self.puts[key] = self.puts.get(key, 0) + 1

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self._check()
        self.objects[key] = (data, dict(metadata))
        self.puts[key] = self.puts.get(key, 0) + 1

    def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """An out/ directory with artifacts and their index lines."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o750)
        (root / "host").mkdir(mode=0o750)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def artifact(self, path: str, data: bytes, **fields: Any) -> dict[str, Any]:
        (self.root / path).write_bytes(data)
        record = {
            "path": path,
            "kind": "exec",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "complete": True,
            "missing": [],
            **fields,
        }
        self.line(record)
        return record

    def line(self, record: dict[str, Any], raw: bytes | None = None) -> None:
        with open(self.root / "index.jsonl", "ab") as f:
            f.write(raw if raw is not None else (json.dumps(record) + "\n").encode())

    def shipper(self, store: FakeStore, clock: Clock | None = None, **kw: Any) -> Shipper:
        return Shipper(self.fd, store, "box1", "p", clock=clock or Clock(), **kw)

    def index_lines(self, store: FakeStore) -> list[bytes]:
        chunks = sorted(k for k in store.objects if k.startswith("p/box1/index/"))
        return [line for k in chunks for line in store.objects[k][0].splitlines()]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "out")


def test_artifacts_and_index_lines_ship_with_their_metadata(tree: Tree) -> None:
    store = FakeStore()
    rec = tree.artifact("host/exec.1.ls", b"\x7fELF binary", pid=7, comm="ls")
    tree.line({"kind": "gap", "topic": "exec.", "from_seq": 3, "to_seq": 4})
    tree.artifact("host/bpf.x", b"insns", kind="bpf", complete=False, missing=[[2, 4]])
    shipper = tree.shipper(store)
    shipper.step()
    data, meta = store.objects["p/box1/host/exec.1.ls"]
    assert data == b"\x7fELF binary"
    assert meta["sha256"] == rec["sha256"] and meta["pid"] == "7" and meta["comm"] == "ls"
    assert store.objects["p/box1/host/bpf.x"][1]["missing"] == "[[2,4]]"
    assert tree.index_lines(store) == (tree.root / "index.jsonl").read_bytes().splitlines()
    assert shipper.counters["shipped_artifacts"] == 2
    assert shipper.counters["shipped_incomplete"] == 1
    assert shipper.counters["ship_pending"] == 0


def test_a_restart_ships_nothing_twice_and_misses_nothing(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a" * 100)
    first = tree.shipper(store)
    first.step()
    first.close()
    tree.artifact("host/exec.2.b", b"b" * 100)
    tree.line({}, raw=b'{"path": "host/exec.3.c", "kind": "ex')  # torn: a writer mid-append
    second = tree.shipper(store)
    second.step()
    assert set(store.puts) >= {"p/box1/host/exec.1.a", "p/box1/host/exec.2.b"}
    assert all(n == 1 for n in store.puts.values())
    tree.line({}, raw=b'ec", "sha256": null}\n')
    (tree.root / "host/exec.3.c").write_bytes(b"c")
    second.step()
    assert store.objects["p/box1/host/exec.3.c"][0] == b"c"
    lines = tree.index_lines(store)
    assert lines == (tree.root / "index.jsonl").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == 3


def test_an_index_chunk_begun_before_a_crash_is_sent_again_with_the_same_bounds(
    tree: Tree,
) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    journal = StateJournal(tree.fd)
    journal.record({"index": str(os.stat(tree.root / "index.jsonl").st_ino)})
    journal.record({"chunk": [0, 40]})  # a crash after this, before chunk_done
    journal.close()
    shipper = tree.shipper(store)
    shipper.step()
    keys = sorted(k for k in store.objects if "/index/" in k)
    assert keys[0].endswith(".000000000000000-000000000000040.jsonl")
    assert b"".join(store.objects[k][0] for k in keys) == (tree.root / "index.jsonl").read_bytes()


def test_a_store_that_is_down_keeps_artifacts_pending_then_ships_them(tree: Tree) -> None:
    store = FakeStore()
    store.down = True
    clock = Clock()
    tree.artifact("host/exec.1.a", b"a" * 10)
    tree.artifact("host/exec.2.b", b"b" * 20)
    tree.line({"kind": "budget", "state": "resumed", "refused_bytes": 4096, "refused_writes": 1})
    shipper = tree.shipper(store, clock)
    shipper.step()
    assert shipper.store_down
    assert shipper.counters["ship_pending"] == 2
    assert shipper.counters["ship_pending_bytes"] == 30
    assert shipper.counters["ship_budget_refused_bytes"] == 4096
    errors = shipper.counters["ship_store_errors"]
    shipper.step()  # within the backoff: no attempt
    assert shipper.counters["ship_store_errors"] == errors
    clock.now += BACKOFF_FIRST_S
    shipper.step()
    assert shipper.counters["ship_store_errors"] == errors + 1
    store.down = False
    clock.now += 60
    shipper.step()
    assert not shipper.store_down and shipper.counters["ship_pending"] == 0
    assert store.objects["p/box1/host/exec.2.b"][0] == b"b" * 20


def test_a_later_line_supersedes_a_waiting_one_and_a_changed_file_waits(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/write.dev-1.inode-2", b"first", kind="write")
    (tree.root / "host/write.dev-1.inode-2").write_bytes(b"first and more")
    shipper = tree.shipper(store)
    shipper.step()
    assert shipper.counters["ship_changed"] == 1 and not store.objects.get(
        "p/box1/host/write.dev-1.inode-2"
    )
    tree.artifact("host/write.dev-1.inode-2", b"first and more", kind="write")
    shipper.step()
    data, meta = store.objects["p/box1/host/write.dev-1.inode-2"]
    assert data == b"first and more"
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert shipper.counters["ship_superseded"] == 1


def test_a_new_version_of_a_shipped_artifact_replaces_its_object(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/write.dev-1.inode-2", b"v1", kind="write")
    shipper = tree.shipper(store)
    shipper.step()
    tree.artifact("host/write.dev-1.inode-2", b"v1v2", kind="write")
    shipper.step()
    assert store.objects["p/box1/host/write.dev-1.inode-2"][0] == b"v1v2"
    assert store.puts["p/box1/host/write.dev-1.inode-2"] == 2


def test_delete_after_upload_removes_final_copies_only(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    tree.artifact("host/write.dev-1.inode-2", b"w", kind="write")
    shipper = tree.shipper(store, delete_after_upload=True)
    shipper.step()
    assert not (tree.root / "host/exec.1.a").exists()
    assert (tree.root / "host/write.dev-1.inode-2").exists()  # may still grow: idle first
    old = os.stat(tree.root / "host/write.dev-1.inode-2").st_mtime_ns - 120 * 10**9
    os.utime(tree.root / "host/write.dev-1.inode-2", ns=(old, old))
    shipper._to_delete["host/write.dev-1.inode-2"].mtime_ns = old
    shipper.step()
    assert not (tree.root / "host/write.dev-1.inode-2").exists()
    assert (tree.root / "index.jsonl").exists() and (tree.root / STATE_NAME).exists()
    assert shipper.counters["ship_deleted"] == 2


def test_a_copy_stored_but_not_deleted_before_a_kill_is_deleted_after_the_restart(
    tree: Tree,
) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    first = tree.shipper(store, delete_after_upload=True)
    first._delete_stored = lambda: None  # type: ignore[method-assign]  # killed before it
    first.step()
    first.close()
    second = tree.shipper(store, delete_after_upload=True)
    second.step()
    assert not (tree.root / "host/exec.1.a").exists()
    assert store.puts["p/box1/host/exec.1.a"] == 1


def test_a_file_written_again_after_its_copy_was_deleted_never_overwrites_the_first(
    tree: Tree,
) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"first")
    shipper = tree.shipper(store, delete_after_upload=True)
    shipper.step()
    assert not (tree.root / "host/exec.1.a").exists()
    rec = tree.artifact("host/exec.1.a", b"second")
    shipper.close()
    again = tree.shipper(store, delete_after_upload=True)  # the deletion is remembered
    again.step()
    assert store.objects["p/box1/host/exec.1.a"][0] == b"first"
    assert store.objects[f"p/box1/host/exec.1.a.{rec['sha256']}"][0] == b"second"


def test_an_object_the_store_refuses_is_counted_and_does_not_hold_up_others(tree: Tree) -> None:
    store = FakeStore()
    refuse = store.put_file

    def put_file(key: str, fileobj: BinaryIO, metadata: dict[str, str]) -> None:
        if key.endswith("exec.1.a"):
            raise ObjectRefused(f"{key}: KeyTooLong")
        refuse(key, fileobj, metadata)

    store.put_file = put_file  # type: ignore[method-assign]
    tree.artifact("host/exec.1.a", b"a")
    tree.artifact("host/exec.2.b", b"b")
    shipper = tree.shipper(store)
    shipper.step()
    assert shipper.counters["ship_refused"] == 1 and shipper.counters["ship_pending"] == 0
    assert store.objects["p/box1/host/exec.2.b"][0] == b"b"


def test_a_symlink_or_fifo_in_place_of_an_artifact_is_never_followed(tree: Tree) -> None:
    store = FakeStore()
    secret = tree.root.parent / "secret"
    secret.write_bytes(b"not an artifact")
    tree.artifact("host/exec.1.a", b"a")
    (tree.root / "host/exec.1.a").unlink()
    (tree.root / "host/exec.1.a").symlink_to(secret)
    tree.artifact("host/exec.2.b", b"b")
    (tree.root / "host/exec.2.b").unlink()
    os.mkfifo(tree.root / "host/exec.2.b")
    shipper = tree.shipper(store)
    shipper.step()
    assert not [k for k in store.objects if "/host/" in k]
    assert shipper.counters["ship_gone"] == 2


def test_bad_lines_are_counted_not_shipped(tree: Tree) -> None:
    store = FakeStore()
    tree.line({}, raw=b"not json\n")
    tree.line({"path": "../../etc/passwd", "kind": "exec", "sha256": "x"})
    shipper = tree.shipper(store)
    shipper.step()
    assert shipper.counters["ship_bad_records"] == 2
    assert not [k for k in store.objects if "/index/" not in k]


def test_a_replaced_index_is_followed_from_its_start(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    shipper = tree.shipper(store)
    shipper.step()
    (tree.root / "index.jsonl").unlink()
    tree.artifact("host/exec.2.b", b"b")
    shipper.step()
    assert store.objects["p/box1/host/exec.2.b"][0] == b"b"
    assert len([k for k in store.objects if "/index/" in k]) == 2


def test_hashing_reader_hashes_each_byte_once_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = HashingReader(fd)
        reader.read(100)
        reader.seek(50)
        reader.read(100)  # a retried part: bytes 50..100 again
        reader.read()
        assert reader.hashed == 2560
        assert reader.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        os.close(fd)


def test_state_replay_ignores_a_torn_tail_and_unknown_lines() -> None:
    data = (
        b'{"index": "5"}\n{"shipped": "host/a", "sha256": "x"}\n{"resolved": 90}\n'
        b'{"chunk": [0, 90]}\n{"what": 1}\n{"chunk_done": 9'
    )
    state = replay(data)
    assert state.index_id == "5" and state.shipped == {"host/a": "x"}
    assert state.resolved == 90 and state.chunk_open == (0, 90) and state.bad_lines == 2


def test_state_compaction_keeps_the_state(tree: Tree) -> None:
    journal = StateJournal(tree.fd)
    journal.record({"index": "9"})
    for i in range(50):
        journal.record({"shipped": f"host/a{i}", "sha256": str(i)})
    journal.record({"shipped": "host/a3", "sha256": None})
    journal.record({"resolved": 500})
    journal.record({"chunk": [0, 500]})
    before = journal.state
    journal.compact()
    journal.close()
    again = StateJournal(tree.fd)
    assert again.state == before and "host/a3" not in again.state.shipped


def rotate(tree: Tree, number: int, compress: bool = False) -> None:
    """What the writer that rotates the index does (writers/index.py): the live file becomes
    segment ``number`` (then its .gz), a new one starting with the rotation record takes the
    name."""
    import gzip

    from tracecap import rotation

    closed = rotation.segment_name("index.jsonl", number)
    staging = tree.root / ".index.jsonl.rotating"
    record = rotation.rotation_record("index.jsonl", closed, number, [], 1)
    staging.write_text(json.dumps(record) + "\n")
    os.rename(tree.root / "index.jsonl", tree.root / closed)
    os.rename(staging, tree.root / "index.jsonl")
    if compress:
        plain = tree.root / closed
        (tree.root / f"{closed}.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()


def all_index_bytes(tree: Tree) -> list[bytes]:
    from tracecap import segments

    return [line.rstrip(b"\n") for _, line in segments.iter_lines(tree.fd, "index.jsonl")]


def test_a_rotated_index_is_shipped_from_its_oldest_segment_in_order(tree: Tree) -> None:
    """Started after three rotations (one segment compressed): every segment, then the live
    file; each file's lines go up as objects of their own, in file order."""
    store = FakeStore()
    for n in range(1, 4):
        tree.artifact(f"host/exec.{n}.a", bytes([n]) * 10)
        tree.artifact(f"host/exec.{n}.b", bytes([n]) * 20)
        rotate(tree, n, compress=n == 2)
    tree.artifact("host/exec.4.a", b"live")
    shipper = tree.shipper(store)
    shipper.step()
    shipped = sorted(k.removeprefix("p/box1/") for k in store.objects if "/index/" not in k)
    assert shipped == sorted(
        [f"host/exec.{n}.{x}" for n in range(1, 4) for x in "ab"] + ["host/exec.4.a"]
    )
    assert all(n == 1 for n in store.puts.values())
    # index objects: keyed by file (inode, and number past the first), in file order each
    ids = {k.split("/index/")[1].split(".")[0]: k for k in store.objects if "/index/" in k}
    numbers = sorted(int(i.partition("-")[2] or 1) for i in ids)
    assert numbers == [1, 2, 3, 4]
    by_number = sorted(ids, key=lambda i: int(i.partition("-")[2] or 1))
    lines = [line for i in by_number for line in store.objects[ids[i]][0].splitlines()]
    assert lines == all_index_bytes(tree)
    assert shipper.journal.state.number == 4


def test_the_index_is_followed_across_a_rotation_while_shipping(tree: Tree) -> None:
    """A line appended just before the rotation (after the last round) is not skipped, the
    live file's lines are not shipped twice, the journal then follows the new file."""
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    shipper = tree.shipper(store)
    shipper.step()
    tree.artifact("host/exec.1.late", b"late")  # after the round, before the rotation
    rotate(tree, 1, compress=True)  # and compressed at once: our fd still reads it
    tree.artifact("host/exec.2.a", b"b")
    shipper.step()
    shipper.step()
    assert {k.removeprefix("p/box1/") for k in store.objects if "/index/" not in k} == {
        "host/exec.1.a", "host/exec.1.late", "host/exec.2.a"
    }  # fmt: skip
    assert all(n == 1 for n in store.puts.values())
    lines = [
        line for k in store.objects if "/index/" in k for line in store.objects[k][0].splitlines()
    ]
    assert sorted(lines) == sorted(all_index_bytes(tree)) and len(lines) == len(set(lines)) == 4
    state = shipper.journal.state
    assert (
        state.number == 2
        and state.resolved == (1 << 40) + (tree.root / "index.jsonl").stat().st_size
    )
    shipper.close()
    # a restart ships nothing again
    again = tree.shipper(store)
    again.step()
    assert all(n == 1 for n in store.puts.values())


def test_a_restart_after_rotations_goes_back_to_a_line_still_waiting(tree: Tree) -> None:
    """A changed artifact waits in file 1 while the index rotates twice and the shipper is
    killed: the restart reads file 1 again from that line (its index object is not put
    again), ships the artifact once it matches, and nothing else twice."""
    store = FakeStore()
    rec = tree.artifact("host/exec.1.w", b"first", kind="write")
    (tree.root / "host/exec.1.w").write_bytes(b"changed")  # its line no longer describes it
    tree.artifact("host/exec.1.x", b"x")
    first = tree.shipper(store)
    first.step()
    assert "p/box1/host/exec.1.w" not in store.objects and first.counters["ship_changed"] == 1
    rotate(tree, 1)
    tree.artifact("host/exec.2.y", b"y")
    first.step()
    rotate(tree, 2, compress=True)
    tree.artifact("host/exec.3.z", b"z")
    first.step()
    first.close()  # killed: its waiting line is in segment 1
    assert first.journal.state.resolved < 1 << 40
    (tree.root / "host/exec.1.w").write_bytes(b"first")  # back to what its line says
    again = tree.shipper(store)
    again.step()
    assert store.objects["p/box1/host/exec.1.w"][0] == b"first" and rec["sha256"]
    assert {k.removeprefix("p/box1/") for k in store.objects if "/index/" not in k} == {
        "host/exec.1.w", "host/exec.1.x", "host/exec.2.y", "host/exec.3.z"
    }  # fmt: skip
    assert all(n == 1 for n in store.puts.values()), store.puts
    lines = [
        line for k in store.objects if "/index/" in k for line in store.objects[k][0].splitlines()
    ]
    assert sorted(lines) == sorted(all_index_bytes(tree))


def test_a_segment_removed_before_it_was_read_is_counted(tree: Tree) -> None:
    store = FakeStore()
    tree.artifact("host/exec.1.a", b"a")
    rotate(tree, 1)
    tree.artifact("host/exec.2.a", b"b")
    rotate(tree, 2)
    (tree.root / "index.000001.jsonl").unlink()  # rotate-count: only one segment kept
    tree.artifact("host/exec.3.a", b"c")
    shipper = tree.shipper(store)
    shipper.step()
    assert shipper.counters["ship_index_segments_lost"] == 0  # the oldest there is segment 2
    assert "p/box1/host/exec.2.a" in store.objects and "p/box1/host/exec.3.a" in store.objects


def test_a_segment_removed_before_a_restart_read_it_is_counted_lost(tree: Tree) -> None:
    store = FakeStore()
    store.down = True
    tree.artifact("host/exec.1.a", b"a")
    first = tree.shipper(store)
    first.step()  # read, not stored
    first.close()
    rotate(tree, 1)
    tree.artifact("host/exec.2.a", b"b")
    (tree.root / "index.000001.jsonl").unlink()
    store.down = False
    again = tree.shipper(store)
    again.step()
    assert again.counters["ship_index_segments_lost"] == 1
    assert "p/box1/host/exec.2.a" in store.objects
    assert again.journal.state.number == 2


def test_the_index_rotated_by_its_writers_is_shipped_line_for_line(tmp_path: Path) -> None:
    """The real index (writers/index.py, index-rotate:1kb,compress) appended to between the
    shipper's rounds, a restart halfway: every artifact once, every line of every segment once,
    in order per file."""
    from tracecap.rotation import Rotation
    from writers.index import Index
    from writers.outdir import OutputDir

    out = OutputDir(str(tmp_path / "out"))
    os.mkdir(tmp_path / "out" / "host")
    index = Index(out, rotation=Rotation(1024, compress=True))
    store = FakeStore()
    shipper = Shipper(out.root_fd, store, "box1", "p", clock=Clock())
    for i in range(60):
        data = os.urandom(50 + i)
        path = f"host/exec.{i}.x"
        (tmp_path / "out" / path).write_bytes(data)
        index.append({"path": path, "kind": "exec", "sha256": hashlib.sha256(data).hexdigest(),
                      "size": len(data), "complete": True, "missing": []})  # fmt: skip
        if i % 7 == 0:
            shipper.step()
        if i == 30:
            shipper.close()  # a kill: the next one starts from the journal
            shipper = Shipper(out.root_fd, store, "box1", "p", clock=Clock())
    shipper.step()
    index.close()
    names = os.listdir(tmp_path / "out")
    assert len([n for n in names if n.endswith(".jsonl.gz")]) >= 10, names
    assert {k.removeprefix("p/box1/") for k in store.objects if "/index/" not in k} == {
        f"host/exec.{i}.x" for i in range(60)
    }
    assert all(n == 1 for n in store.puts.values()), store.puts
    from tracecap import segments

    every = [line for _, line in segments.iter_lines(out.root_fd, "index.jsonl")]
    keys = sorted((k for k in store.objects if "/index/" in k), key=lambda k: (
        int(k.split("/index/")[1].split(".")[0].partition("-")[2] or 1), k.rsplit(".", 2)[1]
    ))  # fmt: skip
    assert b"".join(store.objects[k][0] for k in keys) == b"".join(every)
    shipper.close()
    out.close()
