"""The collector service over fakes of everything it asks of the machine: the kernel side
(probes and their rings), the cgroup resolver, /proc and the files it opens, the clocks and the
bus. Records go in as the ring reader lends them (views of memory reused once the callback
returns); what comes out is what the fake publisher was handed, in order.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bpf import records
from collector import exec_files, module_images, service
from collector.cgroup_rules import CgroupState
from collector.containers import DEFAULT
from collector.enricher import ContainerEnricher
from collector.host import Clock
from collector.module_images import PAGE_SIZE, WRITTEN_PRIVATE
from collector.object_files import MESSAGE_BYTES, FileIdentity
from collector.probes import ProbeError
from collector.service import Collector, run_collector
from tests.support import records as build
from tests.support.envelopes import stats_env as stats_envelope
from tracecap import bus, options

ROOT = Path(__file__).resolve().parents[3]
PID, CGROUP = 4242, 77
EPOCH_NS = 1_700_000_000_000_000_000
BOOTTIME_NS = 5_000_000_000
BOOT_TO_EPOCH = EPOCH_NS - BOOTTIME_NS
TS = 1_000
DEV, INODE, CTIME = 0x800001, 9, 1234


# --- records, as the kernel sends them ---------------------------------------------------------

#: The header of every record made here but packets (which carry their owner instead).
HEADER = {
    "ts": TS, "pid": PID, "tid": PID + 1, "ppid": 1, "uid": 1000, "cgroup_id": CGROUP,
    "comm": b"app",
}  # fmt: skip


def file_event(io_id: int, io_len: int, pos: int) -> bytes:
    return build.file_event(
        **HEADER, io_id=io_id, io_len=io_len, pos=pos, inode=INODE, dev=DEV, mode=0o100644,
        fd=3, direction=records.DIR_WRITE, path=b"/tmp/f",
    )  # fmt: skip


def file_cont(io_id: int, prev_io_id: int, pos: int, data: bytes) -> bytes:
    """A continuation with its first chunk, which here is its every byte."""
    head = build.file_cont(ts=TS, io_id=io_id, prev_io_id=prev_io_id, io_len=len(data), pos=pos)
    return head + build.file_data(io_id, 0, data)


def file_xfer(io_id: int, io_len: int, pos: int, src_pos: int) -> bytes:
    """A copy_file_range of ``io_len`` bytes from fd 5 at ``src_pos`` to /tmp/f at ``pos``."""
    return build.file_xfer(
        **HEADER, io_id=io_id, io_len=io_len, pos=pos, inode=INODE, dev=DEV, mode=0o100644,
        fd=3, direction=records.DIR_WRITE, path=b"/tmp/f",
        syscall=records.SYSCALLS.index("copy_file_range"), other_path=b"/tmp/src",
        src={"inode": 8, "dev": DEV, "mode": 0o100644, "fd": 5, "pos": src_pos},
        dst={"inode": INODE, "dev": DEV, "mode": 0o100644, "fd": 3, "pos": pos},
    )  # fmt: skip


def obj_data(obj_id: int, data: bytes) -> bytes:
    return build.file_data(obj_id, 0, data, kind=records.REC_OBJ_DATA)


def obj_data_at(obj_id: int, off: int, data: bytes, **values: Any) -> bytes:
    return build.file_data(obj_id, off, data, kind=records.REC_OBJ_DATA, **values)


def exec_event(
    *, pid: int = PID, cgroup_id: int = CGROUP, inode: int = INODE, ctime: int = CTIME,
    filename: bytes = b"/usr/bin/app", path: bytes = b"/usr/bin/app", **values: Any,
) -> bytes:  # fmt: skip
    return build.exec_event(
        **(HEADER | {"pid": pid, "cgroup_id": cgroup_id}), inode=inode, ctime=ctime, dev=DEV,
        mode=0o100755, filename=filename, argv=b"app\0-v\0", path=path, path_len=len(path),
        **values,
    )  # fmt: skip


def mem_event(obj_id: int, length: int, captured: int, *, dump: str = "sent") -> bytes:
    return build.mem_event(
        **HEADER, obj_id=obj_id, addr=0x7F0000, len=length, size=length, captured=captured,
        prot_before=3, prot_after=5, syscall=records.MEM_SYSCALLS.index("mprotect"),
        alert=4, dump=records.MEM_DUMPS.index(dump),
    )  # fmt: skip


def module_event(
    obj_id: int, syscall: str, *, length: int = 0, fd: int = -1, path: bytes = b""
) -> bytes:
    return build.module_event(
        **HEADER, obj_id=obj_id, len=length, inode=INODE, dev=DEV, fd=fd,
        syscall=records.MODULE_SYSCALLS.index(syscall), params=b"debug=1", path=path,
    )  # fmt: skip


def bpf_event(obj_id: int, insn_cnt: int, captured: int) -> bytes:
    return build.bpf_event(
        **HEADER, obj_id=obj_id, ret=4, captured=captured, insn_cnt=insn_cnt, prog_type=1,
        prog_name=b"probe",
    )  # fmt: skip


def packet(data: bytes, *, cookie: int = 0, owner_pid: int = 0) -> bytes:
    """A packet; ``owner_pid`` 0 means the kernel did not know its socket's owner."""
    return build.packet(
        data, ts=TS, cookie=cookie, cgroup_id=CGROUP, orig_len=len(data), ifindex=2,
        owner_pid=owner_pid, owner_tid=owner_pid, owner_comm=b"srv" if owner_pid else b"",
    )  # fmt: skip


def sock_owner(cookie: int, pid: int) -> bytes:
    return build.sock_owner(**(HEADER | {"pid": pid}), cookie=cookie, in_scope=1)


# --- fakes ------------------------------------------------------------------------------------


def lend(callback: Any, raw: bytes) -> None:
    """Hand ``raw`` over as the ring reader does: a view of memory that is reused (here,
    overwritten) as soon as the callback returns."""
    memory = bytearray(raw)
    callback(memoryview(memory))
    memory[:] = b"\xee" * len(memory)


class FakeRing:
    def __init__(self, log: list, callback: Any) -> None:
        self.log = log
        self.callback = callback
        self.held: list[bytes] = []  # records the kernel wrote and nobody read yet
        self.read = 0  # records handed to the callback so far
        self.paused = False  # the file ring's budget is spent: polls leave records there

    def _deliver(self) -> None:
        while self.held:
            lend(self.callback, self.held.pop(0))
            self.read += 1

    def mark(self) -> tuple[int, ...]:
        return (self.read + len(self.held),)

    def reached(self, mark: tuple[int, ...]) -> bool:
        return self.read >= mark[0]

    def poll(self, timeout_ms: int) -> int:
        self.log.append(f"poll {timeout_ms}")
        n = 0 if self.paused else len(self.held)
        if not self.paused:
            self._deliver()
        return n

    def consume(self, bounded: bool = True) -> int:
        self.log.append("consume" if bounded else "consume unbounded")
        n = len(self.held)
        self._deliver()
        return n

    def pending(self) -> bool:
        return bool(self.held)

    def held_back(self) -> bool:
        return self.paused and bool(self.held)

    def close(self) -> None:
        self.log.append("ring.close")


class FakeProbes:
    def __init__(self, log: list, config: Any, excluded: Any, uid: int, ring_bytes: int) -> None:
        self.log = log
        self.args = (list(excluded), uid, ring_bytes)
        self.ring: FakeRing | None = None
        self.drops: list[records.DroppedIo] = []
        self.per_cpu: list[list[int]] = []
        self.mem: dict[str, int] = {}
        self.skipped: list[records.MemSkipped] = []
        self.program_names = ["tc_fork", "tc_proc_exit"]
        self.hooks: dict[str, dict[str, str]] = {
            kind: {"hook": "syscall_tracepoints"} for kind in config.kinds()
        }
        self.features = ["btf", "map:ringbuf"]
        self.scope_cgroups: set[int] | None = None
        self.states: dict[int, CgroupState] = {}
        self.rules: Any = None
        self.puts: list[str] = []
        log.append("probes.new")

    def rings(self, callback: Any, file_budget: Any = None) -> FakeRing:
        self.log.append("rings")
        self.ring = FakeRing(self.log, callback)
        self.file_budget = file_budget
        return self.ring

    def attach(self) -> None:
        self.log.append("attach")

    def set_cgroup_rules(self, rules: Any, scope_ids: tuple[str, ...]) -> None:
        self.rules = (rules, scope_ids)

    def put_cgroup_states(self, states: Any, in_scope: Any) -> None:
        self.puts.append("after attach" if "attach" in self.log else "before attach")
        states = list(states)
        self.states.update(states)
        if in_scope is not None:
            self.scope_cgroups = {
                i for i, st in states if st.container_id and in_scope(st.container_id)
            }

    def cgroup_container(self, cgroup_id: int) -> str | None:
        st = self.states.get(cgroup_id)
        return st.container_id if st is not None else None

    def adopt_socket(self, pid: int, cookie: int) -> records.Adopted:
        """The kernel's answer: cookies below 100 it knew already, others it records."""
        self.log.append(f"adopt {pid} {cookie}")
        if cookie < 100:
            return records.Adopted("known", cookie, 0, 0, 0, 0, 0, False, b"")
        return records.Adopted("owned", cookie, 77, CGROUP, pid, 1, 0, True, b"nginx")

    def dropped_ios(self, final: bool = False) -> list[records.DroppedIo]:
        drops, self.drops = self.drops, []
        return drops

    def per_cpu_counters(self) -> list[list[int]]:
        return self.per_cpu

    def mem_counters(self) -> dict[str, int]:
        return self.mem

    def mem_skipped(self) -> list[records.MemSkipped]:
        return self.skipped

    def close(self) -> None:
        self.log.append("probes.close")


