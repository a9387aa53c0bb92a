"""The memory writer: regions an unpacker or a JIT made executable, ``<cid>/mem.pid-<P>.ts-<ts>``,
and Tracee's ``mem_prot_alert`` in the index.

Each ``mem.`` message is an alert, a dump of a region's bytes, or both (bus.MEM_KEYS). A dump is
an artifact unless the same process already dumped the same bytes at the same address: then,
as for the kernel's ``repeat`` (the same keyed hash as the region's previous dump), it is one
more occurrence of that artifact, whose record is written again with the new count at most
once a second (the last line for a path is current). Alerts without bytes and what the
processes' allowances skipped go to the index as ``writers.memevents`` describes. Occurrences
are counted within one writer's life: a restarted writer starts new artifacts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tracecap import bus
from writers.memevents import AlertLog, Occurrences, budget_record, dedup_key, region_fields
from writers.naming import mem_artifact_name
from writers.objectartifact import DedupKey, Meta, ObjectAssembly, ObjectKey
from writers.objects import ObjectWriter
from writers.recent import RecentKeys

#: Region artifacts whose later occurrences can still be counted on them (about 2 KB each).
MAX_REGIONS = 4096
#: An artifact's record is written again this long after a new occurrence, or at close.
REWRITE_SECONDS = 1.0
#: Objects whose budget report was taken, so a dump's later messages do not repeat it.
MAX_REPORTED = 4096
#: ``zero`` ranges accepted per object: one per page of the largest region the kernel sends.
MAX_ZERO_RANGES = 16384


@dataclass(eq=False)
class _Region:
    """A region artifact: its record, and the occurrences counted since."""

    record: dict[str, Any]
    seen: Occurrences
    content: DedupKey | None
    refs: int = 0
    dirty_since: float | None = None


def _ranges(value: object) -> list[list[int]] | None:
    """``zero`` as the collector sends it, or None when it is not that."""
    if not isinstance(value, list) or len(value) > MAX_ZERO_RANGES:
        return None
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            return None
        start, end = item
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
            return None
    return value


class MemoryWriter(ObjectWriter):
    """Memory regions and alerts; see the module docstring."""

    name = kind = "mem"
    topic = bus.TOPIC_MEM
    deduplicates = False  # nothing is rebuilt from the index: see the module docstring

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Artifacts by the objects that were them or their occurrences, oldest first.
        self._regions: OrderedDict[ObjectKey, _Region] = OrderedDict()
        self._by_content: dict[DedupKey, _Region] = {}
        self._dirty: dict[_Region, None] = {}
        self._alerts = AlertLog()
        self._reported: RecentKeys[ObjectKey] = RecentKeys(MAX_REPORTED)
        self._zero: dict[ObjectKey, list[list[int]]] = {}
        self.counters.update(dict.fromkeys(("repeats", "alert_records", "budget_records"), 0))

    # -- what the object base asks ---------------------------------------------------------------

    def final_name(self, meta: Meta, sha256: str) -> str:
        return mem_artifact_name(meta["pid"], meta["ts"])

    def dedup_key(self, meta: Meta, sha256: str | None) -> DedupKey | None:
        return None if sha256 is None else dedup_key(meta, sha256)

    def dedup_key_from_record(self, record: dict[str, Any]) -> DedupKey | None:
        return None  # never called: deduplicates is False

    def index_fields(self, meta: Meta) -> dict[str, Any]:
        zero = self._zero.pop((meta["epoch"], meta["obj_id"]), [])
        return {**region_fields(meta), "zero_ranges": zero, **Occurrences(meta["ts"]).fields()}

    def _is_duplicate(self, asm: ObjectAssembly, key: DedupKey) -> bool:
        region = self._by_content.get(key)
        if region is None:
            return False
        self._zero.pop(asm.key, None)  # no record of its own to carry them
        self._occurred(region, asm.first_ts)
        self._remember(asm.key, region)  # the kernel's later repeats name this object
        return True

    def _placed(self, record: dict[str, Any], key: DedupKey | None) -> None:
        content = key if record["complete"] else None
        region = _Region(record, Occurrences(record["ts"]), content)
        if content is not None:
            self._by_content[content] = region
        self._remember((record["epoch"], record["obj_id"]), region)

    # -- messages ----------------------------------------------------------------------------------

    def handle(self, msg: bus.Message) -> None:
        if not msg.topic.startswith(self.topic):
            return
        env = msg.env
        try:
            bus.check_object(env)
        except ValueError as exc:
            self._reject(f"object message refused: {exc}")
            return
        key = (env["epoch"], env["obj_id"])
        if key not in self._reported:
            self._reported.add(key)
            report = budget_record(env)
            if report is not None:
                self.counters["budget_records"] += 1
                self._append(report)
        if env["dump"] == "sent":
            if "zero" in env and env["last"]:
                zero = _ranges(env["zero"])
                if zero is None:
                    self._reject(f"object {key}: zero ranges refused")
                elif key not in self._done:
                    self._zero[key] = zero
            super().handle(msg)
            return
        if env["dump"] == "repeat":
            region = self._regions.get((env["epoch"], env["same_as"]))
            if region is not None:
                self._occurred(region, env["ts"])
                return
        if env["alert"] or env["dump"] != "none":
            for record in self._alerts.add(env, self._clock()):
                self._append_alert(record)

    def tick(self, now: float) -> None:
        super().tick(now)
        for record in self._alerts.due(now):
            self._append_alert(record)
        for region in list(self._dirty):
            if region.dirty_since is not None and now - region.dirty_since >= REWRITE_SECONDS:
                self._rewrite(region)

    def close(self) -> None:
        super().close()
        for record in self._alerts.flush():
            self._append_alert(record)
        for region in list(self._dirty):
            self._rewrite(region)

    # -- occurrences -------------------------------------------------------------------------------

    def _occurred(self, region: _Region, ts: int) -> None:
        region.seen.add(ts)
        self.counters["repeats"] += 1
        if region.dirty_since is None:
            region.dirty_since = self._clock()
            self._dirty[region] = None

    def _remember(self, key: ObjectKey, region: _Region) -> None:
        if key in self._regions:
            return
        self._regions[key] = region
        region.refs += 1
        while len(self._regions) > MAX_REGIONS:
            _, old = self._regions.popitem(last=False)
            old.refs -= 1
            if old.refs == 0:
                self._forget(old)

    def _forget(self, region: _Region) -> None:
        """No object names the region any more: its last count is written now."""
        if region.dirty_since is not None:
            self._rewrite(region)
        if region.content is not None and self._by_content.get(region.content) is region:
            del self._by_content[region.content]

    def _rewrite(self, region: _Region) -> None:
        region.dirty_since = None
        self._dirty.pop(region, None)
        self._append({**region.record, **region.seen.fields()})

    def _append_alert(self, record: dict[str, Any]) -> None:
        self.counters["alert_records"] += 1
        self._append(record)
