"""The memory writer: regions an unpacker made executable, as ``<cid>/mem.pid-<P>.ts-<ts>``.

Every event is its own artifact (no dedup): the same address made executable twice usually
holds a different stage of the unpacker each time.
"""

from __future__ import annotations

from typing import Any

from tracecap import bus
from tracecap.text import prot_string
from writers.naming import mem_artifact_name
from writers.objectartifact import DedupKey, Meta
from writers.objects import ObjectWriter

MAX_SYSCALL_CHARS = 64


class MemoryWriter(ObjectWriter):
    """Memory regions; see the module docstring."""

    name = kind = "mem"
    topic = bus.TOPIC_MEM
    deduplicates = False

    def final_name(self, meta: Meta, sha256: str) -> str:
        return mem_artifact_name(meta["pid"], meta["ts"])

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        return None

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        return None

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        return {
            "syscall": meta["syscall"][:MAX_SYSCALL_CHARS],
            "address": meta["addr"],
            "length": meta["len"],
            "prot_before": meta["prot_before"],
            "prot_after": meta["prot_after"],
            "prot_before_rwx": prot_string(meta["prot_before"]),
            "prot_after_rwx": prot_string(meta["prot_after"]),
        }
