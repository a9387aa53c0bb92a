"""Names built from hostile process data stay single, bounded, ASCII path components."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracecap.text import is_utf8, safe_component, text_field
from writers.naming import container_dir, file_artifact_name


def _assert_safe(name: str, max_len: int) -> None:
    assert name
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\0" not in name
    assert name.isascii() and name.isprintable()
    assert len(name) <= max_len + 9


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=246))
def test_safe_component_is_one_bounded_component(raw: bytes, max_len: int) -> None:
    name = safe_component(raw, max_len)
    _assert_safe(name, max_len)
    assert safe_component(raw, max_len) == name


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_safe_component_is_injective(a: bytes, b: bytes) -> None:
    if a != b and a and b:
        assert safe_component(a) != safe_component(b)


@given(st.binary(min_size=1, max_size=40))
def test_distinct_long_inputs_sharing_a_prefix_get_distinct_names(suffix: bytes) -> None:
    prefix = b"A" * 200
    other = suffix + b"x"
    assert safe_component(prefix + suffix) != safe_component(prefix + other)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"bash", "bash"),
        (b"kworker/0:1", "kworker%2F0%3A1"),
        (b".", "%2E"),
        (b"..", "%2E."),
        (b"../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        (b".hidden", "%2Ehidden"),
        (b"a.b-c_d+e=f,g@h", "a.b-c_d+e=f,g@h"),
        (b"line\nbreak", "line%0Abreak"),
        (b"\"quoted'", "%22quoted%27"),
        (b"caf\xe9", "caf%E9"),
        (b"100%", "100%25"),
        (b"a~b", "a%7Eb"),
        (b"", "_"),
    ],
)
def test_safe_component_examples(raw: bytes, expected: str) -> None:
    assert safe_component(raw) == expected


def test_a_255_byte_basename_is_cut_with_a_hash() -> None:
    raw = b"x" * 255
    name = safe_component(raw)
    assert len(name) == 96 + 9
    assert name.startswith("x" * 96 + "~")


def test_cut_never_splits_an_escape() -> None:
    for pad in range(4):
        name = safe_component(b"a" * pad + b"/" * 100, max_len=10)
        head = name.split("~")[0]
        assert len(head) <= 10
        assert re.fullmatch(r"a*(%2F)*", head)


def test_max_len_must_be_positive() -> None:
    with pytest.raises(ValueError):
        safe_component(b"x", 0)


@pytest.mark.parametrize("cid", ["", "host"])
def test_container_dir_host(cid: str) -> None:
    assert container_dir(cid) == "host"


def test_container_dir_accepts_hex_ids() -> None:
    assert container_dir("0123456789ab") == "0123456789ab"
    assert container_dir("f" * 64) == "f" * 64


@pytest.mark.parametrize(
    "cid", ["0123456789a", "f" * 65, "../../etc", "0123456789ab\n", "0123456789AB", "HOST"]
)
def test_container_dir_rejects_everything_else(cid: str) -> None:
    with pytest.raises(ValueError):
        container_dir(cid)


def test_file_artifact_name() -> None:
    assert file_artifact_name("write", 8388609, 42, None) == "write.dev-8388609.inode-42"
    assert file_artifact_name("read", 1, 2, None) == "read.dev-1.inode-2"
    assert file_artifact_name("write", 5, 6, 77) == "write.dev-5.inode-6.pid-77"


@pytest.mark.parametrize(
    ("direction", "dev", "inode", "pid"),
    [("exec", 1, 2, None), ("write", -1, 2, None), ("write", 1, True, None), ("read", 1, 2, -3)],
)
def test_file_artifact_name_rejects_bad_fields(
    direction: str, dev: int, inode: int, pid: int | None
) -> None:
    with pytest.raises(ValueError):
        file_artifact_name(direction, dev, inode, pid)


@given(st.binary(max_size=200))
def test_text_field_keeps_json_on_one_line(raw: bytes) -> None:
    text = text_field(raw)
    line = json.dumps({"comm": text}, ensure_ascii=True)
    assert "\n" not in line and line.isascii()
    assert json.loads(line)["comm"] == text
    if is_utf8(raw):
        assert text.encode() == raw


def test_text_field_shows_invalid_bytes() -> None:
    assert text_field(b"caf\xe9\n") == "caf\\xe9\n"
    assert not is_utf8(b"\xff")
