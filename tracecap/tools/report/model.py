"""The capture as the report sees it (pure): index and events lines parsed, the current record
of each artifact, and the processes with their execs, artifacts and pcaps.

Lines come from files a capture wrote, but a copied output directory may have been altered, so
nothing here trusts a field's type: a line that is not a JSON object is counted, a field of the
wrong type reads as absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

#: The artifact kinds the report has a table for, in its order, with their headings.
ARTIFACT_KINDS = {
    "write": "written files",
    "read": "read files",
    "exec": "executed binaries",
    "mem": "memory regions",
    "module": "kernel modules",
    "bpf": "BPF programs",
    "pcap": "pcap files",
}


def parse_lines(lines: Iterable[bytes]) -> tuple[list[Record], int]:
    """The JSON objects of a ``.jsonl`` file, and how many non-empty lines were not one."""
    records: list[Record] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            bad += 1
    return records, bad


def text(record: Record, key: str, default: str = "") -> str:
    value = record.get(key)
    return value if isinstance(value, str) else default


def integer(record: Record, key: str) -> int | None:
    value = record.get(key)
    return value if type(value) is int else None


def timestamp(record: Record) -> int | None:
    """When a record happened: ``ts``, else ``first_ts`` (file artifacts, pcaps)."""
    ts = integer(record, "ts")
    return ts if ts is not None else integer(record, "first_ts")


def current(records: Iterable[Record]) -> list[Record]:
    """One record per artifact: the last line for a path is current (a file artifact written
    again gets a later line); records without a path (failed reads, duplicate loads, alerts,
    gaps, budget) each stand for themselves. In the order each artifact first appeared."""
    by_path: dict[str, int] = {}
    out: list[Record] = []
    for record in records:
        path = record.get("path")
        if isinstance(path, str):
            if path in by_path:
                out[by_path[path]] = record
                continue
            by_path[path] = len(out)
        out.append(record)
    return out


@dataclass
class Process:
    """One pid: its fork, execs and exit (events.jsonl), and what the index says it produced."""

    pid: int
    ppid: int | None = None
    comm: str = ""
    argv: list[str] = field(default_factory=list)
    uid: int | None = None
    container_id: str = ""
    #: the runtime's name of the container (index ``container_name``), "" when not known
    container_name: str = ""
    start: int | None = None
    end: int | None = None
    #: from events.jsonl's fork and exit (None when the capture has none): the pid that forked
    #: it, when it started and ended, and how (the exit code, or the signal that killed it)
    forked_by: int | None = None
    born: int | None = None
    exited: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    execs: list[Record] = field(default_factory=list)
    artifacts: list[Record] = field(default_factory=list)
    children: list[int] = field(default_factory=list)

    def seen(self, record: Record) -> None:
        """Widen the process's window and fill what is still unknown from ``record``."""
        for ts in (timestamp(record), integer(record, "last_ts")):
            if ts is not None:
                self.start = ts if self.start is None else min(self.start, ts)
                self.end = ts if self.end is None else max(self.end, ts)
        if self.ppid is None:
            self.ppid = integer(record, "ppid")
        if self.uid is None:
            self.uid = integer(record, "uid")
        if not self.comm:
            self.comm = text(record, "comm")
        if not self.container_id:
            self.container_id = text(record, "container_id")
        if not self.container_name:
            self.container_name = text(record, "container_name")


def processes(artifacts: Iterable[Record], events: Iterable[Record]) -> dict[int, Process]:
    """Every pid the capture saw, with its parent: from each fork (the parent and the child's
    start), exit (the end and exit code) and exec (the last one names the process: ``bash``
    that executed ``curl`` is ``curl``), and from the artifacts' records. A fork's parent wins
    over an exec's ppid (which names a reaper once the parent has exited); without a fork or an
    exit, a process's start and end are the first and last moments the capture saw it."""
    procs: dict[int, Process] = {}

    def proc(pid: int) -> Process:
        if pid not in procs:
            procs[pid] = Process(pid)
        return procs[pid]

    for event in events:
        pid = integer(event, "pid")
        on = _EVENT_RULES.get(event.get("event"))
        if on is None or pid is None or pid <= 0:
            continue
        on(proc, pid, event)
    for record in artifacts:
        pid = integer(record, "pid")
        if pid is None or pid <= 0 or record.get("kind") in ("gap", "budget"):
            continue
        p = proc(pid)
        p.artifacts.append(record)
        p.seen(record)
    for p in procs.values():
        if p.forked_by is not None:
            p.ppid = p.forked_by
        p.start = p.born if p.born is not None else p.start
        p.end = p.exited if p.exited is not None else p.end
    for p in procs.values():
        if p.ppid is not None and p.ppid in procs and p.ppid != p.pid:
            procs[p.ppid].children.append(p.pid)
    return procs


def _on_exec(proc: Callable[[int], Process], pid: int, event: Record) -> None:
    p = proc(pid)
    p.execs.append(event)
    p.seen(event)
    p.ppid = integer(event, "ppid") if p.ppid is None else p.ppid
    p.comm = text(event, "comm", p.comm)
    argv = event.get("argv")
    if isinstance(argv, list):
        p.argv = [a for a in argv if isinstance(a, str)]


def _on_fork(proc: Callable[[int], Process], pid: int, event: Record) -> None:
    """The parent was seen; the child starts with its parent's comm, uid and container."""
    proc(pid).seen(event)
    child = integer(event, "child_pid")
    if child is None or child <= 0 or child == pid:
        return
    c = proc(child)
    c.forked_by = pid
    c.born = integer(event, "child_start") or timestamp(event)
    inherited = {key: event[key] for key in ("comm", "uid", "container_id") if key in event}
    c.seen(inherited)


def _on_exit(proc: Callable[[int], Process], pid: int, event: Record) -> None:
    p = proc(pid)
    p.seen(event)
    p.exited = timestamp(event)
    p.exit_code = integer(event, "exit_code")
    p.signal = integer(event, "signal")


#: What each events.jsonl process event tells of the processes (others are not about one).
_EVENT_RULES: dict[str, Callable[[Callable[[int], Process], int, Record], None]] = {
    "exec": _on_exec,
    "fork": _on_fork,
    "exit": _on_exit,
}


def roots(procs: dict[int, Process]) -> list[int]:
    """The pids to start the tree from: those whose parent the capture did not see, then one of
    each cycle of parents (a pid reused, or a tampered index), so that every process is shown
    exactly once."""
    out = [pid for pid, p in procs.items() if p.ppid not in procs or p.ppid == pid]
    reached: set[int] = set()
    stack = list(out)
    while stack:
        pid = stack.pop()
        if pid in reached:
            continue
        reached.add(pid)
        stack.extend(procs[pid].children)
    for pid in procs:
        if pid not in reached:
            out.append(pid)
            stack = [pid]
            while stack:
                top = stack.pop()
                if top not in reached:
                    reached.add(top)
                    stack.extend(procs[top].children)
    return sorted(out, key=lambda pid: (procs[pid].start or 0, pid))
