"""The module writer: kernel module images, once per sha256, and every load attempt indexed.

``<cid>/module.dev-<D>.inode-<I>.pid-<P>.<sha256>`` for finit_module (loaded from a file),
``<cid>/module.pid-<P>.<sha256>`` for init_module (from memory). An image not captured whole
is never named after the hash of what arrived: ``...pid-<P>.ts-<ts>.partial``. Loads are
captured even when they fail (``ret`` < 0; every load does on a kernel without module support):
the attempt is the evidence. The same image loaded again, by anyone, anywhere, is stored once,
and each later attempt gets an index record of its own (``path`` null, ``duplicate_of`` the
artifact that holds its bytes): who loaded what, with which syscall and parameters, and what
it returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracecap import bus
from tracecap.text import text_fields
from writers.loads import LoadWriter
from writers.naming import module_artifact_name, module_partial_name
from writers.objectartifact import (
    DedupKey,
    Meta,
    content_key,
    content_key_from_record,
    error_text,
)

MAX_SYSCALL_CHARS = 64
#: The ``mapping`` envelope key's numbers and flags (its ``path`` is bytes).
_MAPPING_INTS = ("start", "end", "pgoff", "dev", "inode", "ctime", "mtime", "size")
_MAPPING_BOOLS = ("shared", "written")
_SOURCES = frozenset(bus.MODULE_SOURCES.values())


def _uint(value: object) -> bool:
    return type(value) is int and value >= 0


def mapping_fields(value: object) -> dict[str, Any] | None:
    """The index's ``mapping`` from the envelope's (the file mapping an init_module image lay
    in), or None when it is not one."""
    if (
        not isinstance(value, dict)
        or not all(_uint(value.get(k)) for k in _MAPPING_INTS)
        or not all(type(value.get(k)) is bool for k in _MAPPING_BOOLS)
        or not isinstance(value.get("path"), bytes)
    ):
        return None
    return {
        **{k: value[k] for k in _MAPPING_INTS + _MAPPING_BOOLS},
        **text_fields("path", value["path"]),
    }


def _ranges(value: object) -> list[list[int]] | None:
    try:
        return [list(r) for r in bus.parse_lost(value)]
    except ValueError:
        return None


#: The module envelope's optional keys that go to the index, each with what reads it (None:
#: not what the bus contract says).
_OPTIONAL: dict[str, Callable[[object], Any]] = {
    "fd": lambda v: v if type(v) is int else None,
    "load_flags": lambda v: v if _uint(v) else None,
    "addr": lambda v: v if _uint(v) else None,
    "mapping": mapping_fields,
    "from_file": _ranges,
    "fill_error": lambda v: error_text(v) if isinstance(v, str) else None,
    "source": lambda v: v if v in _SOURCES else None,
}


class ModuleWriter(LoadWriter):
    """Kernel module images; see the module docstring."""

    name = kind = "module"
    topic = bus.TOPIC_MODULE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters["bad_fields"] = 0

    def final_name(self, meta: Meta, sha256: str) -> str:
        return module_artifact_name(meta["dev"], meta["inode"], meta["pid"], sha256)

    def incomplete_name(self, meta: Meta) -> str:
        return module_partial_name(meta["dev"], meta["inode"], meta["pid"], meta["ts"])

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        return content_key(sha256)

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        return content_key_from_record(record)

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        """The attempt (syscall, parameters, return value, fd and flags or address), the file it
        loaded or the file mapping its image lay in, and which bytes the collector read from
        that file (``from_file``) or why it could not (``fill_error``). An optional key that is not
        what the bus contract says is left out and counted (``bad_fields``)."""
        fields: dict[str, Any] = {
            "syscall": meta["syscall"][:MAX_SYSCALL_CHARS],
            "ret": meta["ret"],
            **text_fields("params", meta["params"]),
            "dev": meta["dev"],
            "inode": meta["inode"],
            **text_fields("source_path", meta["path"]),
        }
        for key, read in _OPTIONAL.items():
            if key in meta:
                value = read(meta[key])
                if value is None:
                    self.counters["bad_fields"] += 1
                else:
                    fields[key] = value
        return fields
