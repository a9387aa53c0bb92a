"""The collector process: wait for subscribers, attach probes, drain the ring buffer, publish.

It is the only privileged process, so it stays small: everything that can be done without
privilege (naming, storing, printing) happens in the writers or the front end.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from bpf import records
from collector.cgroup_rules import RuleError
from collector.containers import CgroupResolver, read_rules
from collector.drop_notices import HeldDrops
from collector.enricher import ContainerEnricher
from collector.envelopes import Outgoing, context_env, proc_env
from collector.exec_files import ExecFile, exec_plan
from collector.file_assembly import FileAssembler, file_env
from collector.host import Clock, Host
from collector.libbpf import BpfError
from collector.module_images import HeldImages, file_candidates, fill_plan, why_not_from_file
from collector.object_assembly import ObjectAssembler, mem_skipped_env, object_env
from collector.object_files import (
    MESSAGE_BYTES,
    FileIdentity,
    FileJob,
    FileStreamer,
    FillJob,
)
from collector.packets import PacketAssembler
from collector.probes import DEFAULT_RING_BYTES, KernelProbes, ProbeError, scope_flags
from collector.process_tree import tracecap_ancestors
from collector.publisher import BACKLOG_BYTES, BusError, Publisher
from collector.readback import Readback
from collector.ring_reader import RingReader, RingReaderError
from tracecap import bus
from tracecap.options import Config

STATS_INTERVAL_NS = 1_000_000_000
#: How often freed heap goes back to the OS: glibc keeps what a burst of small files freed
#: (about 43 MB after 100,000 of them, measured), and malloc_trim costs 0.1-0.3 ms.
TRIM_INTERVAL_NS = 10_000_000_000
#: The kernel wakes the collector only once 256 KiB wait in a ring (TC_WAKEUP_BYTES): it looks
#: on its own this often after a turn that took records, which bounds how long a trickle of
#: records waits; while none arrive, twice as long each turn up to IDLE_POLL_MS. An idle turn
#: costs about 270 us of Python (the bus's upkeep, the expiries): 27 ms of CPU a second at
#: 10 ms, 8 at 200 (measured on this 6.18 VM). A record after a quiet spell waits up to
#: IDLE_POLL_MS; Tracee polls its perf buffers every 300 ms.
POLL_MS = 10
IDLE_POLL_MS = 80
SUBSCRIBER_TIMEOUT_S = 60.0
#: Bytes of executed binaries and module files read between two ring-buffer polls.
FILE_BUDGET_PER_POLL = 8 * 1024 * 1024
#: Room kept in the bus's backlog beyond a file-ring drain's records: for the messages a drain
#: may add besides its records' bytes (runs gathered before it, partial syscalls of several
#: streams flushed) and for the object ring's, which is not held back (memory dumps of up to
#: 1 MiB a message). With one run's worth (1 MiB), a 64 KiB memory dump of another process was
#: dropped from the backlog once in three rounds of scripts/bench_workloads.py (a).
RING_BUDGET_MARGIN = BACKLOG_BYTES // 4
#: At a stop, how long the file ring is drained as fast as the writers take it (the probes are
#: still attached: under a steady flood it never empties); then what is left goes at once, and
#: what the backlog has no room for is counted lost.
RING_STOP_NS = 5_000_000_000
#: At a stop, how long files still being read may wait for room on the bus (supervisord kills
#: the collector after 30 s); what is left then is closed unfinished, which the writer records.
STOP_STREAMING_NS = 10_000_000_000
#: Executed binaries remembered so that each is streamed once per collector run (the writer
#: keeps the lasting, once-per-(container, dev, inode, ctime) record).
EXEC_SEEN_MAX = 65536
#: Processes whose last finit_module path is remembered, the oldest forgotten first.
FINIT_PATHS_MAX = 1024
#: Object ids made in user space live above the kernel's, so the two never collide.
USER_OBJ_ID_BASE = 1 << 48
#: The user the writers, the bridge and tap run as: the kernel side ignores its processes.
#: Without that user, NO_UID (-1 as a u32, which no process has) excludes nobody.
TRACECAP_USER = "tracecap"
NO_UID = 0xFFFFFFFF

#: What builds the kernel side: (config, tgids to exclude, uid to exclude, file ring bytes).
ProbesFactory = Callable[[Config, Iterable[int], int, int], KernelProbes]
_HOST = Host()
_CLOCK = Clock()


_OBJECT_DECODERS = {
    records.REC_MEM_EVENT: records.decode_mem_event,
    records.REC_MODULE_EVENT: records.decode_module_event,
    records.REC_BPF_EVENT: records.decode_bpf_event,
}


def next_wait_ms(wait_ms: int, took: int) -> int:
    """How long the loop's next turn waits for records: POLL_MS after a turn that ``took``
    some, else twice ``wait_ms``, at most IDLE_POLL_MS."""
    return POLL_MS if took else min(2 * wait_ms, IDLE_POLL_MS)


def release_free_heap() -> None:
    """Hand the heap that libbpf's load freed (BTF, relocations: about 5 MB) back to the OS;
    glibc keeps it otherwise, and the collector's resident memory is part of its footprint."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class Collector:
    """The privileged loop: load and attach the kernel side, dispatch every ring-buffer record
    to its assembler, stream the binaries and module files it opens, publish it all and the
    stats; at a stop, drain what is left before detaching.

    Everything it asks of the machine comes in through the constructor, the real thing by
    default: ``probes`` builds the kernel side, ``containers`` names cgroups, ``enricher`` asks
    the container runtimes for names and images (its thread is started by
    :meth:`start_lookups`), ``host`` reads /proc and opens files, ``clock`` tells the time,
    ``publisher`` is the bus. Unit tests pass
    fakes of each, as supervisor's tests pass DummyOptions to its process code.
    """

    def __init__(
        self,
        config: Config,
        publisher: Publisher,
        ring_bytes: int = DEFAULT_RING_BYTES,
        *,
        probes: ProbesFactory = KernelProbes,
        containers: CgroupResolver | None = None,
        enricher: ContainerEnricher | None = None,
        host: Host = _HOST,
        clock: Clock = _CLOCK,
    ) -> None:
        self._config = config
        self._pub = publisher
        self._ring_bytes = ring_bytes
        self._make_probes = probes
        self._host = host
        self._clock = clock
        # bound once: the per-record path reads it for every record
        self._monotonic_ns = clock.monotonic_ns
        self._boot_to_epoch = clock.boot_to_epoch_ns()
        self._containers = (
            containers if containers is not None else CgroupResolver(rules=read_rules())
        )
        self._enricher = enricher if enricher is not None else ContainerEnricher()
        container_of = self._containers.container_of
        self._assembler = FileAssembler(self._boot_to_epoch, container_of)
        self._held_drops = HeldDrops()
        self._objects = ObjectAssembler()
        self._held = HeldImages()
        self._files = FileStreamer()
        self._readback = Readback(host.open_transfer_end)
        filtered = None
        if config.pcap.filtered:
            filtered = frozenset(
                e.removeprefix("net_packet_") for e in config.events if e.startswith("net_packet_")
            )
        self._packets = PacketAssembler(
            self._boot_to_epoch,
            container_of,
            filtered_protocols=filtered,
            scoped=scope_flags(config) != 0,
            enrich=self._enricher.keys,
            # the single-packet topic costs a send a packet: only while someone reads it
            legacy=lambda: publisher.subscribers(bus.TOPIC_NET_PACKET) > 0,
        )
        self._exec_seen: dict[tuple[int, int, int, int], None] = {}
        #: Per process, the file its last finit_module named (module_images.file_candidates).
        self._finit_paths: dict[int, bytes] = {}
        self._next_obj_id = USER_OBJ_ID_BASE
        self._probes: KernelProbes | None = None
        self._ring: RingReader | None = None
        self.counters: Counter[str] = Counter()
        self.state = "starting"
        self._started = self._monotonic_ns()

    def load(self) -> None:
        """Load the kernel side, excluding this process, the tracecap processes above it and
        the tracecap user's."""
        read = self._host.read_proc
        excluded = tracecap_ancestors(
            os.getpid(), lambda pid: read(pid, "stat"), lambda pid: read(pid, "cmdline")
        )
        uid = self._host.user_id(TRACECAP_USER)
        self._probes = self._make_probes(
            self._config, excluded, NO_UID if uid is None else uid, self._ring_bytes
        )
        # before anything attaches: which kinds this kernel cannot run, and why
        for entry in self._probes.hooks.values():
            if "refused" in entry:
                print(f"tracecap collector: not capturing {entry['refused']}", file=sys.stderr)
        scope = self._config.scope
        self._probes.set_cgroup_rules(
            self._containers.rules, scope.container_ids if scope.container else ()
        )
        self._put_cgroups()
        self._containers.kernel = self._probes.cgroup_container

    def _put_cgroups(self) -> None:
        """Give the kernel the cgroups that exist (it classifies those made after attach
        itself, bpf/containers.bpf.h), and the scope set those of them in ``--scope
        container``/``container=ID``/``host`` (for `host`, the set it leaves out)."""
        assert self._probes is not None
        scope = self._config.scope
        in_scope = None
        if scope.container is not None:
            ids = scope.container_ids

            def in_scope(cid: str) -> bool:
                return not ids or any(cid.startswith(p) for p in ids)

        self._probes.put_cgroup_states(self._containers.states(), in_scope)

    def start_lookups(self) -> None:
        """Start asking the container runtimes (a thread; the loop never waits for it)."""
        self._enricher.start()

    def attach(self) -> None:
        assert self._probes is not None
        # fails before any probe is attached
        self._ring = self._probes.rings(self._on_record, self._file_ring_budget)
        self._probes.attach()
        # the cgroups made between the walk at load and the attach of cgroup_mkdir
        self._put_cgroups()
        if "hook" in self._probes.hooks.get("network", {}):  # not where the kernel refused it
            self._adopt_sockets()
        self.state = "ready"

    def _adopt_sockets(self) -> None:
        """Owners for the sockets open before the capture (collector/preexisting_sockets.py),
        taken after attach so that a socket opened meanwhile is known to the kernel either way
        (the kernel's own owner wins)."""
        assert self._probes is not None
        for pid, cookie in self._host.socket_cookies():
            adopted = self._probes.adopt_socket(pid, cookie)
            self.counters[f"sockets_{adopted.result}"] += 1
            if adopted.result == "owned":
                self._send(self._packets.on_adopted(adopted))

    def _on_record(self, raw: bytes | memoryview) -> None:
        """One ring-buffer record. ``raw`` may be a view of ring memory, valid only during this
        call: file contents, the bulk, are decoded in place (the assembler copies the bytes it
        keeps); every other kind is copied first, because its decoder may keep slices."""
        now = self._monotonic_ns()
        try:
            kind = records.record_kind(raw)
            if kind == records.REC_FILE_CONT:  # the most frequent under load
                self.counters["events"] += 1
                out = self._assembler.on_cont_record(raw, now)
            elif kind == records.REC_FILE_DATA:
                out = self._assembler.on_data(records.decode_file_data(raw), now)
            else:
                out = self._on_other_record(kind, bytes(raw), now)
        except records.RecordError as exc:
            self.counters["decode_errors"] += 1
            print(f"tracecap collector: bad record: {exc}", file=sys.stderr)
            return
        self._send(out)

    def _on_other_record(self, kind: int, raw: bytes, now: int) -> list[Outgoing]:
        if kind == records.REC_FILE_EVENT:
            self.counters["events"] += 1
            return self._assembler.on_event(records.decode_file_event(raw), now)
        if kind == records.REC_FILE_XFER:
            self.counters["events"] += 1
            return self._on_xfer(records.decode_file_xfer(raw))
        if kind == records.REC_PACKET:
            return self._packets.on_packet(records.decode_packet(raw), now)
        if kind == records.REC_SOCK_OWNER:
            return self._packets.on_owner(records.decode_sock_owner(raw), now)
        if kind == records.REC_OBJ_DATA:
            return self._objects.on_data(records.decode_file_data(raw), now)
        if kind == records.REC_EXEC_EVENT:
            self.counters["events"] += 1
            return self._on_exec(records.decode_exec_event(raw), now)
        if kind in records.PROC_EVENTS:
            self.counters["events"] += 1
            return [self._on_proc(records.decode_proc_event(raw))]
        if kind in _OBJECT_DECODERS:
            self.counters["events"] += 1
            return self._on_object(_OBJECT_DECODERS[kind](raw), now)
        raise records.RecordError(f"unknown record kind {kind}")

    def _new_obj_id(self) -> int:
        self._next_obj_id += 1
        return self._next_obj_id

    def _on_exec(self, ev: records.ExecEvent, now: int) -> list[Outgoing]:
        """Publish the exec event and capture its files (collector/exec_files.py): from the
        kernel's copy when it sent one, else opened now (the process may be gone soon)."""
        container = self._containers.container_of(ev.hdr.cgroup_id)
        proc, files = exec_plan(ev, context_env(ev.hdr, self._boot_to_epoch, container))
        out = [Outgoing(bus.TOPIC_PROC, dict(proc, event="exec"), None)]
        if not self._config.exec:
            return out
        for f in files:
            out += self._capture_exec_file(f, now)
        return out

    def _on_proc(self, ev: records.ProcEvent) -> Outgoing:
        """A fork or a process exit, published on ``proc.`` (collector/envelopes.py)."""
        container = self._containers.container_of(ev.hdr.cgroup_id)
        return Outgoing(bus.TOPIC_PROC, proc_env(ev, self._boot_to_epoch, container), None)

    def _capture_exec_file(self, f: ExecFile, now: int) -> list[Outgoing]:
        if f.copy is not None:
            # every copy is published (the kernel sent it): the writer deduplicates
            env = f.env | {"obj_off": 0, "source": "page_cache"}
            return self._objects.on_event(f.copy.obj_id, bus.TOPIC_EXEC, env, f.size,
                                          f.copy.captured, now)  # fmt: skip
        if not f.error:
            if f.key in self._exec_seen:
                return []
            self._exec_seen[f.key] = None
            if len(self._exec_seen) > EXEC_SEEN_MAX:
                del self._exec_seen[next(iter(self._exec_seen))]
        env = f.env | {"obj_id": self._new_obj_id(), "obj_off": 0, "source": "file"}
        if f.error:
            self.counters["exec_unreadable"] += 1
            return [Outgoing(bus.TOPIC_EXEC, env | {"obj_len": 0, "last": True, "ok": False,
                                                    "error": f.error}, None)]  # fmt: skip
        _cgroup, dev, inode, ctime = f.key
        fd, why = self._host.open_verified(f.candidates, dev, inode, ctime)
        if fd is None:
            self.counters["exec_unreadable"] += 1
            return [Outgoing(bus.TOPIC_EXEC, env | {"obj_len": 0, "last": True, "ok": False,
                                                    "error": why}, None)]  # fmt: skip
        size = self._host.file_size(fd)
        self._files.add(FileJob(fd, bus.TOPIC_EXEC, env | {"obj_len": size}, size))
        return []

    def _on_object(
        self, ev: records.MemEvent | records.ModuleEvent | records.BpfEvent, now: int
    ) -> list[Outgoing]:
        container = self._containers.container_of(ev.hdr.cgroup_id)
        topic, env, length = object_env(ev, self._boot_to_epoch, container)
        if isinstance(ev, records.ModuleEvent):
            return self._on_module(ev, env, length, now)
        return self._objects.on_event(ev.obj_id, topic, env, length, ev.captured, now)

    def _on_module(
        self, ev: records.ModuleEvent, env: dict[str, Any], length: int, now: int
    ) -> list[Outgoing]:
        """finit_module loads from an fd, so the kernel sends no bytes: the collector opens the
        file itself, by the loader's fd or else by its path, if it is still the same file,
        unchanged. init_module's image comes from the kernel; when it lies in a file mapping,
        the file is opened now, while the mapping may still exist, for the bytes the kernel
        could not read (see collector/module_images.py)."""
        if ev.kread == "image":
            return self._held.hold(ev.obj_id) + self._objects.on_event(
                ev.obj_id, bus.TOPIC_MODULE, env, length, ev.captured, now
            )
        identity = FileIdentity(ev.dev, ev.inode, ev.ctime, ev.mtime, ev.size)
        if ev.syscall == "finit_module":
            self._finit_paths.pop(ev.hdr.pid, None)
            self._finit_paths[ev.hdr.pid] = ev.path
            if len(self._finit_paths) > FINIT_PATHS_MAX:
                del self._finit_paths[next(iter(self._finit_paths))]
        if ev.kread == "attempt":
            return self._on_kread_attempt(ev, env, length, now)
        if ev.syscall == "finit_module":
            return self._on_finit_module(ev, env, identity)
        finish = None
        if ev.mapping is not None:
            fd, why = None, why_not_from_file(ev.mapping)
            if not why:
                finit_path = self._finit_paths.get(ev.hdr.pid, b"")
                candidates = file_candidates(ev.hdr.pid, ev.mapping, ev.path, finit_path)
                fd, why = self._host.open_unchanged(candidates, identity)
            finish = functools.partial(self._finish_module, ev, identity, fd, why)
        return self._objects.on_event(
            ev.obj_id, bus.TOPIC_MODULE, env, length, ev.captured, now, finish
        )

    def _on_kread_attempt(
        self, ev: records.ModuleEvent, env: dict[str, Any], length: int, now: int
    ) -> list[Outgoing]:
        """The load whose image the kernel's hook sent: that image's messages, held until now,
        go out with this attempt's envelope (its ``ret``). If the image's event was dropped,
        the attempt is still recorded, its bytes all lost."""
        late = self._held.late(ev.obj_id)
        released = self._held.release(ev.obj_id, env)
        if late:
            # its image is published already, with ret -EINPROGRESS and CROWDED's error
            self.counters["module_returns_late"] += 1
        if released is not None:
            return released
        self.counters["module_images_unseen"] += 1
        return self._objects.on_event(ev.obj_id, bus.TOPIC_MODULE, env, length, 0, now)

    def _finish_module(
        self,
        ev: records.ModuleEvent,
        identity: FileIdentity,
        fd: int | None,
        why: str,
        env: dict[str, Any],
        lost: list[list[int]],
    ) -> list[Outgoing]:
        """End an init_module image from a file mapping: what the kernel could not read is
        read from the file (``fd``, opened at the event), or stays lost for reason ``why``."""
        assert ev.mapping is not None
        plan, rest = fill_plan(lost, ev.addr, ev.mapping)
        if fd is not None:
            self._files.add(FillJob(fd, bus.TOPIC_MODULE, env, plan, rest, identity))
            return []
        if lost:
            env["lost"] = lost
        if plan:
            env["fill_error"] = why
        return [Outgoing(bus.TOPIC_MODULE, env, None)]

    def _on_finit_module(
        self, ev: records.ModuleEvent, env: dict[str, Any], identity: FileIdentity
    ) -> list[Outgoing]:
        candidates = [f"/proc/{ev.hdr.pid}/fd/{ev.fd}"]
        if ev.path.startswith(b"/"):
            candidates.append(os.fsdecode(ev.path))
        env |= {"obj_id": ev.obj_id, "obj_off": 0}
        fd, why = self._host.open_unchanged(candidates, identity)
        if fd is None:
            return [Outgoing(bus.TOPIC_MODULE, env | {"obj_len": 0, "last": True, "ok": False,
                                                      "error": why}, None)]  # fmt: skip
        size = self._host.file_size(fd)
        self._files.add(FileJob(fd, bus.TOPIC_MODULE, env | {"obj_len": size}, size))
        return []

    def _on_xfer(self, xfer: records.FileXfer) -> list[Outgoing]:
        """A transfer that passed no user buffer: its bytes are read back from a file that
        still holds them (collector/readback.py), opened now while the process has it open."""
        ev = xfer.event
        topic, env = file_env(
            ev, self._boot_to_epoch, self._containers.container_of(ev.hdr.cgroup_id)
        )
        return self._readback.add(xfer, topic, env, env["ts"])

    @property
    def _streams_pending(self) -> int:
        """Files (binaries, module files, transfers to read back) waiting to be streamed."""
        return self._files.pending + self._readback.pending

    def _mem_skipped(self) -> list[Outgoing]:
        """At a stop: what the mem allowances of processes still running skipped that none of
        their events reported (an exit reports it from the kernel)."""
        if self._probes is None or not self._config.mem:
            return []
        now = self._clock.time_ns()
        out = []
        for skipped in self._probes.mem_skipped():
            try:
                comm = self._host.read_proc(skipped.tgid, "comm").rstrip(b"\n")
            except OSError:
                comm = b""
            container = self._containers.container_of(skipped.cgroup_id)
            env = mem_skipped_env(skipped, comm, now, container) | {
                "obj_id": self._new_obj_id(), "obj_off": 0, "obj_len": 0, "last": True,
            }  # fmt: skip
            out.append(Outgoing(bus.TOPIC_MEM, env, None))
        return out

    def _file_ring_budget(self) -> int:
        """How much of the file-contents ring one drain may take: what the bus's backlog has
        room for, less the runs and partial syscalls the assembler may add to it (one message
        each at most). A burst the writers cannot take as fast waits in the kernel's ring,
        sized for it (tracecap/options.py RING_MEM_SHARE), rather than being dropped from the
        bus's smaller backlog (publisher.BACKLOG_BYTES): tar | cat of 107 MB lost 256-512 KiB
        there per run once the ring held the whole burst."""
        return self._pub.backlog_room() - RING_BUDGET_MARGIN

    def _can_stream(self) -> bool:
        return self._streams_pending > 0 and self._pub.backlog_room() >= MESSAGE_BYTES

    def _stream_files(self) -> bool:
        """Read more of the queued binaries, module files and transfers, as much as the bus has
        room for: unlike kernel records they can wait for a slow writer instead of being
        dropped."""
        if not self._can_stream():
            return False
        budget = min(FILE_BUDGET_PER_POLL, self._pub.backlog_room())
        out = self._files.pump(budget)
        self._send(out, waited=True)
        used = sum(len(m.payload) for m in out if m.payload)
        self._send(self._readback.pump(max(budget - used, 0)), waited=True)
        return True

    def _send_dropped(self, final: bool = False) -> None:
        """Drain the kernel's loss table; its notices wait for the records the rings held
        before them (collector/drop_notices.py). ``final``: the rings are drained for good, so
        both halves of the table are taken and every notice goes out."""
        assert self._probes is not None and self._ring is not None
        self._held_drops.add(self._probes.dropped_ios(final), self._ring.mark())
        self._release_drops(force=final)

    def _release_drops(self, force: bool = False) -> None:
        assert self._ring is not None
        drops = self._held_drops.release(self._ring.reached, force)
        if drops:
            now = self._clock.time_ns()
            self._send([self._assembler.on_dropped(d, now) for d in drops])

    def _send(self, out: list[Outgoing], waited: bool = False) -> None:
        """Publish, with what the runtime said of the message's container (name, image, pod:
        collector/enricher.py) added to its envelope; ``waited`` as in Publisher.publish."""
        known = self._enricher.keys
        for msg in self._held.take(out):
            container_id = msg.env.get("container_id")
            if container_id:
                msg.env.update(known(container_id))
            self._pub.publish(msg.topic, msg.env, msg.payload, waited=waited)

    def stats_env(self) -> dict[str, Any]:
        """The stats message: the kernel's counters (summed, and drops per CPU), the
        collector's and the bus's. Its size is bounded (see fit_stats)."""
        return fit_stats(self._stats_env())

    def _stats_env(self) -> dict[str, Any]:
        per_cpu = self._probes.per_cpu_counters() if self._probes else []
        kernel = records.decode_counters(per_cpu) if per_cpu else {}
        if self._probes and self._config.mem:
            kernel |= self._probes.mem_counters()
        drops_per_cpu = {
            name: [records.decode_counters([row])[name] for row in per_cpu]
            for name in kernel
            if name.endswith("_drops")
        }
        return {
            "ts": self._clock.time_ns(),
            "pid": os.getpid(),
            "tid": threading.get_native_id(),
            "ppid": os.getppid(),
            "uid": os.getuid(),
            "comm": b"tracecap",
            "cgroup_id": 0,
            "container_id": "",
            "state": self.state,
            "uptime_s": round((self._monotonic_ns() - self._started) / 1e9, 3),
            "kernel": kernel,
            "kernel_drops_per_cpu": drops_per_cpu,
            "collector": {
                "events": self.counters["events"],
                "decode_errors": self.counters["decode_errors"],
                "orphan_chunks": self._assembler.orphan_chunks + self._objects.orphan_chunks,
                "orphan_ios": self._assembler.orphan_ios,
                "drop_notices_early": self._held_drops.early,
                "streams_evicted": self._assembler.streams_evicted,
                "lost_bytes": self._assembler.lost_bytes + self._objects.lost_bytes,
                "lost_unsized": self._assembler.lost_unsized,
                "exec_unreadable": self.counters["exec_unreadable"],
                "module_images_unseen": self.counters["module_images_unseen"],
                "module_returns_late": self.counters["module_returns_late"],
                "file_read_errors": self._files.read_errors,
                "file_read_bytes": self._files.read_bytes,
                **self._readback.stats(),
                "packets_filtered_out": self._packets.filtered_out,
                "packets_owner_unknown": self._packets.waited_in_vain,
                "packets_batched": self._packets.batched,
                "sockets_adopted": self.counters["sockets_owned"],
                "messages": self._pub.sent_messages,
                "bytes": self._pub.sent_bytes,
                "bus_dropped_messages": self._pub.dropped_messages,
                "bus_dropped_bytes": self._pub.dropped_bytes,
                "bus_backlog_bytes": self._pub.backlog_bytes(),
                **self._pub.peer_stats(),
                **self._enricher.stats(),
            },
            "container_lookup_errors": dict(self._enricher.errors),
            "published": self._pub.published(),
            "programs": self._probes.program_names if self._probes else [],
            "hooks": self._probes.hooks if self._probes else {},
            "kernel_features": self._probes.features if self._probes else [],
            "subscriptions": {
                t.decode(errors="replace"): n for t, n in self._pub.subscriptions.items()
            },
        }

    def run(self, stop: threading.Event) -> None:
        """Poll and publish until ``stop`` is set."""
        assert self._probes is not None and self._ring is not None
        ring = self._ring
        monotonic_ns = self._monotonic_ns
        next_stats = 0
        next_trim = monotonic_ns() + TRIM_INTERVAL_NS
        wait_ms = POLL_MS
        try:
            while not stop.is_set():
                waiting = self._streams_pending or ring.held_back()
                took = ring.poll(0 if self._can_stream() else 1 if waiting else wait_ms)
                wait_ms = next_wait_ms(wait_ms, took)
                self._send(self._assembler.flush_runs())
                if self._held_drops:
                    self._release_drops()
                self._stream_files()
                self._send(self._packets.expire(monotonic_ns()))
                self._pub.maintain()
                now = monotonic_ns()
                if now >= next_stats:
                    self._send_dropped()
                    if not ring.held_back():
                        # behind (the file ring's budget spent), a stream's continuations and
                        # a syscall's chunks may still wait unread: not stale, not lost
                        self._send(self._assembler.expire(monotonic_ns()))
                    self._send(self._objects.expire(monotonic_ns()))
                    self._pub.publish(bus.TOPIC_STATS, self.stats_env())
                    next_stats = now + STATS_INTERVAL_NS
                if now >= next_trim:
                    release_free_heap()
                    next_trim = now + TRIM_INTERVAL_NS
            # Drain what the kernel already holds, and the files already opened, before detaching:
            # as fast as the writers take it, then whatever is left, whole or as counted losses.
            ring.consume()
            self._send(self._packets.flush())
            deadline = monotonic_ns() + RING_STOP_NS
            while ring.pending() and monotonic_ns() < deadline:
                self._send(self._assembler.flush_runs())
                self._send(self._packets.flush())
                self._pub.maintain()
                if not ring.consume():
                    self._clock.sleep(0.001)  # the writers are still taking what was sent
            if ring.pending():
                ring.consume(bounded=False)
            self._send_dropped(final=True)
            self._send(self._mem_skipped())
            self._send(self._assembler.expire(monotonic_ns(), force=True))
            self._send(self._assembler.announce_extents())
            self._send(self._objects.expire(monotonic_ns(), force=True))
            self._send(self._held.release_all())
            self._send(self._packets.expire(monotonic_ns(), force=True))
            deadline = monotonic_ns() + STOP_STREAMING_NS
            while self._streams_pending and monotonic_ns() < deadline:
                self._pub.maintain()  # a stalled subscriber must not hold the last files
                if not self._stream_files():
                    self._clock.sleep(0.001)  # the writers are still taking what was sent
            self._send(self._readback.abandon("capture stopped before it was read back"))
        finally:
            self._files.close()
            self._readback.close()

    def close(self) -> None:
        """Publish the last stats (state "stopped"), then detach: rings first, then programs."""
        self.state = "stopped"
        self._enricher.stop()
        try:
            self._pub.publish(bus.TOPIC_STATS, self.stats_env())
        finally:
            if self._ring:
                self._ring.close()
                self._ring = None
            if self._probes:
                self._probes.close()
                self._probes = None