@dataclass
class Sent:
    topic: bytes
    env: dict[str, Any]
    payload: Any


class FakePublisher:
    endpoint = "ipc:///fake/bus.sock"

    def __init__(self, log: list) -> None:
        self.log = log
        self.sent: list[Sent] = []
        self.room = 16 << 20
        self.subscriptions: Counter[bytes] = Counter({b"file.write.": 1})
        self.sent_messages = self.sent_bytes = 0
        self.dropped_messages = self.dropped_bytes = 0
        self.maintained = 0

    def publish(
        self, topic: bytes, env: dict[str, Any], payload: Any = None, *, waited: bool = False
    ) -> None:
        self.sent.append(Sent(topic, env, payload))
        self.log.append(self.sent[-1])
        self.sent_messages += 1
        self.sent_bytes += len(payload) if payload is not None else 0

    def backlog_room(self) -> int:
        return self.room

    def subscribers(self, topic: bytes) -> int:
        return sum(n for prefix, n in self.subscriptions.items() if topic.startswith(prefix))

    def backlog_bytes(self) -> int:
        return 123

    def poll_subscriptions(self) -> None:
        pass

    def maintain(self) -> None:
        self.maintained += 1

    def peer_stats(self) -> dict[str, Any]:
        return {"bus_peers": 2, "bus_peers_dropped": {"stalled": 1}}

    def published(self) -> dict[str, int]:
        return dict(Counter(m.topic.decode() for m in self.sent))

    def wait_for(self, wanted: Counter[bytes], timeout: float, stop: Any) -> None:
        self.log.append("wait_for")

    def close(self) -> None:
        self.log.append("pub.close")


class FakeHost:
    """/proc as a dict, and files that exist only at the paths ``files`` gives them."""

    def __init__(self) -> None:
        self.proc: dict[tuple[int, str], bytes] = {}
        self.files: dict[str, Path] = {}
        self.users: dict[str, int] = {}
        self.opened: list[list[str]] = []
        self.identities: list[FileIdentity] = []
        self.changed = ""
        self.sockets: list[tuple[int, int]] = []

    def read_proc(self, pid: int, name: str) -> bytes:
        try:
            return self.proc[pid, name]
        except KeyError:
            raise FileNotFoundError(f"/proc/{pid}/{name}") from None

    def open_verified(
        self, candidates: list[str], dev: int, inode: int, ctime: int
    ) -> tuple[int | None, str]:
        self.opened.append(list(candidates))
        for path in candidates:
            if path in self.files:
                return os.open(self.files[path], os.O_RDONLY), ""
        return None, "gone"

    def open_unchanged(
        self, candidates: list[str], identity: FileIdentity
    ) -> tuple[int | None, str]:
        """As the real one, but a file is unchanged unless ``changed`` says how it is not."""
        self.identities.append(identity)
        fd, why = self.open_verified(candidates, identity.dev, identity.inode, identity.ctime)
        if fd is not None and self.changed:
            os.close(fd)
            return None, self.changed
        return fd, why

    def file_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def socket_cookies(self) -> list[tuple[int, int]]:
        return list(self.sockets)

    def open_transfer_end(self, candidates: list[str], end: Any) -> tuple[int | None, str]:
        self.opened.append(list(candidates))
        for path in candidates:
            if path in self.files:
                return os.open(self.files[path], os.O_RDONLY), ""
        return None, "gone"

    def user_id(self, name: str) -> int | None:
        return self.users.get(name)


class FakeContainers:
    def __init__(self, containers: dict[int, str] | None = None) -> None:
        self.containers = containers or {}

    def container_of(self, cgroup_id: int) -> str:
        return self.containers.get(cgroup_id, "")

    rules = DEFAULT
    kernel = None

    def states(self) -> list[tuple[int, CgroupState]]:
        return [(i, CgroupState(cid, False)) for i, cid in self.containers.items()]


