"""The module, BPF and memory writers, and their registration as writer kinds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.envelopes import bpf_env, mem_env, module_env
from tests.support.writer_harness import OutputTree, WriterHarness
from tracecap import bus
from tracecap.text import prot_string
from writers.bpf import BpfWriter
from writers.memory import MemoryWriter
from writers.module import ModuleWriter
from writers.naming import NAME_MAX
from writers.objects import ObjectWriter
from writers.runner import WRITER_KINDS

IMAGE = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8
INSNS = bytes.fromhex("b7000000000000009500000000000000")  # r0 = 0; exit


class Harness(WriterHarness[ObjectWriter]):
    """Each object is sent whole, in one message: its ``obj_len`` is the payload's."""

    def send(self, payload: bytes | None, env: dict[str, Any], topic: bytes | None = None) -> None:
        super().send(payload, {**env, "obj_len": len(payload or b"")}, topic)


@pytest.fixture
def module(tmp_path: Path):
    harness = Harness(tmp_path, ModuleWriter)
    yield harness
    harness.close()


@pytest.fixture
def bpf(tmp_path: Path):
    harness = Harness(tmp_path, BpfWriter)
    yield harness
    harness.close()


@pytest.fixture
def mem(tmp_path: Path):
    harness = Harness(tmp_path, MemoryWriter)
    yield harness
    harness.close()


# -- module -----------------------------------------------------------------------------------


def test_init_module_is_named_by_pid_and_content(module: Harness) -> None:
    module.send(IMAGE, module_env(params=b"debug=1"))
    (rec,) = module.records()
    sha = hashlib.sha256(IMAGE).hexdigest()
    assert rec["path"] == f"host/module.pid-100.{sha}"
    assert (module.root / rec["path"]).read_bytes() == IMAGE
    assert rec["sha256"] == sha == rec["path"].rsplit(".", 1)[1]
    assert (rec["syscall"], rec["ret"], rec["params"]) == ("init_module", -38, "debug=1")
    assert (rec["dev"], rec["inode"], rec["source_path"]) == (0, 0, "")


def test_finit_module_is_named_by_its_file(module: Harness) -> None:
    module.send(
        IMAGE,
        module_env(syscall="finit_module", dev=2049, inode=12, path=b"/tmp/m.ko", params=b"\xff"),
    )
    (rec,) = module.records()
    sha = hashlib.sha256(IMAGE).hexdigest()
    assert rec["path"] == f"host/module.dev-2049.inode-12.pid-100.{sha}"
    assert rec["source_path"] == "/tmp/m.ko" and rec["params_hex"] == "ff"


def test_finit_module_flags_say_the_kernel_decompressed_the_file(module: Harness) -> None:
    """MODULE_INIT_COMPRESSED_FILE (4; kmod 31+ with a .ko.xz the kernel can decompress): the
    artifact is the file's bytes as the kernel received them, and the index says so."""
    module.send(IMAGE, module_env(syscall="finit_module", dev=1, inode=2, fd=3, load_flags=4))
    (rec,) = module.records()
    assert (rec["fd"], rec["load_flags"]) == (3, 4)


def test_a_module_image_is_stored_once_and_every_attempt_indexed(module: Harness) -> None:
    module.send(IMAGE, module_env(obj_id=1))
    module.send(IMAGE, module_env(obj_id=2, pid=200, syscall="finit_module", dev=1, inode=2,
                                  params=b"x=1", fd=3))  # fmt: skip
    module.send(IMAGE + b"x", module_env(obj_id=3))
    first, again, other = module.records()
    assert module.writer.counters["duplicates"] == 1
    assert module.listing() == sorted([first["path"].removeprefix("host/"),
                                       other["path"].removeprefix("host/")])  # fmt: skip
    assert (again["path"], again["duplicate_of"], again["sha256"]) == (
        None, first["path"], first["sha256"],
    )  # fmt: skip
    assert (again["pid"], again["syscall"], again["params"], again["fd"], again["ret"]) == (
        200, "finit_module", "x=1", 3, -38,
    )  # fmt: skip
    assert again["complete"] is True and "duplicate_of" not in first


