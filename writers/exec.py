"""The exec writer: every binary a process executed, once per (container, dev, inode, ctime).

The collector reads the binary (``/proc/PID/exe``, memfds included) and streams it on ``exec.``;
this writer stores it as ``<cid>/exec.<ts>.<basename>``. ``ctime`` is part of the key because
rewriting a binary in place keeps its inode: a dropper that patches ``/usr/bin/sshd`` must be
captured again, while a shell running ``ls`` a thousand times must not.
"""

from __future__ import annotations

from typing import Any

from tracecap import bus
from tracecap.text import is_utf8, text_field, text_fields
from writers.naming import exec_artifact_name
from writers.objectartifact import DedupKey, Meta
from writers.objects import ObjectWriter

#: argv entries kept in the index; the envelope bound (64 KiB) keeps the list short anyway.
MAX_ARGS = 4096


def argv_fields(argv: list[Any]) -> dict[str, Any]:
    """``argv`` as text for the index, with ``argv_hex`` (every entry) when any entry is not
    UTF-8. Entries that are not bytes (a collector bug) become ``""`` and set ``argv_malformed``
    rather than failing the record."""
    raws: list[bytes] = []
    malformed = False
    for item in argv[:MAX_ARGS]:
        if isinstance(item, bytes):
            raws.append(item)
        elif isinstance(item, str):
            raws.append(item.encode("utf-8", "surrogateescape"))
        else:
            raws.append(b"")
            malformed = True
    fields: dict[str, Any] = {"argv": [text_field(raw) for raw in raws]}
    if not all(is_utf8(raw) for raw in raws):
        fields["argv_hex"] = [raw.hex() for raw in raws]
    if malformed:
        fields["argv_malformed"] = True
    if len(argv) > MAX_ARGS:
        fields["argv_truncated"] = True
    return fields


#: Optional keys of an exec message (collector/exec_files.py), as index fields: the file's role
#: ("program", or "interpreter" and "script" for a #! execution), how it was executed
#: (``cmdpath``, ``interp``), the other file of a #! execution, whether it was deleted, and
#: where its bytes came from ("page_cache": read by the kernel at the exec; "file").
_RELATION_TEXT = ("cmdpath", "interp", "interpreter_path", "script_path")
_RELATION_PLAIN = ("role", "deleted", "source")


def relation_fields(meta: Meta) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in _RELATION_PLAIN:
        if isinstance(meta.get(key), str | bool):
            fields[key] = meta[key]
    for key in _RELATION_TEXT:
        if isinstance(meta.get(key), bytes):
            fields |= text_fields(key, meta[key])
    return fields


def _int(record: dict[str, Any], key: str) -> int:
    value = record[key]
    if type(value) is not int:
        raise TypeError(f"{key} is not an int")
    return value


class ExecWriter(ObjectWriter):
    """Executed binaries; see the module docstring for naming and dedup."""

    name = kind = "exec"
    topic = bus.TOPIC_EXEC

    def final_name(self, meta: Meta, sha256: str) -> str:
        return exec_artifact_name(meta["ts"], meta["path"], meta["memfd"])

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey:
        return (meta["container_id"], meta["dev"], meta["inode"], meta["ctime"])

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey:
        container_id = record["container_id"]
        if not isinstance(container_id, str):
            raise TypeError("container_id is not a string")
        return (
            container_id,
            _int(record, "dev"),
            _int(record, "inode"),
            _int(record, "ctime"),
        )

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        fields = {
            **text_fields("source_path", meta["path"]),
            **argv_fields(meta["argv"]),
            "dev": meta["dev"],
            "inode": meta["inode"],
            "ctime": meta["ctime"],
            "mode": meta["mode"],
            "memfd": meta["memfd"],
        }
        return fields | relation_fields(meta)
