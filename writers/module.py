"""The module writer: kernel module images, once per sha256.

``<cid>/module.dev-<D>.inode-<I>.pid-<P>.<sha256>`` for finit_module (loaded from a file),
``<cid>/module.pid-<P>.<sha256>`` for init_module (from memory). Loads are captured even when
they fail (``ret`` < 0; every load does on a kernel without module support): the attempt is the
evidence. The same image loaded again, by anyone, anywhere, is only counted.
"""

from __future__ import annotations

from typing import Any

from tracecap import bus
from tracecap.text import text_fields
from writers.naming import module_artifact_name
from writers.objectartifact import DedupKey, Meta, content_key, content_key_from_record
from writers.objects import ObjectWriter

MAX_SYSCALL_CHARS = 64


class ModuleWriter(ObjectWriter):
    """Kernel module images; see the module docstring."""

    name = kind = "module"
    topic = bus.TOPIC_MODULE

    def final_name(self, meta: Meta, sha256: str) -> str:
        return module_artifact_name(meta["dev"], meta["inode"], meta["pid"], sha256)

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        return content_key(sha256)

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        return content_key_from_record(record)

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        return {
            "syscall": meta["syscall"][:MAX_SYSCALL_CHARS],
            "ret": meta["ret"],
            **text_fields("params", meta["params"]),
            "dev": meta["dev"],
            "inode": meta["inode"],
            **text_fields("source_path", meta["path"]),
        }