def test_a_module_image_is_captured_once_across_restarts(module: Harness) -> None:
    module.send(IMAGE, module_env(obj_id=1))
    module.restart()
    module.send(IMAGE, module_env(obj_id=1, epoch=8))
    first, again = module.records()
    assert module.writer.counters["duplicates"] == 1
    assert os.listdir(module.root / "host") == [
        f"module.pid-100.{hashlib.sha256(IMAGE).hexdigest()}"
    ]
    assert again["duplicate_of"] == first["path"] and again["epoch"] == 8


def send_partial(module: Harness, obj_id: int, **overrides: Any) -> None:
    """IMAGE with its second 1000 bytes lost, as the collector sends it."""
    env = module_env(obj_id=obj_id, obj_len=len(IMAGE), **overrides)
    WriterHarness.send(module, IMAGE[:1000], env | {"last": False})
    WriterHarness.send(module, IMAGE[2000:], env | {"obj_off": 2000, "lost": [[1000, 2000]]})


def test_a_partial_image_is_never_named_after_a_hash(module: Harness) -> None:
    send_partial(module, 1, ts=7)
    send_partial(module, 2, ts=8, syscall="finit_module", dev=1, inode=2)
    partial, from_file = module.records()
    assert partial["path"] == "host/module.pid-100.ts-7.partial"
    assert from_file["path"] == "host/module.dev-1.inode-2.pid-100.ts-8.partial"
    assert (partial["complete"], partial["missing"]) == (False, [[1000, 2000]])
    # neither is a duplicate of the other: what is missing is not known to be alike
    assert module.writer.counters["duplicates"] == 0


def test_a_partial_image_does_not_stand_for_the_whole_one(module: Harness) -> None:
    send_partial(module, 1)
    module.send(IMAGE, module_env(obj_id=2))
    module.restart()
    module.send(IMAGE, module_env(obj_id=3, epoch=8))
    partial, whole, again = module.records()
    assert (partial["complete"], whole["complete"]) == (False, True)
    assert again["duplicate_of"] == whole["path"]


MAPPING = {
    "start": 0x7F00_0000_0000, "end": 0x7F00_0000_2000, "pgoff": 0, "shared": False,
    "written": False, "dev": 2049, "inode": 12, "ctime": 5, "mtime": 6, "size": 8000,
    "path": b"/tmp/m\xff.ko",
}  # fmt: skip


def test_the_index_says_where_a_mapped_image_came_from(module: Harness) -> None:
    module.send(IMAGE, module_env(obj_id=1, addr=MAPPING["start"], mapping=MAPPING,
                                  from_file=[[0, 2048]]))  # fmt: skip
    (rec,) = module.records()
    assert rec["addr"] == MAPPING["start"] and rec["from_file"] == [[0, 2048]]
    assert rec["mapping"] == {
        **MAPPING,
        "path": "/tmp/m\\xff.ko",
        "path_hex": "2f746d702f6dff2e6b6f",
    }


def test_why_the_file_could_not_give_the_missing_bytes_is_indexed(module: Harness) -> None:
    send_partial(module, 1, mapping=MAPPING, fill_error="the file changed since the syscall")
    (rec,) = module.records()
    assert (rec["complete"], rec["fill_error"]) == (False, "the file changed since the syscall")


@pytest.mark.parametrize(
    ("key", "value"),
    [("mapping", {**MAPPING, "start": -1}), ("mapping", [1]), ("from_file", [[5, 1]]),
     ("fill_error", 3), ("addr", "0x10"), ("load_flags", -1)],
)  # fmt: skip
def test_a_malformed_optional_key_is_left_out_and_counted(module: Harness, key, value) -> None:
    module.send(IMAGE, module_env(obj_id=1, **{key: value}))
    (rec,) = module.records()
    assert key not in rec and rec["complete"] is True
    assert module.writer.counters["bad_fields"] == 1


# -- bpf --------------------------------------------------------------------------------------


def test_a_partial_bpf_program_is_never_named_after_a_hash(bpf: Harness) -> None:
    WriterHarness.send(bpf, INSNS[:8], bpf_env(ts=7, obj_len=len(INSNS), lost=[[8, 16]]))
    (rec,) = bpf.records()
    assert rec["path"] == "host/bpf.name-probe.pid-100.ts-7.partial"
    assert rec["complete"] is False