class FakeTime:
    """Monotonic time that moves only when the service sleeps or a test says so."""

    def __init__(self) -> None:
        self.now = 3_000_000_000
        self.slept = 0.0

    def monotonic_ns(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += int(seconds * 1e9)

    def clock(self) -> Clock:
        return Clock(
            monotonic_ns=self.monotonic_ns,
            time_ns=lambda: EPOCH_NS,
            boottime_ns=lambda: BOOTTIME_NS,
            sleep=self.sleep,
        )


@dataclass
class Rig:
    config: options.Config
    log: list = field(default_factory=list)
    host: FakeHost = field(default_factory=FakeHost)
    containers: FakeContainers = field(default_factory=FakeContainers)
    time: FakeTime = field(default_factory=FakeTime)
    #: no runtime to ask unless a test gives one (the machine's own sockets are never asked)
    enricher: ContainerEnricher = field(default_factory=lambda: ContainerEnricher([]))
    probes: FakeProbes | None = None
    #: kinds the fake kernel refuses (the collector's probe would not load their programs)
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.pub = FakePublisher(self.log)

    def make_probes(self, *args: Any) -> FakeProbes:
        self.probes = FakeProbes(self.log, *args)
        for kind in self.refused:
            self.probes.hooks[kind] = {"refused": f"{kind}: needs what this kernel lacks"}
        return self.probes

    def collector(self, ring_bytes: int = 1 << 20) -> Collector:
        return Collector(
            self.config, self.pub, ring_bytes, probes=self.make_probes,
            containers=self.containers, enricher=self.enricher, host=self.host,
            clock=self.time.clock(),
        )  # fmt: skip

    def started(self) -> Collector:
        collector = self.collector()
        collector.load()
        collector.attach()
        return collector

    def feed(self, *raws: bytes) -> None:
        assert self.probes is not None and self.probes.ring is not None
        for raw in raws:
            lend(self.probes.ring.callback, raw)

    def sent(self, *topics: bytes) -> list[Sent]:
        """What was published, stats left out unless asked for."""
        if topics:
            return [m for m in self.pub.sent if m.topic in topics]
        return [m for m in self.pub.sent if m.topic != bus.TOPIC_STATS]


def config(*kinds: str, scope: tuple[str, ...] = ()) -> options.Config:
    argv = [arg for kind in kinds for arg in ("--capture", kind)]
    return options.parse_args(argv + [arg for s in scope for arg in ("--scope", s)])


def steps(log: list) -> list[str]:
    """The log of calls to the fakes, messages named by topic and what tells them apart."""
    named = []
    for entry in log:
        if isinstance(entry, Sent):
            name = entry.topic.decode().rstrip(".")
            if entry.topic == bus.TOPIC_STATS:
                name += f" {entry.env['state']}"
            elif entry.topic == bus.TOPIC_NET_PACKETS:
                name += " of " + ",".join(str(c["pid"]) for c in entry.env["contexts"])
            elif "lost_ios" in entry.env:
                name += " drop notice"
            elif "extent" in entry.env:
                name += f" extent {entry.env['extent']}"
            entry = name
        named.append(entry)
    return named


def stop(collector: Collector) -> None:
    """What a signal leads to: ``run`` sees the stop, drains, and ``close`` follows."""
    done = threading.Event()
    done.set()
    collector.run(done)
    collector.close()


# --- importing ----------------------------------------------------------------------------------


def test_importing_the_service_loads_no_libbpf():
    code = (
        "import collector.service, collector.probes\n"
        "print(sum('libbpf' in line for line in open('/proc/self/maps')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "0"


# --- record dispatch: every kind --------------------------------------------------------------


def _one(sent: list[Sent]) -> Sent:
    """The one message a record led to, besides the file extents announced at stop."""
    sent = [m for m in sent if "extent" not in m.env]
    assert len(sent) == 1, sent
    return sent[0]


def _check_file_event(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)  # its bytes never came: the stop closes it, all lost
    assert (msg.topic, msg.env["lost"], msg.payload) == (bus.TOPIC_FILE_WRITE, [[100, 105]], None)
    assert (msg.env["ts"], msg.env["path"]) == (TS + BOOT_TO_EPOCH, b"/tmp/f")
    # then, at stop, how far the file reaches: after every message about it
    assert sent[-1].env["extent"] == 105 and sent[-1].env["path"] == b"/tmp/f"


def _check_file_data(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (msg.topic, bytes(msg.payload), msg.env["off"]) == (bus.TOPIC_FILE_WRITE, b"hello", 100)
    assert "lost" not in msg.env


def _check_file_cont(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (bytes(msg.payload), msg.env["io_count"], msg.env["io_len"]) == (b"helloabc", 2, 8)


def _check_file_xfer(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)  # read back from the source, through the process's fd
    assert (msg.topic, bytes(msg.payload), msg.env["off"]) == (bus.TOPIC_FILE_WRITE, b"cdef", 100)
    assert (msg.env["source"], msg.env["syscall"], msg.env["io_len"]) == (
        "readback", "copy_file_range", 4,
    )  # fmt: skip
    assert rig.host.opened == [[f"/proc/{PID}/fd/5", "/tmp/src"]]


def _check_obj_data(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (msg.topic, msg.payload, msg.env["obj_id"]) == (bus.TOPIC_MEM, b"\x90\x90\xc3\x00", 500)
    assert (msg.env["last"], "lost" in msg.env) == (True, False)


def _check_mem_event(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (msg.topic, msg.env["syscall"], msg.env["lost"]) == (bus.TOPIC_MEM, "mprotect", [[0, 8]])
    assert (msg.env["alert"], msg.env["dump"]) == ("Protection changed from W to E!", "sent")


def _check_module_event(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (msg.topic, msg.env["syscall"], msg.env["lost"]) == (
        bus.TOPIC_MODULE, "init_module", [[0, 10]],
    )  # fmt: skip
    assert rig.host.opened == []  # init_module's bytes come from the kernel


def _check_bpf_event(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    assert (msg.topic, msg.payload, msg.env["prog_name"]) == (bus.TOPIC_BPF, INSNS, b"probe")


def _check_exec_event(sent: list[Sent], rig: Rig) -> None:
    proc, exe = sent
    assert (proc.topic, proc.env["event"], proc.env["argv"]) == (
        bus.TOPIC_PROC, "exec", [b"app", b"-v"],
    )  # fmt: skip
    assert (proc.env["path"], proc.env["pid"], proc.env["ctime"]) == (b"/usr/bin/app", PID, CTIME)
    assert (exe.topic, exe.env["ok"], exe.env["error"]) == (bus.TOPIC_EXEC, False, "gone")


def _check_fork(sent: list[Sent], rig: Rig) -> None:
    msg = _one(sent)
    env = msg.env
    assert (msg.topic, env["event"], env["pid"], env["comm"]) == (
        bus.TOPIC_PROC,
        "fork",
        PID,
        b"sh",
    )
    assert (env["child_pid"], env["child_ns_pid"]) == (PID + 1, 3)
    assert env["child_start"] - env["ts"] == 900 - 1000  # both moved to the epoch alike


def _check_exit(sent: list[Sent], rig: Rig) -> None:
    env = _one(sent).env
    assert (env["event"], env["pid"], env["wait_status"]) == ("exit", PID, (3 << 8))
    assert (env["exit_code"], env["signal"]) == (3, 0)


def packets_in(sent: list[Sent]) -> list[bus.Message]:
    """The packets of the ``net.packets.`` batches published, one message each."""
    return [
        one
        for m in sent
        if m.topic == bus.TOPIC_NET_PACKETS
        for one in bus.split_packets(
            bus.Message(m.topic, {**m.env, "v": bus.VERSION, "epoch": 1, "seq": 0}, m.payload)
        )
    ]


def _check_packet(sent: list[Sent], rig: Rig) -> None:
    assert _one(sent).topic == bus.TOPIC_NET_PACKETS
    (msg,) = packets_in(sent)
    assert (msg.payload, msg.env["pid"]) == (b"\x01\x02\x03", 900)


def _check_sock_owner(sent: list[Sent], rig: Rig) -> None:
    assert _one(sent).topic == bus.TOPIC_NET_PACKETS
    (msg,) = packets_in(sent)  # the packet waited for its socket's owner, which came
    assert (msg.payload, msg.env["pid"]) == (b"\x05\x06", 901)


INSNS = bytes(range(16))
#: kind -> (capture, the records that show it, the check of what is published once the
#: collector stops, events counted).
DISPATCH = {
    records.REC_FILE_EVENT: ("write", [file_event(11, 5, 100)], _check_file_event, 1),
    records.REC_FILE_DATA: (
        "write", [file_event(11, 5, 100), build.file_data(11, 0, b"hello")], _check_file_data, 1,
    ),
    records.REC_FILE_CONT: (
        "write",
        [file_event(11, 5, 100), build.file_data(11, 0, b"hello"), file_cont(12, 11, 105, b"abc")],
        _check_file_cont,
        2,
    ),
    records.REC_FILE_XFER: ("write", [file_xfer(11, 4, 100, 2)], _check_file_xfer, 1),
    records.REC_OBJ_DATA: (
        "mem",
        [mem_event(500, 4, 4), obj_data(500, b"\x90\x90\xc3\x00")],
        _check_obj_data,
        1,
    ),
    records.REC_MEM_EVENT: ("mem", [mem_event(501, 8, 0)], _check_mem_event, 1),
    records.REC_MODULE_EVENT: (
        "module", [module_event(600, "init_module", length=10)], _check_module_event, 1,
    ),
    records.REC_BPF_EVENT: (
        "bpf",
        [bpf_event(700, 2, 16), obj_data(700, INSNS)],
        _check_bpf_event,
        1,
    ),
    records.REC_EXEC_EVENT: ("exec", [exec_event()], _check_exec_event, 1),
    # forks and exits come whatever is captured
    records.REC_FORK: (
        "write",
        [build.proc_event(pid=PID, comm=b"sh", ts=1000, child_pid=PID + 1, child_ns_pid=3,
                          child_start=900)],
        _check_fork, 1,
    ),
    records.REC_EXIT: (
        "write", [build.proc_event(kind=records.REC_EXIT, pid=PID, exit_code=3 << 8)],
        _check_exit, 1,
    ),
    records.REC_PACKET: ("network", [packet(b"\x01\x02\x03", owner_pid=900)], _check_packet, 0),
    records.REC_SOCK_OWNER: (
        "network", [packet(b"\x05\x06", cookie=55), sock_owner(55, pid=901)], _check_sock_owner, 0,
    ),
}  # fmt: skip


def test_sockets_open_before_the_capture_get_their_owner_after_attach():
    """A listener's handshake carries its cookie; once adopted, its packets name the owner
    (the process's main thread), and the kernel's own owner wins."""
    rig = Rig(config("network"))
    rig.host.sockets = [(4000, 500), (4001, 55)]
    collector = rig.started()
    assert steps(rig.log)[-3:] == ["attach", "adopt 4000 500", "adopt 4001 55"]
    rig.feed(packet(b"\x16", cookie=500))
    stop(collector)
    (msg,) = packets_in(rig.sent())
    assert (msg.env["pid"], msg.env["tid"], msg.env["comm"]) == (4000, 4000, b"nginx")
    assert msg.env["start_time"] == 77 + rig.time.clock().boot_to_epoch_ns()
    assert (collector.counters["sockets_owned"], collector.counters["sockets_known"]) == (1, 1)


def test_without_network_capture_no_socket_is_adopted():
    rig = Rig(config("write"))
    rig.host.sockets = [(4000, 500)]
    stop(rig.started())
    assert not any(str(s).startswith("adopt") for s in steps(rig.log))


def test_where_the_kernel_refuses_network_no_socket_is_adopted():
    """Debian's 6.1 refuses network (tc_sock_adopt's kfuncs are 6.2): its program is not
    loaded, and running it stopped the collector ("cannot run tc_sock_adopt: Bad file
    descriptor") after every other kind had loaded."""
    rig = Rig(config("write", "network"), refused=("network",))
    rig.host.sockets = [(4000, 500)]
    stop(rig.started())
    assert not any(str(s).startswith("adopt") for s in steps(rig.log))


def test_every_record_kind_has_a_dispatch_case():
    kinds = {value for name, value in vars(records).items() if name.startswith("REC_")}
    assert set(DISPATCH) == kinds


@pytest.mark.parametrize("kind", sorted(DISPATCH))
def test_dispatch(kind, tmp_path):
    """Each record goes to its decoder and assembler; they are lent views of memory that is
    overwritten after each call, so a message that kept a view would show the garbage."""
    capture, raws, check, events = DISPATCH[kind]
    rig = Rig(config(capture))
    (tmp_path / "src").write_bytes(b"abcdefgh")
    rig.host.files[f"/proc/{PID}/fd/5"] = tmp_path / "src"
    collector = rig.started()
    rig.feed(*raws)
    stop(collector)
    check(rig.sent(), rig)
    assert collector.counters["events"] == events
    assert collector.counters["decode_errors"] == 0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x01\x00", "record of 2 bytes has no kind"),
        (build.pack(records.TC_HDR, kind=99), "unknown record kind 99"),
        (file_event(1, 1, 0)[:100], "file event of 100 bytes"),
    ],
)  # fmt: skip
def test_a_bad_record_is_counted_and_skipped(raw, why, capsys):
    rig = Rig(config("write"))
    collector = rig.started()
    rig.feed(raw, file_event(11, 5, 100), build.file_data(11, 0, b"hello"))
    stop(collector)
    assert collector.counters["decode_errors"] == 1
    assert "tracecap collector: bad record: " + why in capsys.readouterr().err
    assert [bytes(m.payload) for m in rig.sent() if "extent" not in m.env] == [b"hello"]


# --- executed binaries: opened once per (cgroup, dev, inode, ctime) ------------------------------


def exec_rig(tmp_path: Path, *kinds: str) -> tuple[Rig, Collector]:
    binary = tmp_path / "app"
    binary.write_bytes(b"\x7fELF" + bytes(range(256)) * 10)
    rig = Rig(config(*kinds))
    rig.host.files["/usr/bin/app"] = binary
    return rig, rig.started()


def test_an_executed_binary_is_streamed_once_per_cgroup_dev_inode_ctime(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    rig.feed(
        exec_event(),
        exec_event(pid=PID + 10),  # the same binary again
        exec_event(cgroup_id=CGROUP + 1),  # in another container
        exec_event(ctime=CTIME + 1),  # changed since
        exec_event(inode=INODE + 1),  # another file
    )
    stop(collector)
    assert len(rig.sent(bus.TOPIC_PROC)) == 5
    assert rig.host.opened == [["/proc/4242/exe", "/usr/bin/app"]] * 4
    content = (tmp_path / "app").read_bytes()
    by_obj: dict[int, list[Sent]] = {}
    for msg in rig.sent(bus.TOPIC_EXEC):
        by_obj.setdefault(msg.env["obj_id"], []).append(msg)
    assert sorted(by_obj) == [service.USER_OBJ_ID_BASE + n for n in (1, 2, 3, 4)]
    for messages in by_obj.values():
        assert b"".join(m.payload for m in messages if m.payload) == content
        assert [m.env["last"] for m in messages] == [False, True]
        assert messages[0].env["obj_len"] == len(content)
    assert collector.counters["events"] == 5


def test_without_exec_capture_nothing_is_opened(tmp_path):
    rig, collector = exec_rig(tmp_path, "write")
    rig.feed(exec_event())
    stop(collector)
    assert [m.topic for m in rig.sent()] == [bus.TOPIC_PROC]
    assert rig.host.opened == []


def test_an_unreadable_binary_is_reported_and_not_retried(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    rig.host.files.clear()
    rig.feed(exec_event(), exec_event(pid=PID + 1))
    stop(collector)
    [failed] = rig.sent(bus.TOPIC_EXEC)
    assert (failed.env["ok"], failed.env["last"], failed.env["obj_len"]) == (False, True, 0)
    assert failed.env["error"] == "gone"
    assert collector.counters["exec_unreadable"] == 1
    assert len(rig.host.opened) == 1


MEMFD = records.EXEC_MEMFD | records.EXEC_DELETED


def test_a_memfd_binary_is_named_by_the_kernels_path_and_opened_only_through_proc(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    rig.feed(exec_event(filename=b"/dev/fd/3", path=b"memfd:payload", flags=MEMFD))
    stop(collector)
    [proc] = rig.sent(bus.TOPIC_PROC)
    assert (proc.env["path"], proc.env["memfd"]) == (b"/memfd:payload", True)
    assert (proc.env["deleted"], proc.env["cmdpath"]) == (True, b"/dev/fd/3")
    assert rig.host.opened == [["/proc/4242/exe"]]


def test_a_memfd_copied_by_the_kernel_is_published_from_its_chunks_not_opened(tmp_path):
    """The process may be gone: the kernel read the memfd's pages at the exec."""
    rig, collector = exec_rig(tmp_path, "exec")
    binary = b"\x7fELF" + bytes(range(200)) * 30
    flags = MEMFD | records.EXEC_COPIED
    event = exec_event(filename=b"/dev/fd/3", path=b"memfd:x", flags=flags, size=len(binary),
                       obj_id=900, captured=len(binary))  # fmt: skip
    rig.feed(
        event,
        obj_data(900, binary[:4096]),
        obj_data_at(900, 4096, b"", flags=records.DATA_UNREADABLE, want=1000),
        obj_data_at(900, 5096, binary[5096:]),
    )
    stop(collector)
    assert rig.host.opened == []
    messages = rig.sent(bus.TOPIC_EXEC)
    got = bytearray(len(binary))
    for m in messages:
        if m.payload:
            got[m.env["obj_off"] : m.env["obj_off"] + len(m.payload)] = m.payload
    assert got[:4096] == binary[:4096] and got[5096:] == binary[5096:]
    last = messages[-1].env
    assert (last["last"], last["lost"], last["source"]) == (True, [[4096, 5096]], "page_cache")
    assert (last["obj_id"], last["obj_len"], last["memfd"]) == (900, len(binary), True)


def script_event(**values: Any) -> bytes:
    """./run.sh started by its #! line (/bin/sh), the kernel running /usr/bin/dash."""
    fields = {
        "filename": b"./run.sh", "path": b"/usr/bin/dash", "interp": b"/bin/sh", "interp_len": 7,
        "script_inode": 77, "script_dev": DEV, "script_ctime": 88, "script_mode": 0o100755,
        "script_size": 30, "script_path": b"/home/u/run.sh", "script_path_len": 14,
        "flags": records.EXEC_SCRIPT | records.EXEC_SCRIPT_FILE,
    }  # fmt: skip
    return exec_event(**(fields | values))


def test_a_script_is_captured_as_interpreter_and_script_each_under_its_own_name(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    rig.host.files["/home/u/run.sh"] = tmp_path / "run.sh"
    rig.host.files["/proc/4242/exe"] = tmp_path / "app"
    rig.feed(script_event(), script_event(script_inode=78, pid=PID + 1))
    stop(collector)
    [proc, _] = rig.sent(bus.TOPIC_PROC)
    assert (proc.env["path"], proc.env["cmdpath"], proc.env["interp"]) == (
        b"/usr/bin/dash",
        b"./run.sh",
        b"/bin/sh",
    )
    assert (proc.env["script_path"], proc.env["script_inode"]) == (b"/home/u/run.sh", 77)
    firsts = [m.env for m in rig.sent(bus.TOPIC_EXEC) if m.env["obj_off"] == 0]
    roles = [(e["role"], e["path"], e["inode"]) for e in firsts]
    # the interpreter once; each script (another inode: another script) on its own
    assert roles == [("interpreter", b"/usr/bin/dash", INODE), ("script", b"/home/u/run.sh", 77),
                     ("script", b"/home/u/run.sh", 78)]  # fmt: skip
    assert rig.host.opened == [["/proc/4242/exe", "/usr/bin/dash"],
                               ["/home/u/run.sh", "/proc/4242/cwd/./run.sh"],
                               ["/home/u/run.sh", "/proc/4243/cwd/./run.sh"]]  # fmt: skip
    for e in firsts:
        assert (e["interpreter_path"], e["script_path"]) == (b"/usr/bin/dash", b"/home/u/run.sh")


def test_a_script_whose_file_the_kernel_did_not_find_says_so(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    rig.host.files["/proc/4242/exe"] = tmp_path / "app"
    rig.feed(script_event(flags=records.EXEC_SCRIPT))
    stop(collector)
    [failed] = [m.env for m in rig.sent(bus.TOPIC_EXEC) if m.env["role"] == "script"]
    assert (failed["ok"], failed["path"], failed["error"]) == (
        False,
        b"./run.sh",
        exec_files.SCRIPT_NOT_FOUND,
    )


def test_exec_dedup_forgets_the_oldest_past_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "EXEC_SEEN_MAX", 3)
    rig, collector = exec_rig(tmp_path, "exec")
    rig.host.files.clear()  # nothing opens: only the attempts are counted
    a, b, c, d = (exec_event(inode=n) for n in (1, 2, 3, 4))
    rig.feed(a, b, c, a)
    assert len(rig.host.opened) == 3  # a is still remembered at the bound
    rig.feed(d)
    assert len(rig.host.opened) == 4  # one past the bound: a, the oldest, is forgotten
    rig.feed(c, a)
    assert len(rig.host.opened) == 5
    stop(collector)


# --- finit_module: the collector reads the module file itself ----------------------------------


def finit(tmp_path: Path, path: bytes, files: dict[str, bytes]) -> tuple[Rig, Collector]:
    rig = Rig(config("module"))
    for name, content in files.items():
        rig.host.files[name] = tmp_path / str(len(rig.host.files))
        rig.host.files[name].write_bytes(content)
    collector = rig.started()
    rig.feed(module_event(800, "finit_module", length=0, fd=7, path=path))
    return rig, collector


def test_finit_module_reads_the_loaders_fd_first(tmp_path):
    rig, collector = finit(
        tmp_path, b"/lib/m.ko", {"/proc/4242/fd/7": b"ko" * 9, "/lib/m.ko": b"x"}
    )
    stop(collector)
    assert rig.host.opened == [["/proc/4242/fd/7", "/lib/m.ko"]]
    messages = rig.sent(bus.TOPIC_MODULE)
    assert b"".join(m.payload for m in messages if m.payload) == b"ko" * 9
    assert [(m.env["obj_id"], m.env["last"]) for m in messages] == [(800, False), (800, True)]
    assert messages[0].env["syscall"] == "finit_module"


def test_finit_module_falls_back_to_the_path(tmp_path):
    rig, collector = finit(tmp_path, b"/lib/m.ko", {"/lib/m.ko": b"module bytes"})
    stop(collector)
    messages = rig.sent(bus.TOPIC_MODULE)
    assert b"".join(m.payload for m in messages if m.payload) == b"module bytes"
    assert messages[-1].env["last"] is True and "lost" not in messages[-1].env


def test_finit_module_tries_no_relative_path(tmp_path):
    rig, collector = finit(tmp_path, b"m.ko", {"m.ko": b"not this"})
    stop(collector)
    assert rig.host.opened == [["/proc/4242/fd/7"]]
    [failed] = rig.sent(bus.TOPIC_MODULE)
    assert (failed.env["ok"], failed.env["last"], failed.env["obj_len"]) == (False, True, 0)
    assert (failed.env["error"], failed.env["obj_id"]) == ("gone", 800)


def test_finit_module_checks_the_file_is_as_the_kernel_saw_it(tmp_path):
    rig = Rig(config("module"))
    rig.host.files["/proc/4242/fd/7"] = tmp_path / "m.ko"
    (tmp_path / "m.ko").write_bytes(b"ko")
    rig.host.changed = "the file changed since the syscall: size 9 -> 2"
    collector = rig.started()
    rig.feed(build.module_event(
        **HEADER, obj_id=800, inode=INODE, dev=DEV, fd=7, ctime=1, mtime=2, size=9,
        syscall=records.MODULE_SYSCALLS.index("finit_module"),
    ))  # fmt: skip
    stop(collector)
    assert rig.host.identities == [FileIdentity(DEV, INODE, 1, 2, 9)]
    [failed] = rig.sent(bus.TOPIC_MODULE)
    assert (failed.env["ok"], failed.env["error"]) == (False, rig.host.changed)


# --- the image from the kernel's buffer (bpf/module_kread.bpf.h) -------------------------------

KBUF = bytes(i % 253 for i in range(70_000))


def kread_event(syscall: str, flags: int, *, ret: int = 0, captured: int = 0, **more: Any) -> bytes:
    return build.module_event(
        **HEADER, obj_id=900, ret=ret, len=len(KBUF), captured=captured, inode=INODE, dev=DEV,
        syscall=records.MODULE_SYSCALLS.index(syscall), flags=flags, params=b"debug=1", **more,
    )  # fmt: skip


def kread_image(rig: Rig, syscall: str) -> None:
    """The hook's event and the image's chunks, as the kernel sends them inside the syscall."""
    rig.feed(kread_event(syscall, records.MOD_KREAD_IMAGE, captured=len(KBUF), fd=7,
                         path=b"/lib/m.ko"))  # fmt: skip
    for off in range(0, len(KBUF), 32768):
        chunk = KBUF[off : off + 32768]
        rig.feed(build.file_data(900, off, chunk, want=len(chunk), kind=records.REC_OBJ_DATA))


@pytest.mark.parametrize(
    ("syscall", "source"),
    [("finit_module", "kernel_read_file"), ("init_module", "kernel_load_data")],
)
def test_an_image_from_the_kernels_buffer_waits_for_its_loads_return_value(syscall, source):
    rig = Rig(config("module"))
    collector = rig.started()
    kread_image(rig, syscall)
    assert rig.sent(bus.TOPIC_MODULE) == []  # held: the writer names the object by its first
    rig.feed(kread_event(syscall, records.MOD_KREAD, ret=-17, fd=7, path=b"/lib/m.ko"))
    stop(collector)
    messages = rig.sent(bus.TOPIC_MODULE)
    assert b"".join(m.payload for m in messages if m.payload) == KBUF
    assert {(m.env["obj_id"], m.env["ret"], m.env["source"]) for m in messages} == {
        (900, -17, source)
    }
    assert messages[-1].env["last"] and "lost" not in messages[-1].env
    assert rig.host.opened == []  # no file is read: the kernel's copy is the image


def test_an_image_whose_load_had_not_returned_at_the_stop_says_so():
    rig = Rig(config("module"))
    collector = rig.started()
    kread_image(rig, "finit_module")
    stop(collector)
    messages = rig.sent(bus.TOPIC_MODULE)
    assert b"".join(m.payload for m in messages if m.payload) == KBUF
    assert {(m.env["ret"], m.env["error"]) for m in messages} == {(-115, module_images.STOPPED)}


def test_an_attempt_whose_image_event_was_dropped_is_recorded_with_its_bytes_lost():
    rig = Rig(config("module"))
    collector = rig.started()
    rig.feed(kread_event("init_module", records.MOD_KREAD))
    stop(collector)
    [last] = rig.sent(bus.TOPIC_MODULE)
    assert (last.env["ret"], last.env["last"], last.env["lost"]) == (0, True, [[0, len(KBUF)]])
    assert collector.counters["module_images_unseen"] == 1
    assert rig.host.opened == []


# --- init_module: an image in a file mapping -----------------------------------------------------

#: The image lies at MAP_START + 0x10 in a mapping of the file from its second page on; of its
#: three pages the kernel could read the first and the last, not the middle one.
MAP_START, IMAGE_LEN = 0x7F00_0000_0000, 2 * PAGE_SIZE + 100
IMAGE = bytes(i % 251 for i in range(IMAGE_LEN))
FILE = b"\x01" * PAGE_SIZE + b"\x02" * 0x10 + IMAGE + b"tail"


def init_from_mapping(tmp_path: Path, *, flags: int = records.MOD_MAPPED, file: bytes = FILE,
                      readable: tuple[bool, ...] = (True, False, True),
                      changed: str = "") -> tuple[Rig, Collector]:  # fmt: skip
    rig = Rig(config("module"))
    rig.host.changed = changed
    rig.host.files[f"/proc/{PID}/map_files/{MAP_START:x}-{MAP_START + 4 * PAGE_SIZE:x}"] = (
        tmp_path / "m.ko"
    )
    (tmp_path / "m.ko").write_bytes(file)
    st = (tmp_path / "m.ko").stat()  # as the kernel saw it (the fill checks it again)
    collector = rig.started()
    addr = MAP_START + 0x10
    rig.feed(build.module_event(
        **HEADER, obj_id=600, len=IMAGE_LEN, captured=IMAGE_LEN, inode=INODE, dev=DEV,
        syscall=records.MODULE_SYSCALLS.index("init_module"), flags=flags, addr=addr,
        map_start=MAP_START, map_end=MAP_START + 4 * PAGE_SIZE, map_pgoff=1,
        ctime=st.st_ctime_ns, mtime=st.st_mtime_ns, size=st.st_size, path=b"/tmp/m.ko",
    ))  # fmt: skip
    # page by page, as the kernel sends them: the first chunk ends where the first page does
    offs = [0, PAGE_SIZE - 0x10, 2 * PAGE_SIZE - 0x10, IMAGE_LEN]
    for (start, end), ok in zip(itertools.pairwise(offs), readable, strict=True):
        chunk = IMAGE[start:end] if ok else b""
        rig.feed(build.file_data(600, start, chunk, want=end - start, kind=records.REC_OBJ_DATA,
                                 flags=0 if ok else records.DATA_UNREADABLE))  # fmt: skip
    return rig, collector


def image_of(messages: list[Sent]) -> bytearray:
    image = bytearray(IMAGE_LEN)
    for m in messages:
        if m.payload:
            image[m.env["obj_off"] : m.env["obj_off"] + len(m.payload)] = m.payload
    return image


def test_what_the_kernel_could_not_read_of_a_mapped_image_is_read_from_the_file(tmp_path):
    rig, collector = init_from_mapping(tmp_path)
    stop(collector)
    messages = rig.sent(bus.TOPIC_MODULE)
    assert image_of(messages) == IMAGE
    last = messages[-1].env
    assert (last["last"], "lost" in last, "fill_error" in last) == (True, False, False)
    assert last["from_file"] == [[PAGE_SIZE - 0x10, 2 * PAGE_SIZE - 0x10]]
    map_files = f"/proc/{PID}/map_files/{MAP_START:x}-{MAP_START + 4 * PAGE_SIZE:x}"
    assert rig.host.opened == [[map_files, "/tmp/m.ko"]]
    st = (tmp_path / "m.ko").stat()
    assert rig.host.identities == [
        FileIdentity(DEV, INODE, st.st_ctime_ns, st.st_mtime_ns, len(FILE))
    ]
    mapping = messages[0].env["mapping"]
    assert (mapping["start"], mapping["pgoff"], mapping["path"]) == (MAP_START, 1, b"/tmp/m.ko")
    assert (messages[0].env["dev"], messages[0].env["path"]) == (0, b"")  # finit's keys


def test_a_mapped_image_is_also_looked_for_where_the_loaders_finit_module_found_it(tmp_path):
    """kmod's finit_module, then init_module of its mapping whose own path no process can
    reach (overlayfs): the finit path is the last candidate, for this process only."""
    rig = Rig(config("module"))
    rig.host.files["/merged/m.ko"] = tmp_path / "m.ko"
    (tmp_path / "m.ko").write_bytes(FILE)
    collector = rig.started()
    rig.feed(module_event(800, "finit_module", length=0, fd=7, path=b"/merged/m.ko"))
    other = HEADER | {"pid": PID + 1, "tid": PID + 2}
    for header, obj_id in ((HEADER, 600), (other, 601)):
        rig.feed(build.module_event(
            **header, obj_id=obj_id, len=IMAGE_LEN, captured=0, inode=INODE, dev=DEV,
            syscall=records.MODULE_SYSCALLS.index("init_module"), flags=records.MOD_MAPPED,
            addr=MAP_START, map_start=MAP_START, map_end=MAP_START + 4 * PAGE_SIZE, path=b"/m.ko",
        ))  # fmt: skip
    stop(collector)
    maps = [f"/proc/{p}/map_files/{MAP_START:x}-{MAP_START + 4 * PAGE_SIZE:x}" for p in
            (PID, PID + 1)]  # fmt: skip
    assert rig.host.opened[1:] == [[maps[0], "/m.ko", "/merged/m.ko"], [maps[1], "/m.ko"]]


def test_a_mapped_image_read_whole_by_the_kernel_needs_nothing_from_the_file(tmp_path):
    rig, collector = init_from_mapping(tmp_path, readable=(True, True, True))
    stop(collector)
    messages = rig.sent(bus.TOPIC_MODULE)
    assert image_of(messages) == IMAGE
    assert not {"lost", "from_file", "fill_error"} & set(messages[-1].env)


def test_a_written_private_mapping_is_not_read_from_the_file(tmp_path):
    rig, collector = init_from_mapping(tmp_path, flags=records.MOD_MAPPED | records.MOD_MAP_WRITTEN)
    stop(collector)
    assert rig.host.opened == []
    last = rig.sent(bus.TOPIC_MODULE)[-1].env
    assert last["lost"] == [[PAGE_SIZE - 0x10, 2 * PAGE_SIZE - 0x10]]
    assert last["fill_error"] == WRITTEN_PRIVATE and last["mapping"]["written"] is True


def test_a_changed_file_leaves_the_unread_bytes_missing_and_says_why(tmp_path):
    changed = "the file changed since the syscall: mtime 2 -> 3"
    rig, collector = init_from_mapping(tmp_path, changed=changed)
    stop(collector)
    last = rig.sent(bus.TOPIC_MODULE)[-1].env
    assert last["lost"] == [[PAGE_SIZE - 0x10, 2 * PAGE_SIZE - 0x10]]
    assert (last["fill_error"], "from_file" in last) == (changed, False)


# --- stopping -----------------------------------------------------------------------------------


def test_a_stop_drains_in_order_then_detaches(tmp_path):
    """The records the kernel still holds are read first; then the drop notices, every
    assembler's unfinished work (and the file extents), the binaries being read; the last
    stats; then the rings and the programs are let go."""
    rig, collector = exec_rig(tmp_path, "write", "exec", "mem", "network")
    rig.feed(
        exec_event(),  # its binary is read at the stop
        file_event(11, 5, 100),  # waits for bytes that never come
        mem_event(500, 4, 4),  # likewise
        packet(b"\x05", cookie=55),  # waits for its owner
    )
    assert rig.probes is not None and rig.probes.ring is not None
    rig.probes.ring.held.append(packet(b"\x01", owner_pid=900))
    drop = build.dropped_io(
        inode=INODE, cgroup_id=CGROUP, dev=DEV, direction=records.DIR_WRITE, bytes=7, hi=7, ios=1
    )
    rig.probes.drops.append(records.decode_dropped_io(*drop))
    rig.log.clear()
    stop(collector)
    assert steps(rig.log) == [
        "consume", "net.packets of 900", "file.write drop notice", "file.write",
        # how far each file artifact reaches (the notice, without a generation, is its own)
        "file.write extent 7", "file.write extent 105",
        "mem", "net.packets of 0", "exec", "exec", "stats stopped", "ring.close", "probes.close",
    ]  # fmt: skip


class StopAfter:
    """A stop event that is set once ``run`` has asked ``turns`` times; ``each`` runs before
    every answer (the test's hand on the machine between turns of the loop)."""

    def __init__(self, turns: int, each: Callable[[int], None]) -> None:
        self.asked, self.turns, self.each = 0, turns, each

    def is_set(self) -> bool:
        self.each(self.asked)
        self.asked += 1
        return self.asked > self.turns


def test_a_loss_notice_waits_for_the_records_the_ring_held_before_it():
    """The second write of a file is lost while its first still waits in the ring (the file
    ring's budget spent behind a stalled writer). The kernel's loss table is drained on the
    first turn, but its notice goes out only after the first write's bytes: published first,
    it reached the writer ~25,000 index lines before the bytes (NOTES.md, session 13)."""
    rig = Rig(config("write"))
    collector = rig.started()
    assert rig.probes is not None and rig.probes.ring is not None
    ring = rig.probes.ring
    ring.held += [file_event(11, 512, 0), build.file_data(11, 0, b"A" * 512)]
    ring.paused = True
    drop = build.dropped_io(
        inode=INODE, cgroup_id=CGROUP, dev=DEV, direction=records.DIR_WRITE, bytes=3584,
        lo=512, hi=4096, ios=1,
    )  # fmt: skip
    rig.probes.drops.append(records.decode_dropped_io(*drop))

    def turn(asked: int) -> None:
        if asked == 1:
            assert rig.sent(bus.TOPIC_FILE_WRITE) == [], "the notice went out before the bytes"
            ring.paused = False

    collector.run(StopAfter(3, turn))  # type: ignore[arg-type]
    sent = [m for m in rig.sent(bus.TOPIC_FILE_WRITE) if "extent" not in m.env]
    assert [(m.payload, m.env.get("lost")) for m in sent] == [
        (b"A" * 512, None),
        (None, [[512, 4096]]),
    ]


def test_nothing_expires_while_the_file_ring_is_held_back():
    """Behind a stalled writer the file ring's drain stops at its budget for as long as the
    stall lasts. A syscall whose chunk waits there is not lost, and a stream whose continuation
    waits there is not stale: closed on the collector's clock they became a false `lost` range
    and an orphan continuation whose bytes no file was named for."""
    rig = Rig(config("write"))
    collector = rig.started()
    assert rig.probes is not None and rig.probes.ring is not None
    ring = rig.probes.ring
    rig.feed(file_event(11, 4, 0))  # its chunk, and a continuation, still in the ring
    ring.held += [build.file_data(11, 0, b"abcd"), file_cont(12, 11, 4, b"efgh")]
    ring.paused = True

    def turn(asked: int) -> None:
        rig.time.now += 2_000_000_000  # 2 s a turn: 10 s behind in all
        if asked == 5:
            ring.paused = False

    collector.run(StopAfter(7, turn))  # type: ignore[arg-type]
    sent = [m for m in rig.sent(bus.TOPIC_FILE_WRITE) if "extent" not in m.env]
    assert [(bytes(m.payload), m.env.get("lost")) for m in sent] == [(b"abcdefgh", None)]
    assert collector.stats_env()["collector"]["orphan_ios"] == 0


def test_a_stop_waits_a_bounded_time_for_room_on_the_bus(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    rig.feed(exec_event())
    rig.pub.room = MESSAGE_BYTES - 1  # the writers take nothing more
    stop(collector)
    assert rig.sent(bus.TOPIC_EXEC) == []
    assert rig.time.slept == pytest.approx(service.STOP_STREAMING_NS / 1e9, abs=0.002)


def test_a_transfer_not_read_back_by_the_stop_is_published_lost(tmp_path):
    rig = Rig(config("write"))
    (tmp_path / "src").write_bytes(b"abcdefgh")
    rig.host.files[f"/proc/{PID}/fd/5"] = tmp_path / "src"
    collector = rig.started()
    rig.feed(file_xfer(11, 4, 100, 2))
    rig.pub.room = MESSAGE_BYTES - 1  # the writers take nothing more
    stop(collector)
    [lost] = [m for m in rig.sent(bus.TOPIC_FILE_WRITE) if "extent" not in m.env]
    assert (lost.payload, lost.env["lost"]) == (None, [[100, 104]])
    assert lost.env["readback_error"] == "capture stopped before it was read back"
    assert collector.stats_env()["collector"]["readback_lost_bytes"] == 4


def test_binaries_are_read_no_faster_than_the_bus_has_room(tmp_path):
    rig, collector = exec_rig(tmp_path, "exec")
    (tmp_path / "app").write_bytes(b"\x7f" * (MESSAGE_BYTES * 5 // 2))
    rig.feed(exec_event())
    rig.pub.room = MESSAGE_BYTES  # room for one message a poll
    assert rig.probes is not None and rig.probes.ring is not None
    halt = threading.Event()
    rig.probes.ring.poll = lambda timeout_ms: halt.set()  # type: ignore[method-assign]
    rig.log.clear()
    collector.run(halt)
    assert steps(rig.log)[:3] == ["exec", "stats ready", "consume"]
    assert [len(m.payload or b"") for m in rig.sent(bus.TOPIC_EXEC)] == [
        MESSAGE_BYTES, MESSAGE_BYTES, MESSAGE_BYTES // 2, 0,
    ]  # fmt: skip


# --- stats --------------------------------------------------------------------------------------


def test_stats_env(tmp_path):
    rig = Rig(config("write"))
    collector = rig.collector()
    before = collector.stats_env()
    assert (before["state"], before["kernel"], before["programs"]) == ("starting", {}, [])
    collector.load()
    collector.attach()
    assert rig.probes is not None
    width = len(records.COUNTERS)
    cpu0 = [0] * records.NUM_COUNTERS
    cpu1 = [0] * records.NUM_COUNTERS
    cpu0[0], cpu1[0] = 5, 6  # write.events
    cpu0[1], cpu1[1] = 1, 2  # write.event_drops
    cpu1[width + 3] = 9  # read.chunk_drops
    rig.probes.per_cpu = [cpu0, cpu1]
    rig.feed(file_event(11, 5, 100), b"\x01")
    rig.time.now += 1_500_000_000
    env = collector.stats_env()
    assert env["kernel"]["write.events"] == 11
    assert env["kernel"]["write.event_drops"] == 3
    assert env["kernel_drops_per_cpu"]["write.event_drops"] == [1, 2]
    assert env["kernel_drops_per_cpu"]["read.chunk_drops"] == [0, 9]
    assert all(name.endswith("_drops") for name in env["kernel_drops_per_cpu"])
    assert (env["state"], env["uptime_s"], env["ts"]) == ("ready", 1.5, EPOCH_NS)
    assert (env["pid"], env["uid"], env["comm"]) == (os.getpid(), os.getuid(), b"tracecap")
    assert env["collector"]["events"] == 1
    assert env["collector"]["decode_errors"] == 1
    assert env["collector"]["streams_evicted"] == 0
    assert env["collector"]["bus_backlog_bytes"] == 123
    assert env["collector"]["bus_peers_dropped"] == {"stalled": 1}
    assert env["programs"] == ["tc_fork", "tc_proc_exit"]
    assert env["subscriptions"] == {"file.write.": 1}
    stop(collector)
    assert rig.pub.sent[-1].topic == bus.TOPIC_STATS
    assert rig.pub.sent[-1].env["state"] == "stopped"


def test_the_loop_publishes_stats_once_a_second():
    rig = Rig(config("write"))
    collector = rig.started()
    assert rig.probes is not None and rig.probes.ring is not None
    halt = threading.Event()
    polls = 0

    def poll(timeout_ms: int) -> int:
        nonlocal polls
        polls += 1
        rig.time.now += timeout_ms * 1_000_000
        if polls == 250:
            halt.set()
        return 1  # a record every turn: the loop keeps to POLL_MS

    rig.probes.ring.poll = poll  # type: ignore[method-assign]
    collector.run(halt)
    stats = rig.sent(bus.TOPIC_STATS)
    assert [m.env["uptime_s"] for m in stats] == [0.01, 1.01, 2.01]
    # the subscribers are kept within their bounds at every turn, not once a second
    assert rig.pub.maintained >= polls


def test_the_loop_waits_longer_each_turn_without_records_and_not_after_one():
    rig = Rig(config("write"))
    collector = rig.started()
    assert rig.probes is not None and rig.probes.ring is not None
    halt = threading.Event()
    waits: list[int] = []

    def poll(timeout_ms: int) -> int:
        waits.append(timeout_ms)
        rig.time.now += timeout_ms * 1_000_000
        if len(waits) == 9:
            halt.set()
        return 1 if len(waits) == 6 else 0

    rig.probes.ring.poll = poll  # type: ignore[method-assign]
    collector.run(halt)
    assert waits == [10, 20, 40, 80, 80, 80, 10, 20, 40]


@pytest.mark.parametrize(
    ("wait", "took", "then"),
    [(10, 0, 20), (40, 0, 80), (80, 0, 80), (80, 3, 10), (10, 1, 10)],
)
def test_next_wait(wait, took, then):
    assert service.next_wait_ms(wait, took) == then


def test_the_file_ring_is_drained_only_as_far_as_the_bus_has_room():
    rig = Rig(config("write"))
    rig.started()
    assert rig.probes is not None and rig.probes.file_budget is not None
    room = rig.pub.backlog_room()
    assert rig.probes.file_budget() == room - service.RING_BUDGET_MARGIN
    # runs and partial syscalls of several streams, and a memory dump, fit in the margin
    from collector import file_assembly, object_assembly

    needed = 4 * file_assembly.MAX_MESSAGE_PAYLOAD + object_assembly.MAX_MESSAGE_PAYLOAD
    assert needed <= service.RING_BUDGET_MARGIN


def test_a_stop_waits_for_room_for_the_file_ring_then_takes_the_rest_whole():
    """Records left in the file ring for want of room on the bus are drained at the writers'
    pace for RING_STOP_NS after a stop; then whatever is left at once (the publisher drops
    and counts what its backlog has no room for)."""
    rig = Rig(config("write"))
    collector = rig.started()
    ring = rig.probes.ring if rig.probes else None
    assert ring is not None
    ring.held.append(file_event(11, 5, 100))
    drained: list[bool] = []

    def consume(bounded: bool = True) -> int:
        drained.append(bounded)
        if bounded:  # the bus has no room: nothing is taken
            return 0
        ring.held.clear()
        return 1

    ring.consume = consume  # type: ignore[method-assign]
    start = rig.time.now
    stop(collector)
    assert drained[0] and drained[-1] is False and drained.count(False) == 1
    waited = rig.time.now - start
    assert service.RING_STOP_NS <= waited < service.RING_STOP_NS + 10_000_000


def test_the_loop_returns_freed_heap_every_ten_seconds(monkeypatch):
    rig = Rig(config("write"))
    collector = rig.started()
    assert rig.probes is not None and rig.probes.ring is not None
    trims: list[int] = []
    monkeypatch.setattr(service, "release_free_heap", lambda: trims.append(rig.time.now))
    halt = threading.Event()

    def poll(timeout_ms: int) -> None:
        rig.time.now += timeout_ms * 1_000_000
        if rig.time.now - start >= 25 * 1_000_000_000:
            halt.set()

    start = rig.time.now
    rig.probes.ring.poll = poll  # type: ignore[method-assign]
    collector.run(halt)
    assert [round((t - start) / 1e9) for t in trims] == [10, 20]


def test_stats_fit_the_envelope_limit_on_a_host_with_many_cpus():
    drops = {f"{k}.{c}": [7_000_000_000] * 4096 for k in records.COUNTER_KINDS
             for c in ("event_drops", "chunk_drops")}  # fmt: skip
    env = {"kernel_drops_per_cpu": drops, "kernel": {"write.events": 1}}
    fitted = service.fit_stats(env)
    assert len(bus.encode(bus.TOPIC_STATS, fitted)[1]) <= service.STATS_MAX_BYTES
    assert fitted["kernel_drops_per_cpu"] == {} and fitted["kernel_drops_per_cpu_omitted"]
    # few CPUs that dropped: kept, as {"cpu": n}, readable by the bus's own decoder
    sparse = {name: [0] * 8192 for name in drops}  # 14 lists of 8192 zeros: 115 KB
    sparse["write.event_drops"][4000] = 3
    fitted = service.fit_stats(dict(env, kernel_drops_per_cpu=sparse))
    assert fitted["kernel_drops_per_cpu"]["write.event_drops"] == {"4000": 3}
    assert fitted["kernel_drops_per_cpu"]["read.chunk_drops"] == {}
    frames = bus.encode(bus.TOPIC_STATS, stats_envelope(**fitted))
    assert bus.decode(frames).env["kernel_drops_per_cpu"]["write.event_drops"] == {"4000": 3}
    # a usual host: untouched
    usual = dict(env, kernel_drops_per_cpu={"x": [0, 1]})
    assert service.fit_stats(usual) is usual


# --- start-up -----------------------------------------------------------------------------------


def test_load_excludes_the_tracecap_processes_above_it_and_the_tracecap_user():
    rig = Rig(config("write"))
    me = os.getpid()
    rig.host.proc[me, "stat"] = f"{me} (python 3) S 500 1 1".encode()
    rig.host.proc[500, "cmdline"] = b"/usr/bin/python3\0/usr/local/bin/tracecap\0run\0"
    rig.host.proc[500, "stat"] = b"500 (tracecap) S 400 1 1"
    rig.host.proc[400, "cmdline"] = b"-bash\0"
    rig.host.users["tracecap"] = 998
    rig.collector(ring_bytes=4 << 20).load()
    assert rig.probes is not None
    assert rig.probes.args == ([me, 500], 998, 4 << 20)


def test_without_a_tracecap_user_no_uid_is_excluded():
    rig = Rig(config("write"))
    rig.collector().load()
    assert rig.probes is not None
    assert rig.probes.args[:2] == ([os.getpid()], 0xFFFFFFFF)


def test_load_sets_the_scope_containers():
    rig = Rig(config("write", scope=("container=0123456789ab",)))
    rig.containers = FakeContainers({10: "0123456789ab" * 5 + "cdef", 11: "cd" * 32})
    rig.collector().load()
    assert rig.probes is not None and rig.probes.scope_cgroups == {10}
    assert rig.probes.rules == (DEFAULT, ("0123456789ab",))
    # the kernel's record of a cgroup is what attribution asks first
    assert rig.containers.kernel == rig.probes.cgroup_container
    assert rig.probes.cgroup_container(11) == "cd" * 32


def test_the_cgroups_made_before_attach_are_given_to_the_kernel_again_at_attach():
    rig = Rig(config("write", scope=("host",)))
    rig.containers = FakeContainers({10: "ab" * 32})
    service = rig.collector()
    service.load()
    rig.containers.containers[12] = "ef" * 32
    service.attach()
    assert rig.probes is not None and rig.probes.scope_cgroups == {10, 12}
    assert rig.probes.puts == ["before attach", "after attach"]


def test_run_collector_loads_waits_attaches_runs_and_closes():
    rig = Rig(config("write"))
    halt = threading.Event()
    halt.set()
    status = run_collector(
        rig.config, "/run/fake", Counter({b"file.write.": 1}), 1 << 20,
        publisher=lambda run_dir: rig.pub, collector=_collector_of(rig), stop=halt,
    )  # fmt: skip
    assert status == 0
    assert steps(rig.log) == [
        "probes.new", "wait_for", "rings", "attach", "stats ready", "consume", "stats stopped",
        "ring.close", "probes.close", "pub.close",
    ]  # fmt: skip
    assert [m.env["state"] for m in rig.sent(bus.TOPIC_STATS)] == ["ready", "stopped"]


def test_run_collector_reports_a_failed_load_and_still_closes(capsys):
    rig = Rig(config("write"))

    def refuse(*args: Any) -> FakeProbes:
        raise ProbeError("network capture needs cgroup2")

    rig.make_probes = refuse  # type: ignore[method-assign]
    status = run_collector(
        rig.config, "/run/fake", Counter(), publisher=lambda run_dir: rig.pub,
        collector=_collector_of(rig), stop=threading.Event(),
    )  # fmt: skip
    assert status == 1
    assert "tracecap collector: error: network capture needs cgroup2" in capsys.readouterr().err
    assert steps(rig.log) == ["stats stopped", "pub.close"]


def _collector_of(rig: Rig) -> Any:
    return functools.partial(
        Collector, probes=rig.make_probes, containers=rig.containers, enricher=rig.enricher,
        host=rig.host, clock=rig.time.clock(),
    )  # fmt: skip


# --- mem ------------------------------------------------------------------------------------


def test_a_mem_event_without_bytes_is_one_message_of_no_object_bytes():
    rig = Rig(config("mem"))
    rig.started()
    rig.feed(mem_event(510, 65536, 0, dump="repeat"))
    [msg] = rig.sent(bus.TOPIC_MEM)
    assert (msg.env["dump"], msg.env["obj_len"], msg.env["last"], msg.payload) == (
        "repeat", 0, True, None,
    )  # fmt: skip
    assert "lost" not in msg.env and msg.env["size"] == 65536
    bus.check_object(msg.env)


def test_pages_never_touched_arrive_as_zeros_and_are_listed():
    rig = Rig(config("mem"))
    rig.started()
    zero = build.file_data(520, 4096, b"", kind=records.REC_OBJ_DATA, want=4096,
                           flags=records.DATA_ZERO)  # fmt: skip
    rig.feed(mem_event(520, 12288, 12288), obj_data(520, b"A" * 4096), zero,
             build.file_data(520, 8192, b"B" * 4096, kind=records.REC_OBJ_DATA))  # fmt: skip
    [msg] = rig.sent(bus.TOPIC_MEM)
    assert bytes(msg.payload) == b"A" * 4096 + bytes(4096) + b"B" * 4096
    assert msg.env["zero"] == [[4096, 8192]] and "lost" not in msg.env


def test_mem_counters_are_in_the_stats_and_skips_left_are_reported_at_a_stop():
    rig = Rig(config("mem"))
    collector = rig.started()
    assert rig.probes is not None
    rig.probes.mem = {"mem.alerts": 7, "mem.skipped_events": 5}
    rig.probes.skipped = [records.MemSkipped(4300, 1000, CGROUP, 5, 6, 7 << 16)]
    rig.host.proc[4300, "comm"] = b"luajit\n"
    rig.containers.containers[CGROUP] = "c0ffee"
    assert collector.stats_env()["kernel"]["mem.skipped_events"] == 5
    stop(collector)
    [msg] = rig.sent(bus.TOPIC_MEM)
    env = msg.env
    assert (env["syscall"], env["pid"], env["comm"], env["container_id"]) == (
        "stop", 4300, b"luajit", "c0ffee",
    )  # fmt: skip
    assert (env["skipped_events"], env["skipped_dumps"], env["skipped_bytes"]) == (5, 6, 7 << 16)
    assert (env["obj_len"], env["last"], env["dump"], env["alert"]) == (0, True, "none", "")
    bus.decode(bus.encode(bus.TOPIC_MEM, dict(env, v=bus.VERSION, epoch=1, seq=0)))


# --- container names --------------------------------------------------------------------------


class _Runtime:
    """A runtime that knows one container (see tests/unit/collector/test_enricher.py)."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id

    def available(self) -> str | None:
        return None

    def inspect(self, container_id: str) -> Any:
        from collector.runtimes import ContainerInfo

        if container_id != self.container_id:
            return None
        return ContainerInfo("docker", "web", "nginx:1", "sha256:11", pod_name="web-0")

    def image_digest(self, image_id: str) -> str:
        return ""


def test_what_the_runtime_said_goes_on_the_envelope_of_the_containers_messages(tmp_path):
    cid = "ab" * 32
    rig, collector = exec_rig(tmp_path, "exec")
    rig.containers.containers[CGROUP] = cid
    rig.enricher._clients = [_Runtime(cid)]
    rig.feed(exec_event())  # before the runtime was asked: the id only
    rig.enricher.lookup(cid)
    rig.feed(exec_event(pid=PID + 1), exec_event(pid=PID + 2, cgroup_id=CGROUP + 1))
    stop(collector)
    first, second, host = rig.sent(bus.TOPIC_PROC)
    assert "container_name" not in first.env and first.env["container_id"] == cid
    assert {k: second.env[k] for k in bus.CONTAINER_KEYS if k in second.env} == {
        "container_name": "web",
        "container_image": "nginx:1",
        "container_image_digest": "sha256:11",
        "pod_name": "web-0",
    }
    assert host.env["container_id"] == "" and "container_name" not in host.env
    stats = rig.sent(bus.TOPIC_STATS)[-1].env
    assert stats["collector"]["container_found"] == 1
    assert stats["container_lookup_errors"] == {}
