"""The events writer: ``events.jsonl``, the capture's timeline of process events.

The index holds artifacts, once per binary, image or program; a report also needs what happened
between them: every exec (not only the first of each binary), every fork and process exit (the
process tree's parents, starts, ends and exit codes), when the capture started and stopped, what
it lost, and when this writer itself was (re)started. The collector publishes every exec (with
``--capture exec``), fork and exit on ``proc.`` and its counters on ``stats.`` once a
second; this writer keeps the first stats of each epoch (the start) and the last (the stop, with
the loss summary), not every second's.

Module and BPF load attempts (``LOAD_ATTEMPTS``) are written by the module and BPF writers
(``writers.loads``), not by this one: only the writer that stores an image knows whether an
attempt stored it (its ``path``) or found it stored already (``duplicate_of``), so each of its
index records of an attempt is also an event here, appended at the same moment.

``events.jsonl`` is appended exactly as the index is (``writers.index.Index``: one line per
record, whole or not at all, under the file's own lock, shared by every process that appends;
control and non-ASCII characters escaped, so no capture string can split a line), and rotated
with it (``--capture index-rotate:``: segments ``events.<NNNNNN>.jsonl[.gz]``, the live file
starting with a ``rotation`` record). Like the index it is measured by the disk budget's walk of
the tree but never refused: records are small, and the report needs them most when artifacts
were refused.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from tracecap import bus
from tracecap.bus import CONTAINER_KEYS
from tracecap.text import text_fields
from writers.base import Writer
from writers.budget import DiskBudget
from writers.exec import argv_fields
from writers.index import Index
from writers.outdir import OutputDir
from writers.ratelog import RateLimitedLog

EVENTS_NAME = "events.jsonl"

#: The collector's counters that measure loss, copied into the start and stop records (the
#: kernel's ``*_drops`` are added by name).
COLLECTOR_LOSS_KEYS = (
    "decode_errors",
    "orphan_chunks",
    "orphan_ios",
    "streams_evicted",
    "lost_bytes",
    "lost_unsized",
    "exec_unreadable",
    "file_read_errors",
    "bus_dropped_messages",
    "bus_dropped_bytes",
)


def process_fields(env: dict[str, Any]) -> dict[str, Any]:
    """The process an event is about, as the index names it."""
    fields = {key: env[key] for key in ("ts", "pid", "tid", "ppid", "uid", "cgroup_id")}
    fields["container_id"] = env["container_id"]
    for key in ("ns_pid", "ns_ppid"):
        if type(env.get(key)) is int:
            fields[key] = env[key]
    return fields | text_fields("comm", env["comm"])


def exec_record(env: dict[str, Any]) -> dict[str, Any]:
    """One exec, from a ``proc.`` envelope with ``event: "exec"``."""
    path = env.get("path", b"")
    record = {"event": "exec", "epoch": env["epoch"], **process_fields(env)}
    record |= text_fields("source_path", path if isinstance(path, bytes) else b"")
    record |= argv_fields(env.get("argv") if isinstance(env.get("argv"), list) else [])
    for key in ("dev", "inode", "memfd"):
        if key in env:
            record[key] = env[key]
    return record


def fork_record(env: dict[str, Any]) -> dict[str, Any]:
    """One fork: the parent (the process fields) and the new process (``child_pid``, and its
    start, ``child_start``: ns since the epoch)."""
    record = {"event": "fork", "epoch": env["epoch"], **process_fields(env)}
    for key in ("child_pid", "child_ns_pid", "child_start"):
        if type(env.get(key)) is int:
            record[key] = env[key]
    return record


def exit_record(env: dict[str, Any]) -> dict[str, Any]:
    """One process exit (its last thread): ``exit_code`` and ``signal`` from the wait status."""
    record = {"event": "exit", "epoch": env["epoch"], **process_fields(env)}
    for key in ("exit_code", "signal", "wait_status"):
        if type(env.get(key)) is int:
            record[key] = env[key]
    return record


#: The ``proc.`` events kept, by their ``event``: the record each becomes (one entry per kind).
PROC_EVENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "exec": exec_record,
    "fork": fork_record,
    "exit": exit_record,
}

#: Index kinds of which every record is one load attempt, failed or not (the writers of
#: ``writers.loads``): the attempt's ``event`` here and the kind's own index fields it keeps.
LOAD_ATTEMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "module": ("module_load", ("syscall", "ret", "params", "params_hex", "fd", "addr", "dev",
                               "inode", "source_path", "source_path_hex")),
    "bpf": ("bpf_load", ("prog_name", "prog_name_hex", "prog_type", "insn_cnt", "ret")),
}  # fmt: skip
#: What every attempt keeps of its index record: who, in which container, when, and the
#: artifact (``path`` and ``sha256`` of the image it stored; ``path`` null with
#: ``duplicate_of`` when the image was stored already; ``sha256`` null when nothing was read).
ATTEMPT_FIELDS = (
    "ts", "epoch", "obj_id", "pid", "tid", "ppid", "uid", "comm", "comm_hex", "cgroup_id",
    "container_id", *CONTAINER_KEYS, "path", "duplicate_of", "sha256", "size", "complete",
    "error",
)  # fmt: skip


def attempt_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """The ``events.jsonl`` line of a load attempt, from its index record; None for a record
    of another kind."""
    entry = LOAD_ATTEMPTS.get(record.get("kind"))
    if entry is None:
        return None
    event, own = entry
    return {"event": event} | {k: record[k] for k in (*ATTEMPT_FIELDS, *own) if k in record}


def events_file(out: OutputDir, index: Index) -> Index:
    """``events.jsonl`` of ``out``, rotated as the index is."""
    return Index(out, EVENTS_NAME, rotation=index.rotation)


def loss_summary(env: dict[str, Any]) -> dict[str, Any]:
    """What a ``stats.`` message says was lost so far: the kernel's drops per counter (only
    the non-zero ones) and the collector's loss counters."""
    kernel = env.get("kernel") if isinstance(env.get("kernel"), dict) else {}
    collector = env.get("collector") if isinstance(env.get("collector"), dict) else {}
    return {
        "kernel_drops": {
            name: value
            for name, value in sorted(kernel.items())
            if name.endswith("_drops") and type(value) is int and value
        },
        "collector": {
            key: collector[key] for key in COLLECTOR_LOSS_KEYS if type(collector.get(key)) is int
        },
    }


