"""The exec writer: executed binaries, once per (container, dev, inode, ctime), across restarts."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.support import envelopes
from tests.support.writer_harness import WriterHarness
from writers.exec import ExecWriter, argv_fields
from writers.naming import NAME_MAX

BINARY = b"\x7fELF" + bytes(range(256)) * 64
CID = "abcdef0123456789" * 4

exec_env = functools.partial(envelopes.exec_env, obj_len=len(BINARY))


class Harness(WriterHarness[ExecWriter]):
    def __init__(self, root: Path) -> None:
        super().__init__(root, ExecWriter)

    def run(self, binary: bytes = BINARY, chunk: int = 1000, **overrides: Any) -> None:
        """One execution: the binary streamed in ``chunk``-byte messages."""
        offs = list(range(0, len(binary), chunk)) or [0]
        for off in offs:
            env = exec_env(obj_off=off, obj_len=len(binary), last=off == offs[-1], **overrides)
            self.send(binary[off : off + chunk] or None, env)


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_a_binary_is_stored_identical_and_never_executable(h: Harness) -> None:
    h.run()
    (rec,) = h.records()
    assert rec["path"] == "host/exec.1000.payload"
    path = h.root / rec["path"]
    assert path.read_bytes() == BINARY
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert rec["sha256"] == hashlib.sha256(BINARY).hexdigest() and rec["size"] == len(BINARY)
    assert rec["kind"] == "exec" and rec["complete"] is True
    assert rec["source_path"] == "/tmp/payload" and rec["argv"] == ["/tmp/payload", "-x"]
    assert (rec["dev"], rec["inode"], rec["ctime"], rec["mode"], rec["memfd"]) == (
        2049,
        77,
        1_700_000_000_000_000_000,
        0o100755,
        False,
    )
    assert (rec["pid"], rec["ppid"], rec["uid"], rec["comm"]) == (100, 1, 1000, "dropper")


def test_the_same_binary_twice_is_captured_once(h: Harness) -> None:
    h.run(obj_id=1, ts=1_000)
    h.run(obj_id=2, ts=2_000, pid=200)
    assert len(h.records()) == 1
    assert os.listdir(h.root / "host") == ["exec.1000.payload"]
    assert h.writer.counters["duplicates"] == 1 and h.writer.counters["artifacts"] == 1


def test_a_known_binary_is_dropped_without_writing_it(h: Harness) -> None:
    h.run(obj_id=1)
    h.send(BINARY[:1000], exec_env(obj_id=2, obj_len=len(BINARY), last=False))
    assert os.listdir(h.root / "host") == ["exec.1000.payload"]  # no temporary file either
    assert h.writer.counters["bytes_written"] == len(BINARY)
    h.send(None, exec_env(obj_id=2, obj_off=len(BINARY), last=True))
    assert h.writer.counters["duplicates"] == 1 and len(h.records()) == 1


def test_a_changed_ctime_is_captured_again(h: Harness) -> None:
    h.run(obj_id=1, ts=1_000)
    patched = BINARY[:-4] + b"EVIL"
    h.run(patched, obj_id=2, ts=2_000, ctime=1_700_000_000_000_000_001)
    records = h.records()
    assert [r["path"] for r in records] == ["host/exec.1000.payload", "host/exec.2000.payload"]
    assert (h.root / records[1]["path"]).read_bytes() == patched


def test_the_same_inode_in_another_container_is_captured_again(h: Harness) -> None:
    h.run(obj_id=1)
    h.run(obj_id=2, container_id=CID)
    assert [r["path"] for r in h.records()] == [
        "host/exec.1000.payload",
        f"{CID}/exec.1000.payload",
    ]


def test_dedup_survives_a_restart(h: Harness) -> None:
    h.run(obj_id=1)
    h.restart()
    assert h.writer.counters["dedup_rebuilt"] == 1
    h.run(obj_id=2, ts=5_000)  # a new collector epoch would do the same
    h.run(obj_id=1, epoch=8, ts=6_000)
    assert len(h.records()) == 1
    assert h.writer.counters["duplicates"] == 2
    h.run(obj_id=3, ts=7_000, ctime=5)
    assert len(h.records()) == 2


def test_dedup_survives_a_restart_with_other_kinds_in_the_index(h: Harness) -> None:
    h.index.append({"kind": "write", "path": "host/write.dev-1.inode-2", "complete": True})
    h.index.append({"kind": "gap", "writer": "exec", "epoch": 7, "from_seq": 1, "to_seq": 2})
    h.run(obj_id=1)
    h.restart()
    assert h.writer.counters["dedup_rebuilt"] == 1
    assert h.writer.counters["index_bad_lines"] == 0


def test_an_incomplete_capture_is_retried(h: Harness) -> None:
    h.send(BINARY[:1000], exec_env(obj_id=1, last=True, lost=[[1000, len(BINARY)]]))
    h.run(obj_id=2, ts=2_000)
    records = h.records()
    assert [r["complete"] for r in records] == [False, True]
    assert (h.root / records[1]["path"]).read_bytes() == BINARY
    h.run(obj_id=3, ts=3_000)
    assert len(h.records()) == 2


def test_a_binary_that_could_not_be_read_is_recorded_and_retried(h: Harness) -> None:
    h.send(None, exec_env(ok=False, error="process exited; inode changed"))
    h.run(obj_id=2, ts=2_000)
    first, second = h.records()
    assert first["path"] is None and first["error"] == "process exited; inode changed"
    assert second["complete"] is True


def test_memfd_binaries_are_named_from_the_memfd(h: Harness) -> None:
    h.run(path=b"memfd:payload (deleted)", memfd=True, dev=1, inode=2048, argv=[])
    (rec,) = h.records()
    assert rec["path"] == "host/exec.1000.memfd_payload"
    assert rec["memfd"] is True and rec["source_path"] == "memfd:payload (deleted)"
    assert rec["argv"] == []


def test_the_same_name_and_ts_never_overwrite(h: Harness) -> None:
    h.run(obj_id=1)
    h.run(b"other", obj_id=2, inode=78)
    assert [r["path"] for r in h.records()] == [
        "host/exec.1000.payload",
        "host/exec.1000.payload.1",
    ]
    assert (h.root / "host/exec.1000.payload").read_bytes() == BINARY


@pytest.mark.parametrize(
    "path",
    [
        b"/",
        b"..",
        b"/tmp/..",
        b"/tmp/" + b"B" * 255,
        b"/tmp/\xff\xfe\xc3(",
        b"/tmp/evil\nname",
        b"/tmp/.hidden",
        b"memfd:../../../etc/passwd (deleted)",
    ],
)
def test_hostile_basenames_stay_one_component_in_the_container_dir(h: Harness, path: bytes) -> None:
    h.run(path=path, memfd=path.startswith(b"memfd:"))
    (rec,) = h.records()
    subdir, name = rec["path"].split("/")
    assert subdir == "host" and os.listdir(h.root / "host") == [name]
    assert name.startswith("exec.1000.") and len(name) <= NAME_MAX
    assert name.isascii() and name.isprintable()
    assert (h.root / rec["path"]).resolve().parent == (h.root / "host").resolve()
    assert (h.root / rec["path"]).read_bytes() == BINARY
    if b"\xff" in path:
        assert bytes.fromhex(rec["source_path_hex"]) == path


def test_argv_fields_keep_the_exact_bytes() -> None:
    assert argv_fields([b"ls", b"-l"]) == {"argv": ["ls", "-l"]}
    fields = argv_fields([b"ok", b"\xff\n"])
    assert fields["argv"] == ["ok", "\\xff\n"] and fields["argv_hex"] == ["6f6b", "ff0a"]
    assert argv_fields([b"a", 5, None])["argv_malformed"] is True


def test_malformed_argv_still_gives_a_record(h: Harness) -> None:
    h.run(argv=[b"x", 3, {"k": 1}])
    (rec,) = h.records()
    assert rec["argv"] == ["x", "", ""] and rec["argv_malformed"] is True


def test_the_containers_names_are_in_the_index(h: Harness) -> None:
    named = {"container_name": "web", "container_image": "nginx:1", "pod_name": "web-0"}
    h.run(container_id="ab" * 32, **named)
    (rec,) = h.records()
    assert {k: rec.get(k) for k in named} == named
    assert "pod_uid" not in rec


def test_a_script_and_its_interpreter_are_two_artifacts_each_named_after_itself(
    h: Harness,
) -> None:
    relation = {"cmdpath": b"./run.sh", "interp": b"/bin/sh",
                "interpreter_path": b"/usr/bin/dash", "script_path": b"/home/u/run.sh"}  # fmt: skip
    script = b"#!/bin/sh\necho hi\n"
    h.run(path=b"/usr/bin/dash", role="interpreter", source="file", deleted=False, **relation)
    h.run(script, obj_id=2, path=b"/home/u/run.sh", inode=78, role="script",
          source="page_cache", deleted=True, **relation)  # fmt: skip
    dash, run = h.records()
    assert (dash["path"], run["path"]) == ("host/exec.1000.dash", "host/exec.1000.run.sh")
    assert (h.root / run["path"]).read_bytes() == script
    assert (dash["role"], run["role"], run["source"], run["deleted"]) == (
        "interpreter",
        "script",
        "page_cache",
        True,
    )
    for rec in (dash, run):
        assert (rec["cmdpath"], rec["interp"]) == ("./run.sh", "/bin/sh")
        assert (rec["interpreter_path"], rec["script_path"]) == ("/usr/bin/dash", "/home/u/run.sh")