def test_bpf_program_name_format(bpf: Harness) -> None:
    bpf.send(INSNS, bpf_env())
    (rec,) = bpf.records()
    sha = hashlib.sha256(INSNS).hexdigest()
    assert rec["path"] == f"host/bpf.name-probe.pid-100.{sha}"
    assert (bpf.root / rec["path"]).read_bytes() == INSNS
    assert (rec["prog_name"], rec["prog_type"], rec["insn_cnt"], rec["ret"]) == ("probe", 1, 2, 5)


def test_an_unnamed_program(bpf: Harness) -> None:
    bpf.send(INSNS, bpf_env(prog_name=b""))
    (rec,) = bpf.records()
    assert rec["path"].startswith("host/bpf.name-.pid-100.")


def test_a_bpf_program_is_stored_once_across_restarts_and_every_load_indexed(
    bpf: Harness,
) -> None:
    bpf.send(INSNS, bpf_env(obj_id=1))
    bpf.send(INSNS, bpf_env(obj_id=2, prog_name=b"renamed", pid=7))
    bpf.restart()
    bpf.send(INSNS, bpf_env(obj_id=3))
    first, renamed, again = bpf.records()
    assert bpf.listing() == [first["path"].removeprefix("host/")]
    assert bpf.writer.counters["duplicates"] == 1
    assert (renamed["prog_name"], renamed["pid"], renamed["path"]) == ("renamed", 7, None)
    assert renamed["duplicate_of"] == again["duplicate_of"] == first["path"]


@pytest.mark.parametrize(
    "prog_name", [b"/", b"..", b"../../x", b"\xff\xfe", b"a\nb", b"N" * 255, b".x"]
)
def test_hostile_program_names_stay_one_component(bpf: Harness, prog_name: bytes) -> None:
    bpf.send(INSNS, bpf_env(prog_name=prog_name))
    (rec,) = bpf.records()
    subdir, name = rec["path"].split("/")
    assert subdir == "host" and os.listdir(bpf.root / "host") == [name]
    assert name.startswith("bpf.name-") and len(name) <= NAME_MAX
    assert name.isascii() and name.isprintable()
    assert (bpf.root / rec["path"]).read_bytes() == INSNS
    if b"\xff" in prog_name:
        assert bytes.fromhex(rec["prog_name_hex"]) == prog_name


# -- mem --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prot", "text"), [(0, "---"), (1, "r--"), (3, "rw-"), (5, "r-x"), (7, "rwx"), (8, "---")]
)
def test_prot_string(prot: int, text: str) -> None:
    assert prot_string(prot) == text


def test_memory_region_name_and_protections(mem: Harness) -> None:
    region = b"\x90" * 4096
    mem.send(region, mem_env(pid=42, ts=1_700_000_000_123_456_789, addr=0x7F00DEAD0000))
    (rec,) = mem.records()
    assert rec["path"] == "host/mem.pid-42.ts-1700000000123456789"
    assert (mem.root / rec["path"]).read_bytes() == region
    assert (rec["address"], rec["length"], rec["syscall"]) == (0x7F00DEAD0000, 4096, "mprotect")
    assert (rec["prot_before"], rec["prot_after"]) == (3, 5)
    assert (rec["prot_before_rwx"], rec["prot_after_rwx"]) == ("rw-", "r-x")
    assert (rec["alert"], rec["dump"], rec["occurrences"]) == (
        "Protection changed from W to E!", "sent", 1,
    )  # fmt: skip


# -- registration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls", "topic"),
    [
        ("exec", "ExecWriter", bus.TOPIC_EXEC),
        ("mem", "MemoryWriter", bus.TOPIC_MEM),
        ("module", "ModuleWriter", bus.TOPIC_MODULE),
        ("bpf", "BpfWriter", bus.TOPIC_BPF),
    ],
)
def test_object_kinds_are_registered(tmp_path: Path, kind: str, cls: str, topic: bytes) -> None:
    with OutputTree(tmp_path) as tree:
        writer = WRITER_KINDS[kind](tree.out, tree.index)
        assert type(writer).__name__ == cls
        assert writer.topics == (topic,) and writer.name == kind
        writer.close()