def capture_record(event: str, env: dict[str, Any]) -> dict[str, Any]:
    """``capture_start`` (the first stats of an epoch: ``ts`` is when the collector started)
    or ``capture_stop`` (its last, ``state: "stopped"``), with the loss so far."""
    uptime = env.get("uptime_s")
    ts = env["ts"]
    if event == "capture_start" and isinstance(uptime, (int, float)):
        ts -= int(uptime * 1e9)
    record = {"event": event, "ts": ts, "epoch": env["epoch"], "state": env.get("state")}
    return record | loss_summary(env)


class EventsWriter(Writer):
    """``events.jsonl``; see the module docstring."""

    name = "events"
    topics = (bus.TOPIC_PROC, bus.TOPIC_STATS)

    def __init__(
        self,
        out: OutputDir,
        index: Index,
        *,
        budget: DiskBudget | None = None,
        clock: Callable[[], int] = time.time_ns,
        host: Callable[[], str] = socket.gethostname,
    ) -> None:
        super().__init__(budget)
        self._events = events_file(out, index)
        self._clock = clock
        self._log = RateLimitedLog(f"tracecap-writer[{self.name}]")
        #: Epochs whose start is recorded; the last stats of the current one, if not written.
        self._started: set[int] = set()
        self._last_stats: dict[str, Any] | None = None
        self.counters.update(events_written=0, events_errors=0, rotation_errors=0)
        self._append({"event": "writer_start", "ts": clock(), "host": host()})

    def _append(self, record: dict[str, Any]) -> None:
        what = f"{record['event']} event"
        if self._events.append_or_count(record, self.counters, self._log, what, "events_errors"):
            self.counters["events_written"] += 1

    def handle(self, msg: bus.Message) -> None:
        env = msg.env
        if msg.topic == bus.TOPIC_PROC:
            build = PROC_EVENTS.get(env["event"])
            if build is not None:
                self._append(build(env))
            return
        epoch = env["epoch"]
        if epoch not in self._started:
            self._flush_last_stats()  # a new collector: the old one's last word
            self._started.add(epoch)
            self._append(capture_record("capture_start", env))
        if env.get("state") == "stopped":
            self._append(capture_record("capture_stop", env))
            self._last_stats = None
        else:
            self._last_stats = env

    def _flush_last_stats(self) -> None:
        """The last stats of a collector that never said it stopped (killed, or still
        running when this writer stops): its loss so far, as ``capture_last_stats``."""
        if self._last_stats is not None:
            self._append(capture_record("capture_last_stats", self._last_stats))
            self._last_stats = None

    def close(self) -> None:
        self._flush_last_stats()
        self._append({"event": "writer_stop", "ts": self._clock()})
        self._events.close()