#: The packed ``stats.`` envelope stays this far under the bus's limit (the publisher adds
#: ``v``, ``epoch`` and ``seq``, a few bytes).
STATS_MAX_BYTES = bus.MAX_ENVELOPE_BYTES - 1024


def fit_stats(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` if it packs under STATS_MAX_BYTES; else without its one part that grows with
    the host: the drops per CPU (14 lists of one number per CPU) become ``{"cpu": n}`` of the
    CPUs that dropped, then, if even that is too large, are left out and
    ``kernel_drops_per_cpu_omitted`` is set. Every other part is bounded by construction
    (topics, programs, counters; subscriptions per prefix that can match a topic)."""
    if len(bus.encode(bus.TOPIC_STATS, env)[1]) <= STATS_MAX_BYTES:
        return env
    sparse = {
        name: {str(cpu): n for cpu, n in enumerate(values) if n}
        for name, values in env["kernel_drops_per_cpu"].items()
    }
    env = dict(env, kernel_drops_per_cpu=sparse)
    if len(bus.encode(bus.TOPIC_STATS, env)[1]) <= STATS_MAX_BYTES:
        return env
    return dict(env, kernel_drops_per_cpu={}, kernel_drops_per_cpu_omitted=True)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM (supervisord's stop), SIGINT and SIGHUP set."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    return stop


def run_collector(
    config: Config,
    run_dir: str,
    wait_for: Counter[bytes],
    ring_bytes: int = DEFAULT_RING_BYTES,
    *,
    publisher: Callable[[str], Publisher] = Publisher,
    collector: Callable[[Config, Publisher, int], Collector] = Collector,
    stop: threading.Event | None = None,
) -> int:
    """The collector process: bind the bus, load, wait for the subscribers ``wait_for`` names,
    attach, run until stopped (by a signal unless ``stop`` is given), close. Returns the exit
    status; tests pass a fake ``publisher`` and a ``collector`` built over fakes."""
    if stop is None:
        stop = stop_on_signals()
    try:
        pub = publisher(run_dir)
    except BusError as exc:
        print(f"tracecap collector: error: {exc}", file=sys.stderr)
        return 1
    service: Collector | None = None
    try:
        print(
            f"tracecap collector: bus on {pub.endpoint}, waiting for {dict(wait_for)}",
            file=sys.stderr,
        )
        try:
            service = collector(config, pub, ring_bytes)  # reads the container naming rules
            service.load()  # the verifier runs while the writers are still starting
            service.start_lookups()
            pub.wait_for(wait_for, SUBSCRIBER_TIMEOUT_S, stop.is_set)
            service.attach()
        except (ProbeError, BpfError, RingReaderError, BusError, RuleError, OSError) as exc:
            print(f"tracecap collector: error: {exc}", file=sys.stderr)
            return 1
        print(
            f"tracecap collector: attached {len(service.stats_env()['programs'])} programs",
            file=sys.stderr,
        )
        pub.publish(bus.TOPIC_STATS, service.stats_env())
        release_free_heap()
        service.run(stop)
    finally:
        if service is not None:
            service.close()
        pub.close()
    return 0
