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


def test_a_module_image_is_captured_once(module: Harness) -> None:
    module.send(IMAGE, module_env(obj_id=1))
    module.send(IMAGE, module_env(obj_id=2, pid=200, syscall="finit_module", dev=1, inode=2))
    module.send(IMAGE + b"x", module_env(obj_id=3))
    assert len(module.records()) == 2
    assert module.writer.counters["duplicates"] == 1


def test_a_module_image_is_captured_once_across_restarts(module: Harness) -> None:
    module.send(IMAGE, module_env(obj_id=1))
    module.restart()
    module.send(IMAGE, module_env(obj_id=1, epoch=8))
    assert len(module.records()) == 1
    assert module.writer.counters["duplicates"] == 1
    assert os.listdir(module.root / "host") == [
        f"module.pid-100.{hashlib.sha256(IMAGE).hexdigest()}"
    ]


# -- bpf --------------------------------------------------------------------------------------


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


def test_a_bpf_program_is_captured_once_across_restarts(bpf: Harness) -> None:
    bpf.send(INSNS, bpf_env(obj_id=1))
    bpf.send(INSNS, bpf_env(obj_id=2, prog_name=b"renamed", pid=7))
    bpf.restart()
    bpf.send(INSNS, bpf_env(obj_id=3))
    assert len(bpf.records()) == 1 and bpf.writer.counters["duplicates"] == 1


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
