"""Names of whole-object artifacts: one safe component, bounded, whatever the process chose."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracecap.text import text_fields
from writers.naming import (
    COLLISION_ROOM,
    NAME_MAX,
    PARTIAL_SUFFIX,
    bpf_artifact_name,
    bpf_partial_name,
    exec_artifact_name,
    exec_basename,
    mem_artifact_name,
    module_artifact_name,
    module_partial_name,
    partial_name,
)

SHA = hashlib.sha256(b"image").hexdigest()
BIG = 2**64 - 1
HOSTILE = [
    b"/",
    b"..",
    b"/a/..",
    b"/usr/bin/" + b"A" * 255,
    b"/tmp/\xff\xfe\x80",
    b"/tmp/evil\nname",
    b"/tmp/.hidden",
    b"/tmp/%2F",
    b"",
]


def _assert_one_component(name: str) -> None:
    assert name not in ("", ".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\0" not in name
    assert name.isascii() and name.isprintable()
    # Room is left for the ".<n>" the writer adds when a name is taken.
    assert len(name) <= NAME_MAX - COLLISION_ROOM


@pytest.mark.parametrize(
    ("path", "memfd", "expected"),
    [
        (b"/usr/bin/ls", False, b"ls"),
        (b"ls", False, b"ls"),
        (b"/usr/bin/", False, b""),
        (b"memfd:payload (deleted)", True, b"memfd_payload"),
        (b"/memfd:payload (deleted)", True, b"memfd_payload"),  # as d_path prints it
        (b"memfd:payload", True, b"memfd_payload"),
        (b"memfd:a/b (deleted)", True, b"memfd_a/b"),  # memfd names may hold '/'
        (b"/dev/fd/3", True, b"memfd_3"),  # fexecve: the flag still shows
        (b"/tmp/x (deleted)", False, b"x (deleted)"),  # only memfds lose the suffix
    ],
)
def test_exec_basename_rule(path: bytes, memfd: bool, expected: bytes) -> None:
    assert exec_basename(path, memfd) == expected


def test_exec_artifact_names() -> None:
    assert exec_artifact_name(17, b"/usr/bin/ls", False) == "exec.17.ls"
    assert exec_artifact_name(17, b"memfd:payload (deleted)", True) == "exec.17.memfd_payload"
    assert exec_artifact_name(17, b"memfd:a/b (deleted)", True) == "exec.17.memfd_a%2Fb"
    assert exec_artifact_name(17, b"/", False) == "exec.17._"


@pytest.mark.parametrize("path", HOSTILE)
@pytest.mark.parametrize("memfd", [False, True])
def test_hostile_exec_paths_give_one_bounded_component(path: bytes, memfd: bool) -> None:
    name = exec_artifact_name(BIG, path, memfd)
    _assert_one_component(name)
    assert name.startswith(f"exec.{BIG}.")


@given(st.binary(max_size=600), st.booleans(), st.integers(min_value=0, max_value=BIG))
def test_any_exec_path_gives_one_bounded_component(path: bytes, memfd: bool, ts: int) -> None:
    _assert_one_component(exec_artifact_name(ts, path, memfd))


def test_long_basenames_sharing_a_prefix_stay_distinct() -> None:
    a = exec_artifact_name(1, b"/" + b"A" * 255, False)
    b = exec_artifact_name(1, b"/" + b"A" * 254 + b"B", False)
    assert a != b


def test_mem_name() -> None:
    assert mem_artifact_name(42, 1_700_000_000_123_456_789) == "mem.pid-42.ts-1700000000123456789"


def test_module_names() -> None:
    assert module_artifact_name(2049, 12, 42, SHA) == f"module.dev-2049.inode-12.pid-42.{SHA}"
    assert module_artifact_name(0, 0, 42, SHA) == f"module.pid-42.{SHA}"  # init_module
    assert module_artifact_name(0, 5, 42, SHA).startswith("module.dev-0.inode-5.")


def test_a_partial_module_is_named_without_a_hash() -> None:
    assert module_partial_name(2049, 12, 42, 7) == "module.dev-2049.inode-12.pid-42.ts-7.partial"
    assert module_partial_name(0, 0, 42, 7) == "module.pid-42.ts-7.partial"  # init_module
    with pytest.raises(ValueError):
        module_partial_name(0, 0, 42, -1)


def test_a_partial_bpf_program_is_named_without_a_hash() -> None:
    assert bpf_partial_name(b"xdp_prog", 9, 7) == "bpf.name-xdp_prog.pid-9.ts-7.partial"
    assert bpf_partial_name(b"", 9, 7) == "bpf.name-.pid-9.ts-7.partial"


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=BIG),
       st.integers(min_value=0, max_value=BIG))  # fmt: skip
def test_any_partial_name_gives_one_bounded_component(prog_name: bytes, pid: int, ts: int):
    for name in (bpf_partial_name(prog_name, pid, ts), module_partial_name(BIG, BIG, pid, ts)):
        _assert_one_component(name)
        assert name.endswith(PARTIAL_SUFFIX)


def test_bpf_names() -> None:
    assert bpf_artifact_name(b"xdp_prog", 9, SHA) == f"bpf.name-xdp_prog.pid-9.{SHA}"
    # An unnamed program keeps Tracee's form, distinct from a program named "_".
    assert bpf_artifact_name(b"", 9, SHA) == f"bpf.name-.pid-9.{SHA}"
    assert bpf_artifact_name(b"_", 9, SHA) == f"bpf.name-_.pid-9.{SHA}"


@pytest.mark.parametrize("prog_name", [*HOSTILE, b"\xff" * 255, b"a.pid-1"])
def test_hostile_bpf_names_give_one_bounded_component(prog_name: bytes) -> None:
    name = bpf_artifact_name(prog_name, BIG, SHA)
    _assert_one_component(name)
    assert name.startswith("bpf.name-") and name.endswith(f".pid-{BIG}.{SHA}")


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=BIG))
def test_any_bpf_name_gives_one_bounded_component(prog_name: bytes, pid: int) -> None:
    _assert_one_component(bpf_artifact_name(prog_name, pid, SHA))


@pytest.mark.parametrize("bad", ["", "0" * 63, SHA.upper(), SHA + "\n", "../" + SHA[3:]])
def test_a_bad_sha256_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        module_artifact_name(1, 2, 3, bad)
    with pytest.raises(ValueError):
        bpf_artifact_name(b"p", 3, bad)


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_numbers_must_be_non_negative_ints(value: object) -> None:
    with pytest.raises(ValueError):
        mem_artifact_name(value, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        exec_artifact_name(value, b"/x", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        module_artifact_name(0, 0, value, SHA)  # type: ignore[arg-type]


def test_partial_name_is_hidden_and_unique_per_object() -> None:
    assert partial_name(7, 3) == ".partial.7.3"
    assert partial_name(7, 3) != partial_name(73, 0)
    with pytest.raises(ValueError):
        partial_name("7/..", 3)  # type: ignore[arg-type]


def test_text_fields_add_hex_only_when_lossy() -> None:
    assert text_fields("comm", b"bash") == {"comm": "bash"}
    assert text_fields("comm", b"a\xff") == {"comm": "a\\xff", "comm_hex": "61ff"}
