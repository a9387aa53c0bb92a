"""The object writer's bookkeeping, without a file system: assembly, the index record, dedup
keys read back from index lines, and the names an artifact may take."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.support.envelopes import mem_env
from writers.index import parse_line
from writers.objectartifact import (
    MAX_COLLISIONS,
    MAX_ERROR_CHARS,
    BadIndexLine,
    ObjectAssembly,
    content_key,
    content_key_from_record,
    dedup_entry_of_line,
    error_text,
    final_names,
    read_lines,
)

SHA = "ab" * 32

# -- assembly --------------------------------------------------------------------------------


def test_assembly_is_done_only_when_last_seen_and_every_byte_accounted() -> None:
    asm = ObjectAssembly(mem_env(obj_len=10, last=False), now=0.0)
    asm.wrote(0, 4)
    assert not asm.done()
    asm.observe(mem_env(obj_len=10, last=True), now=1.0)
    assert not asm.done()  # bytes 4..10 may still be on their way
    asm.gone(4, 6)  # reported lost
    asm.wrote(6, 10)
    assert asm.done()
    assert asm.missing() == [(4, 6)]


def test_assembly_clips_at_obj_len_and_keeps_the_earliest_ts() -> None:
    asm = ObjectAssembly(mem_env(obj_len=10, ts=50), now=0.0)
    assert asm.clip(8, 5, 10) == 2
    assert asm.clip(12, 5, 10) == 0
    assert not asm.observe(mem_env(obj_len=10, ts=40), now=1.0)
    assert not asm.observe(mem_env(obj_len=10, ts=60), now=1.0)
    assert (asm.first_ts, asm.last_ts) == (40, 60)
    assert asm.naming_meta()["ts"] == 40


def test_assembly_size_is_the_largest_obj_len_in_any_order() -> None:
    asm = ObjectAssembly(mem_env(obj_len=10), now=0.0)
    assert asm.observe(mem_env(obj_len=30), now=0.0)
    assert not asm.observe(mem_env(obj_len=20), now=0.0)  # an earlier message, late
    assert asm.obj_len == 30


def test_read_lines_skips_overlong_lines_without_holding_them() -> None:
    stream = io.BytesIO(b"short\n" + b"x" * 100 + b"\nnext\nlast-no-newline")
    assert list(read_lines(stream, max_line=20)) == [
        b"short\n",
        None,
        b"next\n",
        b"last-no-newline",
    ]


@pytest.mark.parametrize(
    "line", [b"not json\n", b"[1, 2]\n", b'{"a": \n', b"\xff\n", b"[" * 100000]
)
def test_parse_line_refuses_what_is_not_a_record(line: bytes) -> None:
    assert parse_line(line) is None


# -- the index record ------------------------------------------------------------------------


def test_the_record_of_a_whole_object() -> None:
    asm = ObjectAssembly(mem_env(obj_id=9, obj_len=10, ts=50, comm=b"x\xff"), now=0.0)
    asm.observe(mem_env(obj_id=9, obj_len=10, ts=40), now=1.0)
    asm.wrote(0, 10)
    fields = {"syscall": "mprotect", "kind": "not-this", "pid": -1}
    rec = asm.record("mem", fields, "host/m", 10, SHA)
    assert rec["syscall"] == "mprotect"
    assert (rec["kind"], rec["pid"]) == ("mem", 100)  # the common fields win over the kind's
    assert (rec["path"], rec["size"], rec["sha256"]) == ("host/m", 10, SHA)
    assert rec["complete"] is True and rec["missing"] == []
    assert (rec["tid"], rec["ppid"], rec["uid"], rec["cgroup_id"]) == (101, 1, 1000, 5)
    assert rec["comm"] == "x\\xff" and rec["comm_hex"] == "78ff"
    assert (rec["ts"], rec["last_ts"]) == (40, 50)
    assert (rec["epoch"], rec["obj_id"], rec["obj_len"]) == (7, 9, 10)
    assert "error" not in rec


def test_the_record_of_a_partial_read_says_what_and_why() -> None:
    asm = ObjectAssembly(mem_env(obj_len=10, last=False), now=0.0)
    asm.wrote(0, 4)
    asm.observe(mem_env(obj_off=4, obj_len=10, lost=[[4, 10]], error="EIO"), now=1.0)
    asm.gone(4, 10)
    assert asm.done()
    rec = asm.record("mem", {}, "host/m", 10, SHA)
    assert rec["complete"] is False and rec["missing"] == [[4, 10]] and rec["error"] == "EIO"


@pytest.mark.parametrize(("obj_len", "missing"), [(10, [[0, 10]]), (0, [])])
def test_an_unreadable_object_is_missing_whole(obj_len: int, missing: list[list[int]]) -> None:
    asm = ObjectAssembly(mem_env(obj_len=obj_len), now=0.0)
    asm.wrote(0, obj_len)  # whatever arrived before the failure does not make an artifact
    asm.fail("gone")
    assert asm.done()
    rec = asm.record("mem", {}, None, 0, None)
    assert rec["complete"] is False and rec["missing"] == missing and rec["error"] == "gone"


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "unreadable"), ("", "unreadable"), ("EIO", "EIO"), (5, "5"),
     ("x" * (MAX_ERROR_CHARS + 5), "x" * MAX_ERROR_CHARS)],
)  # fmt: skip
def test_error_text_is_bounded_and_never_empty(value: object, text: str) -> None:
    assert error_text(value) == text


# -- naming and dedup ------------------------------------------------------------------------


def test_final_names_try_the_name_then_numbered_ones() -> None:
    names = list(final_names("mem.pid-1.ts-2"))
    assert names[:3] == ["mem.pid-1.ts-2", "mem.pid-1.ts-2.1", "mem.pid-1.ts-2.2"]
    assert len(names) == MAX_COLLISIONS + 1 and names[-1] == f"mem.pid-1.ts-2.{MAX_COLLISIONS}"


def test_content_keys() -> None:
    assert content_key(None) is None and content_key(SHA) == ("sha256", SHA)
    assert content_key_from_record({"sha256": SHA}) == ("sha256", SHA)
    for bad in (SHA.upper(), SHA[:-1], 5, None):
        assert content_key_from_record({"sha256": bad}) is None


def _line(**record: Any) -> bytes:
    return json.dumps({"kind": "module", "complete": True, "path": "host/m", **record}).encode()


@pytest.mark.parametrize(
    ("line", "entry"),
    [
        (_line(sha256=SHA) + b"\n", (("sha256", SHA), "host/m")),
        (b"\n", None),  # blank
        (_line(sha256=SHA, kind="exec"), None),  # another kind's
        (_line(sha256=SHA, complete=False), None),  # to be captured again
        (_line(sha256=SHA, path=None), None),  # a failure record: no artifact
        (_line(sha256=SHA, path=None, duplicate_of="host/m"), None),  # a later attempt's
    ],
)
def test_index_lines_give_a_dedup_key_and_artifact_or_none(line: bytes, entry: object) -> None:
    assert dedup_entry_of_line(line, "module", content_key_from_record) == entry


@pytest.mark.parametrize("line", [None, b"garbage\n", b"[1]\n", _line(sha256=5)])
def test_index_lines_that_should_give_a_key_and_cannot_are_bad(line: bytes | None) -> None:
    with pytest.raises(BadIndexLine):
        dedup_entry_of_line(line, "module", content_key_from_record)


def test_a_key_function_that_fails_makes_the_line_bad() -> None:
    def key_of(record: dict[str, Any]) -> tuple[Any, ...]:
        return (record["missing_field"],)

    with pytest.raises(BadIndexLine):
        dedup_entry_of_line(_line(), "module", key_of)
