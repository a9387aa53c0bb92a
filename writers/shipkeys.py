"""What the shipper stores, decided from index lines alone: object keys and object metadata.

Pure: an index record in, strings out. The shipper (writers/shipper.py) does the I/O.

Keys are ``<prefix>/<host>/<path in out/>`` for artifacts and
``<prefix>/<host>/index/<index id>.<start>-<end>.jsonl`` for the index lines, which go up as
chunks of whole lines named by their byte range in ``index.jsonl``: a chunk shipped again after a
crash has the same key, so it replaces itself and never duplicates a line.

Metadata are HTTP headers (``x-amz-meta-*``): ASCII only, and small. Swift's s3api keeps at most
90 items of at most 256 bytes each (swift.common.constraints ``MAX_META_VALUE_LENGTH``, 4096 bytes
in all), so values are JSON with every non-ASCII character escaped, cut to ``MAX_META_VALUE``
bytes with ``missing-truncated: true`` when the list of missing ranges does not fit; the whole
record is always in the shipped index.
"""

from __future__ import annotations

import json
from typing import Any

#: Longest metadata value sent (Swift's MAX_META_VALUE_LENGTH is 256).
MAX_META_VALUE = 256
#: Longest S3 object key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Record fields copied into metadata, as ``x-amz-meta-<name>``.
META_FIELDS = ("kind", "pid", "comm", "container_id", "complete")


class BadRecord(ValueError):
    """An index line whose artifact cannot be named in the store (a path that is not a plain
    relative path under out/, or a key too long); counted, never shipped."""


def clean_prefix(prefix: str) -> str:
    """``--prefix`` without leading or trailing slashes ("" for none)."""
    return prefix.strip("/")


def _components(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts):
        raise BadRecord(f"path {path!r} is not a plain relative path under out/")
    return parts


def artifact_path(record: dict[str, Any]) -> str | None:
    """The artifact a record describes (relative to out/), or None for a line that stores no
    bytes: gap and budget records, errors (``path: null``), and duplicates (``duplicate_of``)."""
    path = record.get("path")
    if path is None or "duplicate_of" in record:
        return None
    if not isinstance(path, str):
        raise BadRecord(f"path {path!r} is not a string")
    _components(path)
    return path


def _join(prefix: str, host: str, rest: str) -> str:
    key = "/".join(part for part in (clean_prefix(prefix), host, rest) if part)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRecord(f"key {key!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise BadRecord(f"key of {size} bytes is longer than {MAX_KEY_BYTES}")
    return key


def object_key(prefix: str, host: str, path: str) -> str:
    """``<prefix>/<host>/<path>``; BadRecord for a path or host that cannot be a key."""
    _components(host)
    _components(path)
    return _join(prefix, host, path)


def index_chunk_key(prefix: str, host: str, index_id: str, start: int, end: int) -> str:
    """The key of the index lines in bytes ``[start, end)`` of the index ``index_id``; zero-padded
    so that a listing sorts them in file order."""
    _components(host)
    return _join(prefix, host, f"index/{index_id}.{start:015d}-{end:015d}.jsonl")


def _value(value: Any) -> str:
    """A metadata value: strings as they are when printable ASCII, anything else as JSON with
    every non-ASCII character escaped."""
    if isinstance(value, str) and value.isascii() and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def metadata(record: dict[str, Any], sha256: str) -> dict[str, str]:
    """The object's metadata: its ``sha256`` (of the bytes shipped, equal to the record's), the
    record's kind, pid, comm, container and complete flag, and its missing ranges (with their
    count and total, and ``missing-truncated`` when the list was cut)."""
    meta = {"sha256": sha256}
    for field in META_FIELDS:
        if field in record:
            name = "container" if field == "container_id" else field
            meta[name] = _value(record[field])[:MAX_META_VALUE]
    missing = record.get("missing") or []
    if missing:
        ranges = [r for r in missing if isinstance(r, list) and len(r) == 2]
        meta["missing-count"] = str(len(ranges))
        meta["missing-bytes"] = str(sum(int(end) - int(start) for start, end in ranges))
        text = _value(ranges)
        if len(text) > MAX_META_VALUE:
            cut = text[: MAX_META_VALUE - 1]
            text = cut[: cut.rfind("]") + 1] + "]" if "]" in cut[1:] else "[]"
            meta["missing-truncated"] = "true"
        meta["missing"] = text
    return meta
