"""The BPF writer: the instruction array of every distinct BPF program loaded, once per sha256.

Stored as ``<cid>/bpf.name-<name>.pid-<P>.<sha256>``: raw ``struct bpf_insn`` records, which
``bpf-objdump -D -b binary -m bpf`` disassembles as is. A program whose instructions did not all
arrive is ``...pid-<P>.ts-<ts>.partial``: the hash of what arrived names no program. Every load
gets an index record, a duplicate's with ``path`` null and ``duplicate_of`` the artifact holding
its bytes: loaders' feature probes (libbpf's ``r0 = 0; exit``) share their bytes with real
programs, and dedup must not hide which process loaded which program.
"""

from __future__ import annotations

from typing import Any

from tracecap import bus
from tracecap.text import text_fields
from writers.loads import LoadWriter
from writers.naming import bpf_artifact_name, bpf_partial_name
from writers.objectartifact import DedupKey, Meta, content_key, content_key_from_record


class BpfWriter(LoadWriter):
    """BPF programs; see the module docstring."""

    name = kind = "bpf"
    topic = bus.TOPIC_BPF

    def final_name(self, meta: Meta, sha256: str) -> str:
        return bpf_artifact_name(meta["prog_name"], meta["pid"], sha256)

    def incomplete_name(self, meta: Meta) -> str:
        return bpf_partial_name(meta["prog_name"], meta["pid"], meta["ts"])

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        return content_key(sha256)

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        return content_key_from_record(record)

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        return {
            **text_fields("prog_name", meta["prog_name"]),
            "prog_type": meta["prog_type"],
            "insn_cnt": meta["insn_cnt"],
            "ret": meta["ret"],
        }
