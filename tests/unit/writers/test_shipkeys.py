"""Keys and metadata of shipped objects, from index records alone."""

from __future__ import annotations

import json

import pytest

from writers.shipkeys import (
    MAX_META_VALUE,
    BadRecord,
    artifact_path,
    index_chunk_key,
    metadata,
    object_key,
)


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ("", "box1/host/write.dev-1.inode-2"),
        ("fleet", "fleet/box1/host/write.dev-1.inode-2"),
        ("/fleet/a/", "fleet/a/box1/host/write.dev-1.inode-2"),
    ],
)
def test_object_key_is_prefix_host_path(prefix: str, key: str) -> None:
    assert object_key(prefix, "box1", "host/write.dev-1.inode-2") == key


@pytest.mark.parametrize("path", ["", "/etc/passwd", "host/../x", "host//x", "./x", "host/.", "x/"])
def test_a_path_that_is_not_plain_is_refused(path: str) -> None:
    with pytest.raises(BadRecord):
        object_key("p", "box1", path)


def test_a_key_over_1024_bytes_or_not_utf8_is_refused() -> None:
    with pytest.raises(BadRecord):
        object_key("p", "box1", "host/" + "a" * 1100)
    with pytest.raises(BadRecord):
        object_key("p", "box1", "host/\udcff")


def test_artifact_path_skips_lines_without_bytes() -> None:
    assert artifact_path({"kind": "gap", "topic": "file.write."}) is None
    assert artifact_path({"kind": "exec", "path": None, "error": "gone"}) is None
    assert artifact_path({"kind": "module", "path": None, "duplicate_of": "host/m"}) is None
    assert artifact_path({"kind": "pcap", "path": "pcap/single.pcap"}) == "pcap/single.pcap"
    with pytest.raises(BadRecord):
        artifact_path({"kind": "write", "path": 7})


def test_index_chunks_sort_in_file_order_and_name_their_bytes() -> None:
    a = index_chunk_key("p", "box1", "123", 0, 900)
    b = index_chunk_key("p", "box1", "123", 900, 10_000)
    assert a == "p/box1/index/123.000000000000000-000000000000900.jsonl"
    assert a < b


def test_metadata_carries_the_record_facts_in_ascii() -> None:
    record = {
        "kind": "write",
        "pid": 42,
        "comm": "caf\u00e9\nx",
        "container_id": "host",
        "complete": False,
        "missing": [[0, 10], [20, 25]],
        "sha256": "ignored: the caller passes the hash of what it sent",
    }
    meta = metadata(record, "ab" * 32)
    assert meta == {
        "sha256": "ab" * 32,
        "kind": "write",
        "pid": "42",
        "comm": '"caf\\u00e9\\nx"',
        "container": "host",
        "complete": "false",
        "missing": "[[0,10],[20,25]]",
        "missing-count": "2",
        "missing-bytes": "15",
    }
    assert all(v.isascii() and v.isprintable() for v in meta.values())


def test_a_long_missing_list_is_cut_to_whole_ranges_and_says_so() -> None:
    ranges = [[i * 100, i * 100 + 7] for i in range(200)]
    meta = metadata({"kind": "read", "complete": False, "missing": ranges}, "0" * 64)
    assert len(meta["missing"]) <= MAX_META_VALUE
    kept = json.loads(meta["missing"])
    assert kept == ranges[: len(kept)] and 0 < len(kept) < 200
    assert meta["missing-truncated"] == "true"
    assert meta["missing-count"] == "200" and meta["missing-bytes"] == "1400"


def test_a_complete_record_has_no_missing_metadata() -> None:
    meta = metadata({"kind": "exec", "complete": True, "missing": []}, "0" * 64)
    assert "missing" not in meta and meta["complete"] == "true"
