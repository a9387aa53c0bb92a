"""What the index says about memory captures, beside the region artifacts themselves (pure).

A JIT changes protections thousands of times a second, so the memory writer does not give
each occurrence its own line:

- the same bytes at the same address of the same process are one artifact, whose record
  counts the ``occurrences`` and lists their times (the first MAX_OCCURRENCE_TS);
- alerts without bytes of their own (a writable-and-executable mapping, a change to
  executable, a dump skipped by the process's budget, a repeat of a region this writer no
  longer knows) are aggregated per process, address, length, protections and outcome into
  ``mem_alert`` records, each covering at most AGGREGATE_SECONDS;
- what a process's allowances skipped, as the kernel reports it, is a ``mem_budget`` record.

The I/O (artifacts, the index) is ``writers.memory``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tracecap.bus import container_fields
from tracecap.text import prot_string, text_fields

#: Occurrence times kept per record; the count and ``last_ts`` go on past it.
MAX_OCCURRENCE_TS = 32
#: An aggregated alert record is written this long after its first occurrence, or at close.
AGGREGATE_SECONDS = 1.0
#: Alert aggregates held at once; past this the oldest is written early.
MAX_AGGREGATES = 4096
MAX_SYSCALL_CHARS = 64
MAX_ALERT_CHARS = 128
_CONTEXT = ("pid", "tid", "ppid", "uid", "cgroup_id", "container_id")

Meta = dict[str, Any]


@dataclass
class Occurrences:
    """When the same thing happened again: how often, and when (the first times kept)."""

    first_ts: int
    count: int = 1
    times: list[int] = field(default_factory=list)
    last_ts: int = 0

    def __post_init__(self) -> None:
        self.times = [self.first_ts]
        self.last_ts = self.first_ts

    def add(self, ts: int) -> None:
        self.count += 1
        self.last_ts = max(self.last_ts, ts)
        if len(self.times) < MAX_OCCURRENCE_TS:
            self.times.append(ts)

    def fields(self) -> dict[str, Any]:
        return {
            "occurrences": self.count,
            "occurrence_ts": list(self.times),
            "occurrence_ts_truncated": self.count > len(self.times),
            "last_ts": self.last_ts,
        }


def region_fields(meta: Meta) -> dict[str, Any]:
    """The fields every mem record has: where, what changed, what Tracee calls it."""
    return {
        "syscall": meta["syscall"][:MAX_SYSCALL_CHARS],
        "alert": meta["alert"][:MAX_ALERT_CHARS],
        "dump": meta["dump"][:MAX_SYSCALL_CHARS],
        "address": meta["addr"],
        "length": meta["len"],
        "region_size": meta["size"],
        "prot_before": meta["prot_before"],
        "prot_after": meta["prot_after"],
        "prot_before_rwx": prot_string(meta["prot_before"]),
        "prot_after_rwx": prot_string(meta["prot_after"]),
    }


def dedup_key(meta: Meta, sha256: str) -> tuple[Any, ...]:
    """Same process, same place, same bytes: one artifact (pid reuse with the same bytes at
    the same address would join them; the record keeps every occurrence's time)."""
    return (meta["container_id"], meta["pid"], meta["addr"], meta["size"], sha256)


def _context(env: Meta) -> dict[str, Any]:
    return {
        **{k: env[k] for k in _CONTEXT},
        **container_fields(env),
        **text_fields("comm", env["comm"]),
        "epoch": env["epoch"],
    }


def budget_record(env: Meta) -> dict[str, Any] | None:
    """The ``mem_budget`` record of what the process's allowances skipped since its previous
    event, or None when nothing was skipped."""
    skipped = (env["skipped_events"], env["skipped_dumps"], env["skipped_bytes"])
    if not any(skipped):
        return None
    return {
        "kind": "mem_budget",
        "path": None,
        **_context(env),
        "ts": env["ts"],
        "reported_by": env["syscall"][:MAX_SYSCALL_CHARS],
        "skipped_events": skipped[0],
        "skipped_dumps": skipped[1],
        "skipped_bytes": skipped[2],
    }


@dataclass
class _Aggregate:
    record: dict[str, Any]
    seen: Occurrences
    opened: float


class AlertLog:
    """Alerts that have no artifact of their own, aggregated as the module docstring says."""

    def __init__(self) -> None:
        self._open: OrderedDict[tuple[Any, ...], _Aggregate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, env: Meta, now: float) -> list[dict[str, Any]]:
        """Count one alert; returns records to write now (the oldest, past MAX_AGGREGATES)."""
        key = (
            env["container_id"], env["pid"], env["syscall"], env["alert"], env["dump"],
            env["addr"], env["size"], env["prot_before"], env["prot_after"],
        )  # fmt: skip
        agg = self._open.get(key)
        if agg is not None:
            agg.seen.add(env["ts"])
            return []
        record = {
            "kind": "mem_alert",
            "path": None,
            **region_fields(env),
            **_context(env),
            "ts": env["ts"],
            "obj_id": env["obj_id"],
        }
        if env["dump"] == "repeat":
            record["same_as"] = env["same_as"]
        self._open[key] = _Aggregate(record, Occurrences(env["ts"]), now)
        out = []
        while len(self._open) > MAX_AGGREGATES:
            out.append(self._finish(self._open.popitem(last=False)[1]))
        return out

    def due(self, now: float) -> list[dict[str, Any]]:
        """Records whose time is up (oldest first)."""
        out = []
        while self._open:
            agg = next(iter(self._open.values()))
            if now - agg.opened < AGGREGATE_SECONDS:
                break
            out.append(self._finish(self._open.popitem(last=False)[1]))
        return out

    def flush(self) -> list[dict[str, Any]]:
        out = [self._finish(agg) for agg in self._open.values()]
        self._open.clear()
        return out

    @staticmethod
    def _finish(agg: _Aggregate) -> dict[str, Any]:
        return {**agg.record, **agg.seen.fields()}
