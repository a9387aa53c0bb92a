"""The collector process: wait for subscribers, attach probes, drain the ring buffer, publish.

It is the only privileged process, so it stays small: everything that can be done without
privilege (naming, storing, printing) happens in the writers or the front end.
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

from bpf import records
from collector import bus
from collector.file_assembly import FileAssembler, Outgoing
from collector.options import Config
from collector.probes import DEFAULT_RING_BYTES, KernelProbes
from collector.process_tree import read_proc_file, tracecap_ancestors
from collector.publisher import Publisher

STATS_INTERVAL_S = 1.0
SUBSCRIBER_TIMEOUT_S = 60.0


def boot_to_epoch_ns() -> int:
    """Offset from CLOCK_BOOTTIME (what BPF stamps) to the Unix epoch."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def tracecap_uid() -> int:
    try:
        return pwd.getpwnam("tracecap").pw_uid
    except KeyError:
        return 0xFFFFFFFF


class Collector:
    def __init__(self, config: Config, publisher: Publisher, ring_bytes: int) -> None:
        self._config = config
        self._pub = publisher
        self._ring_bytes = ring_bytes
        self._assembler = FileAssembler(boot_to_epoch_ns())
        self._probes: KernelProbes | None = None
        self.counters: Counter[str] = Counter()
        self.state = "starting"
        self._started = time.monotonic()

    def attach(self) -> None:
        excluded = tracecap_ancestors(
            os.getpid(),
            lambda pid: read_proc_file(pid, "stat"),
            lambda pid: read_proc_file(pid, "cmdline"),
        )
        self._probes = KernelProbes(self._config, excluded, tracecap_uid(), self._ring_bytes)
        self.state = "ready"

    def _on_record(self, raw: bytes) -> None:
        now = time.monotonic_ns()
        try:
            kind = records.record_kind(raw)
            if kind == records.REC_FILE_DATA:
                out = self._assembler.on_data(records.decode_file_data(raw), now)
            elif kind == records.REC_FILE_EVENT:
                self.counters["events"] += 1
                out = self._assembler.on_event(records.decode_file_event(raw), now)
            else:
                raise records.RecordError(f"unknown record kind {kind}")
        except records.RecordError as exc:
            self.counters["decode_errors"] += 1
            print(f"tracecap collector: bad record: {exc}", file=sys.stderr)
            return
        self._send(out)

    def _send(self, out: list[Outgoing]) -> None:
        for msg in out:
            self._pub.publish(msg.topic, msg.env, msg.payload)

    def stats_env(self) -> dict[str, Any]:
        per_cpu = self._probes.per_cpu_counters() if self._probes else []
        kernel = records.decode_counters(per_cpu) if per_cpu else {}
        drops_per_cpu = {
            name: [records.decode_counters([row])[name] for row in per_cpu]
            for name in kernel
            if name.endswith("_drops")
        }
        return {
            "ts": time.time_ns(),
            "pid": os.getpid(),
            "tid": threading.get_native_id(),
            "ppid": os.getppid(),
            "uid": os.getuid(),
            "comm": b"tracecap",
            "cgroup_id": 0,
            "container_id": "",
            "state": self.state,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "kernel": kernel,
            "kernel_drops_per_cpu": drops_per_cpu,
            "collector": {
                "events": self.counters["events"],
                "decode_errors": self.counters["decode_errors"],
                "orphan_chunks": self._assembler.orphan_chunks,
                "lost_bytes": self._assembler.lost_bytes,
                "messages": self._pub.sent_messages,
                "bytes": self._pub.sent_bytes,
            },
            "programs": self._probes.program_names if self._probes else [],
            "subscriptions": {
                t.decode(errors="replace"): n for t, n in self._pub.subscriptions.items()
            },
        }

    def run(self, stop: threading.Event) -> None:
        assert self._probes is not None
        ring = self._probes.file_ring(self._on_record)
        next_stats = 0.0
        try:
            while not stop.is_set():
                ring.poll(100)
                now = time.monotonic()
                if now >= next_stats:
                    self._send(self._assembler.expire(time.monotonic_ns()))
                    self._pub.poll_subscriptions()
                    self._pub.publish(bus.TOPIC_STATS, self.stats_env())
                    next_stats = now + STATS_INTERVAL_S
            # Drain what the kernel already holds before detaching.
            ring.consume()
            self._send(self._assembler.expire(time.monotonic_ns(), force=True))
        finally:
            ring.close()

    def close(self) -> None:
        self.state = "stopped"
        try:
            self._pub.publish(bus.TOPIC_STATS, self.stats_env())
        finally:
            if self._probes:
                self._probes.close()
                self._probes = None


def run_collector(
    config: Config,
    run_dir: str,
    wait_for: Counter[bytes],
    ring_bytes: int = DEFAULT_RING_BYTES,
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    pub = Publisher(run_dir)
    collector: Collector | None = None
    try:
        print(
            f"tracecap collector: bus on {pub.endpoint}, waiting for {dict(wait_for)}",
            file=sys.stderr,
        )
        pub.wait_for(wait_for, SUBSCRIBER_TIMEOUT_S, stop.is_set)
        collector = Collector(config, pub, ring_bytes)
        collector.attach()
        print(
            f"tracecap collector: attached {len(collector.stats_env()['programs'])} programs",
            file=sys.stderr,
        )
        pub.publish(bus.TOPIC_STATS, collector.stats_env())
        collector.run(stop)
    finally:
        if collector is not None:
            collector.close()
        pub.close()
    return 0
