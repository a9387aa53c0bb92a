"""The pcap writer: ``net.packet.`` messages to pcapng files split as Tracee's ``--capture pcap:``.

Each packet is appended, as one Enhanced Packet Block, to the file of every split chosen (README
"Output layout"):

* ``single``: ``pcap/single.pcap``
* ``process``: ``pcap/processes/<cid11>/<comm>_<tid>_<start_time>.pcap`` (one file per thread)
* ``container``: ``pcap/containers/<cid11>.pcap``
* ``command``: ``pcap/commands/<cid11>/<comm>.pcap``

A packet no process owns (pid 0: a kernel-generated reply, a TCP RST) has no process or command,
so it goes to the single and container files only, never into a file named after a fake process.

Every file starts with one Section Header Block and one Interface Description Block whose
description is the file's context as JSON (Tracee's "packet context", taken from the first packet
as Tracee does); every packet carries its own process context in a comment, which Tracee cannot
do. The blocks the reorder window releases together (about 10 ms of packets) go to each file
in one ``write`` straight to the fd, no buffer in between: the file is always readable up to
the last whole block. A failed write keeps the whole blocks that landed and is cut back to the
last of them, so ENOSPC never leaves half a block; the blocks after it are tried one by one.

Cost. Packets of one context (process, thread, direction, container) share their files and
their comment, so both are built once per context (``_CONTEXT_KEYS``) and a packet costs a
struct-packed block and its share of a write: one writer went from about 5,000 to 30,000
packets/s in the same loaded-machine microbenchmark (NOTES.md, "Issue 16 part 2").

Time order. Packets arrive roughly, not exactly, in time order: the collector holds a packet of a
socket whose owner it does not know yet for up to ``collector.packets.OWNER_WAIT_NS`` (300 ms,
measured from when it read the packet, so its loop adds its 10 ms poll), then sends it with or
without an owner, after packets stamped later. Measured on loopback (curl, a TCP reset, ping):
the kernel's resets and echo replies reached single.pcap up to 288 ms after later-stamped
packets, and records of two CPUs interleave out of order by about 10 us. So every packet waits in
a ``ReorderWindow`` (writers/reorder.py: the rule and why it uses arrival time) for
REORDER_WINDOW_NS after its arrival, and what it releases is written in timestamp order, ties in
arrival order: every file is in strict time order (``capinfos -o``). The choice, and its costs:

* why here and not in the collector: only pcap files need the order (each file's packets are a
  subsequence of the one order); holding every packet behind an unowned one in the root collector
  would delay every consumer of ``net.packet.``, and the ring's cross-CPU disorder would need a
  window there too.
* 1 s: the 310 ms the collector can add, three times over, for the collector's own stalls and
  this writer's queue growing in between (a queue that only delays everything keeps the spacing).
* latency: a packet reaches the disk 1 s (plus ``reorder.GRAIN_NS``, 10 ms, and the subscriber's
  poll, at most 200 ms) after it reached the writer; a quiet stream is flushed by ``tick``.
* memory: at most REORDER_MAX_BYTES (64 MiB), counting each held packet as its block plus
  HELD_OVERHEAD. tracemalloc measured 569 bytes a held packet at the default snap length (a
  232-byte block and 337 bytes of tuple, heap and ints): about 118,000 packets, more than a
  second at the 100,000 packets/s one writer manages (NOTES.md). Under a UDP flood the
  writer's RSS is its bus queue's either way (peak 260-320 MiB with the window, 263-270
  without, at 10k-20k packets/s each way on a loaded 2-CPU machine). Past the bound the
  earliest packets are written early (``reorder_forced``).
* cost: with a zero window (each packet released at once) ``handle`` took about 6 us more per
  packet (best of 40: 31 us against 24); with the real window release is batched per subscriber
  pass and old and new were within noise (best of 30: 31 against 28 us with one split, 38
  against 46 with four), on this loaded machine.
* stop: ``close`` writes everything still held, in order, before the index records.
* late: a packet that arrives after a later-stamped one was written (a collector stalled for
  most of a second, or the bound reached) is written at once, out of its place, never dropped:
  ``late_packets`` counts it, and each file's index record counts in ``out_of_order`` the packets
  written after one with a later timestamp (a continued file's last block counts too).
* crash: what the window holds exists only here. ``unwritten`` makes the subscriber save a
  ``last_seq`` before it, so that if this process dies the restarted writer counts those packets
  in its bus gap (it counts the ones written after the last save too: over, never under).

Open fds are an LRU of ``max_open`` per writer. An evicted file is reopened in append mode later
and continues its section: no second header, because libpcap 1.10 (tcpdump) stops at a second
section of a LINKTYPE_RAW file and dpkt's reader only understands one. A file that is not what the
writer left (there before it started, truncated or removed behind its back) is continued the same
way when it starts with our header and ends on a whole block; an empty one gets a fresh header;
anything else gets a new section as a last resort (Wireshark and tshark read on, tcpdump stops
there). Whenever the disk may hold more than the writer wrote, the index's sha256 is computed from
the disk at close instead of from what was written.

The index gets one record per file at close, when its counts are final.

Rotation (``--capture pcap-rotate:SIZE[,COUNT][,compress]``, as ``tcpdump -C -W``): before a
block that would take a file past SIZE, the file is closed as ``<name>.<NNNNNN>.pcap``
(tracecap.rotation) and gets its index record then, with ``segment`` and ``rotated_from``, and a
``rotation`` record follows; the next block starts a new file with its own Section Header and
Interface Description Blocks, so every segment is a whole pcapng that any reader opens alone.
A segment's counts are its own; the live file's final record says how many segments came
before it (``segments``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracecap import bus, rotation, segments
from tracecap.rotation import Rotation
from tracecap.text import text_fields
from writers.base import Writer
from writers.budget import DiskBudget
from writers.fileio import FdCache, digest_fd, write_all
from writers.index import Index
from writers.naming import (
    comment_text,
    container_short,
    pcap_command_name,
    pcap_container_name,
    pcap_process_name,
)
from writers.outdir import OutputDir
from writers.pcapng import (
    HEAD_BYTES,
    SNAPLEN,
    file_header,
    is_our_head,
    last_block_start,
    packet_block_ts,
    packet_block_with,
    packet_options,
)
from writers.ratelog import RateLimitedLog
from writers.reorder import ReorderWindow

SPLITS = ("single", "process", "container", "command")
DIRECTIONS = ("egress", "ingress")
TOP_DIR = "pcap"
SINGLE_NAME = "single.pcap"
SPLIT_DIRS = {"process": "processes", "container": "containers", "command": "commands"}
#: Tracee keeps 100 open files per split; one bound per writer keeps the fd budget predictable.
DEFAULT_MAX_OPEN = 64
#: Bytes of comm used in comments and descriptions. The kernel's comm is at most 15 bytes; the
#: bound only keeps a hostile envelope from bloating every block (the index keeps the whole comm).
COMM_MAX = 255
#: How long a packet waits after its arrival before it may be written (see "Time order"): the
#: collector's owner wait (300 ms, collector/packets.py) and its poll, with room to spare.
REORDER_WINDOW_NS = 1_000_000_000
#: Bytes the reorder window may hold: blocks plus HELD_OVERHEAD each (see "Time order").
REORDER_MAX_BYTES = 64 << 20
#: Writer memory per held packet beyond its block: tracemalloc measured 337 bytes with one split,
#: 361 with four (see "Time order").
HELD_OVERHEAD = 350
_U64 = 1 << 64
#: The envelope keys a packet's files and comment depend on (everything but its time, length
#: and bytes): packets of one context share them, so they are built once per context.
_CONTEXT_KEYS = (
    "pid", "tid", "ppid", "uid", "comm", "cgroup_id", "container_id", "start_time", "direction",
    *bus.CONTAINER_KEYS,
)  # fmt: skip
#: Contexts remembered; past this many the writer forgets them all and rebuilds as they come
#: (one context is a few hundred bytes).
MAX_CONTEXTS = 4096


class BadPacket(ValueError):
    """A ``net.packet.`` message whose values cannot describe a real packet."""


@dataclass(frozen=True)
class Packet:
    """The facts of one packet the writer uses, checked once (see ``parse_packet``)."""

    ts: int
    pid: int
    tid: int
    ppid: int
    uid: int
    comm: bytes
    cgroup_id: int
    container_id: str
    direction: str
    orig_len: int
    start_time: int
    data: bytes
    #: what the runtime said of the container (tracecap/bus.py CONTAINER_KEYS), maybe nothing
    container: Mapping[str, str] = field(default_factory=dict)

    @property
    def kernel(self) -> bool:
        """No process owns the socket: the kernel made this packet."""
        return self.pid == 0


def _uint(env: Mapping[str, Any], key: str, limit: int = _U64) -> int:
    value = env.get(key)
    if type(value) is not int or not 0 <= value < limit:
        raise BadPacket(f"{key} is {value!r:.80}, not an integer in [0, {limit})")
    return value


def parse_packet(env: Mapping[str, Any], payload: bytes) -> Packet:
    """Check an envelope and its payload; raise BadPacket on anything a pcap cannot hold.

    ``bus.decode`` checks types only; here values are checked too (a negative ``orig_len``, one
    shorter than the captured bytes, an unknown direction, a container id that could not name a
    directory), because the file must never claim what the packet was not.
    """
    comm = env.get("comm")
    if not isinstance(comm, bytes):
        raise BadPacket(f"comm is {type(comm).__name__}, not bytes")
    container_id = env.get("container_id")
    if not isinstance(container_id, str):
        raise BadPacket(f"container_id is {type(container_id).__name__}, not str")
    try:
        container_short(container_id)
    except ValueError as exc:
        raise BadPacket(str(exc)) from None
    direction = env.get("direction")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise BadPacket(f"direction is {direction!r:.80}, not one of {DIRECTIONS}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise BadPacket(f"payload is {type(payload).__name__}, not bytes")
    data = bytes(payload)
    orig_len = _uint(env, "orig_len", 1 << 32)
    if orig_len < len(data):
        raise BadPacket(f"orig_len {orig_len} is less than the {len(data)} bytes captured")
    return Packet(
        ts=_uint(env, "ts"),
        pid=_uint(env, "pid"),
        tid=_uint(env, "tid"),
        ppid=_uint(env, "ppid"),
        uid=_uint(env, "uid"),
        comm=comm,
        cgroup_id=_uint(env, "cgroup_id"),
        container_id=container_id,
        direction=direction,
        orig_len=orig_len,
        start_time=_uint(env, "start_time"),
        data=data,
        container=bus.container_fields(env) if container_id else {},
    )


def _container_label(container_id: str) -> str:
    return "host" if container_id in ("", "host") else container_id


#: The container's keys a packet comment names (the digest and pod uid are in the index).
_COMMENT_KEYS = ("container_name", "container_image", "pod_namespace", "pod_name")


def packet_comment(pkt: Packet) -> str:
    """The per-packet comment: who sent or received it, one printable line of key=value."""
    named = "".join(
        f" {key}={comment_text(pkt.container[key].encode())}"
        for key in _COMMENT_KEYS
        if key in pkt.container
    )
    return (
        f"pid={pkt.pid} tid={pkt.tid} comm={comment_text(pkt.comm[:COMM_MAX])} "
        f"container={_container_label(pkt.container_id)}{named} direction={pkt.direction}"
    )


@dataclass(frozen=True)
class Target:
    """One pcap file: its split, the directories leading to it (from the out dir) and its name."""

    split: str
    dirs: tuple[str, ...]
    name: str

    @property
    def path(self) -> str:
        return "/".join((*self.dirs, self.name))


def packet_targets(pkt: Packet, splits: Iterable[str]) -> list[Target]:
    """The files ``pkt`` belongs in, for the chosen splits (kernel packets: no process/command)."""
    cid11 = container_short(pkt.container_id)
    targets = []
    for split in splits:
        if split == "single":
            targets.append(Target(split, (TOP_DIR,), SINGLE_NAME))
        elif split == "container":
            dirs = (TOP_DIR, SPLIT_DIRS[split])
            targets.append(Target(split, dirs, pcap_container_name(pkt.container_id)))
        elif pkt.kernel:
            continue
        elif split == "process":
            name = pcap_process_name(pkt.comm, pkt.tid, pkt.start_time)
            targets.append(Target(split, (TOP_DIR, SPLIT_DIRS[split], cid11), name))
        elif split == "command":
            name = pcap_command_name(pkt.comm)
            targets.append(Target(split, (TOP_DIR, SPLIT_DIRS[split], cid11), name))
        else:
            raise ValueError(f"unknown pcap split {split!r}")
    return targets


#: Tracee's ``kubernetes`` fields, from the bus keys.
_POD_FIELDS = (("pod_name", "podName"), ("pod_namespace", "podNamespace"), ("pod_uid", "podUID"))


def _container_context(pkt: Packet) -> dict[str, Any]:
    # hostName: Tracee's is the task's UTS name, which the envelope does not carry (yet)
    cid = "" if pkt.container_id in ("", "host") else pkt.container_id
    known = pkt.container
    ctx: dict[str, Any] = {"container": {"id": cid}, "hostName": ""}
    for key, name in (
        ("container_name", "name"),
        ("container_image", "image"),
        ("container_image_digest", "imageDigest"),
    ):
        if key in known:
            ctx["container"][name] = known[key]
    pod = {name: known[key] for key, name in _POD_FIELDS if key in known}
    if pod:
        ctx["kubernetes"] = pod
    return ctx


def file_context(split: str, pkt: Packet) -> dict[str, Any]:
    """The file's context as Tracee's packet context JSON (field names as Tracee writes them).

    pid and tid are the host's: the envelope has no namespace ids, so ``processId`` and
    ``hostProcessId`` are the same number.
    """
    if split == "single":
        return {}
    ctx = _container_context(pkt)
    if split == "container":
        return ctx
    name = text_fields("processName", pkt.comm[:COMM_MAX])["processName"]
    if split == "command":
        return {"processName": name, **ctx}
    return {
        "processName": name,
        "process": {
            "processId": pkt.pid,
            "threadId": pkt.tid,
            "parentProcessId": pkt.ppid,
            "hostProcessId": pkt.pid,
            "hostThreadId": pkt.tid,
            "hostParentProcessId": pkt.ppid,
            "userId": pkt.uid,
            "cgroupId": pkt.cgroup_id,
            "threadStartTime": pkt.start_time,
        },
        **ctx,
    }


def index_context(split: str, pkt: Packet) -> dict[str, Any]:
    """What the index record says about whose packets a file holds (nothing for ``single``)."""
    if split == "single":
        return {}
    ctx: dict[str, Any] = {"container_id": pkt.container_id, **pkt.container}
    if split == "container":
        return ctx
    ctx.update(text_fields("comm", pkt.comm))
    if split == "command":
        return ctx
    ctx.update(
        pid=pkt.pid,
        tid=pkt.tid,
        ppid=pkt.ppid,
        uid=pkt.uid,
        cgroup_id=pkt.cgroup_id,
        start_time=pkt.start_time,
    )
    return ctx


def learn_container(context: dict[str, Any], pkt: Packet) -> None:
    """Add what the runtime said of the container to a file's index context that lacks it
    (the file's first packets went out before the collector knew the container)."""
    if "container_name" not in context and context.get("container_id") == pkt.container_id:
        context.update(pkt.container)


@dataclass
class PcapFile:
    """Bookkeeping of one file for the writer's lifetime."""

    target: Target
    description: str
    context: dict[str, Any]
    packets: int = 0
    bytes: int = 0
    orig_bytes: int = 0
    cut: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    #: the latest timestamp in the file, ours or (for a file continued) the last block's
    newest_ts: int = -1
    #: packets written after one with a later timestamp (0: the file is in strict time order)
    out_of_order: int = 0
    #: bytes the file holds, as far as the writer knows
    size: int = 0
    #: sha256 of everything written, while the file holds exactly that; None: hash the disk
    sha: Any = field(default_factory=hashlib.sha256)
    opened: bool = False
    header_done: bool = False
    write_errors: int = 0
    damaged: bool = False
    #: packets the disk budget kept out of this file
    budget_dropped: int = 0
    #: segments closed before this one (pcap-rotate)
    segments: int = 0

    def restart(self) -> None:
        """Start a new segment: the counts, hash and header of a fresh file (the object stays:
        packets waiting in the reorder window point to it)."""
        fresh = PcapFile(self.target, self.description, self.context)
        for name in self.__dataclass_fields__:
            if name not in ("target", "description", "context", "segments"):
                setattr(self, name, getattr(fresh, name))
        self.segments += 1

    def account(self, ts: int, orig_len: int, captured: int, cut: bool) -> None:
        self.packets += 1
        self.bytes += captured
        self.orig_bytes += orig_len
        self.cut += cut
        self.out_of_order += ts < self.newest_ts
        self.newest_ts = max(self.newest_ts, ts)
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def record(self, size: int | None, sha256: str | None) -> dict[str, Any]:
        return {
            "kind": "pcap",
            "path": self.target.path,
            "split": self.target.split,
            "size": size,
            "sha256": sha256,
            "complete": not self.write_errors and not self.damaged and not self.budget_dropped,
            "write_errors": self.write_errors,
            "budget_dropped": self.budget_dropped,
            "packets": self.packets,
            "bytes": self.bytes,
            "orig_bytes": self.orig_bytes,
            "cut_at_snaplen": self.cut,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "out_of_order": self.out_of_order,
            **({"segments": self.segments} if self.segments else {}),
            **self.context,
        }


#: A packet between its arrival and its write (built and checked on arrival): its ts, the files
#: it goes to, its block, its original and captured lengths, whether it was cut at SNAPLEN, and
#: its bus message's epoch, topic and seq (see ``PcapWriter.unwritten``). A plain tuple: a
#: slotted dataclass took 0.26 us to build against the tuple's 0.07, on every packet.
Held = tuple[int, tuple[PcapFile, ...], bytes, int, int, bool, Any, bytes, Any]
#: A context's files and its packets' EPB options (``PcapWriter._learn``).
Known = tuple[tuple[PcapFile, ...], bytes]


class PcapWriter(Writer):
    """Writes every ``net.packet.`` message to the pcapng files of the chosen splits."""

    name = "pcap"
    #: batches (``net.packet.`` messages are taken too, from a stream made before batches)
    topics = (bus.TOPIC_NET_PACKETS,)

    def __init__(
        self,
        out: OutputDir,
        index: Index,
        split: Iterable[str] = ("single",),
        *,
        max_open: int = DEFAULT_MAX_OPEN,
        max_hash_bytes: int = 4 << 30,
        log: RateLimitedLog | None = None,
        budget: DiskBudget | None = None,
        reorder_window_ns: int = REORDER_WINDOW_NS,
        reorder_max_bytes: int = REORDER_MAX_BYTES,
        clock: Callable[[], int] = time.monotonic_ns,
        rotation: Rotation | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(budget)
        self._rotation = rotation
        self._wall_clock = wall_clock
        if isinstance(split, str):
            split = (split,)
        chosen = set(split)
        unknown = chosen - set(SPLITS)
        if unknown or not chosen:
            raise ValueError(
                f"pcap split must be a non-empty subset of {', '.join(SPLITS)}, got {split!r}"
            )
        self.split = tuple(s for s in SPLITS if s in chosen)
        self._out = out
        self._index = index
        self._max_hash_bytes = max_hash_bytes
        self._log = log or RateLimitedLog("tracecap-writer[pcap]")
        self._files: dict[str, PcapFile] = {}
        self._contexts: dict[tuple, Known] = {}
        self._fds: FdCache[str] = FdCache(max_open)
        self._window: ReorderWindow[Held] = ReorderWindow(reorder_window_ns, reorder_max_bytes)
        self._clock = clock
        self.counters.update(
            dict.fromkeys(
                (
                    "packets",
                    "files",
                    "write_errors",
                    "rejected",
                    "cut_at_snaplen",
                    "reopens",
                    "new_sections",
                    "records",
                    "index_errors",
                    "hash_skipped",
                    "budget_dropped",
                    "late_packets",
                    "reorder_forced",
                    "rotations",
                    "rotation_errors",
                ),
                0,
            )
        )

    # -- messages ----------------------------------------------------------------------------

    def handle(self, msg: bus.Message) -> None:
        topic = msg.topic
        if topic == bus.TOPIC_NET_PACKETS:
            self._handle_batch(msg)
        elif topic.startswith(bus.TOPIC_NET_PACKET):
            env = msg.env
            self._take(env, env.get("ts"), env.get("orig_len"), msg.payload, self._clock(),
                       (env.get("epoch"), topic, env.get("seq")))  # fmt: skip

    def _handle_batch(self, msg: bus.Message) -> None:
        """Every packet of a ``net.packets.`` batch, as if each had come alone; a batch that
        does not hold together (bus.packet_rows) is refused whole, its packets counted."""
        try:
            batch = bus.packet_rows(msg)
        except bus.BadMessage as exc:
            rows = msg.env.get("packets")
            self.counters["rejected"] += len(rows) if isinstance(rows, list) else 1
            self._log("rejected", f"packet batch refused: {exc}")
            return
        epoch, topic, seq = msg.env.get("epoch"), msg.topic, msg.env.get("seq")
        now = self._clock()
        take = self._take
        if type(seq) is not int:  # decode checked it; a test's hand-made message may not be
            seq = None
        # A batch's packets share their contexts' dicts: each context's files are found once
        # per batch, by the dict's id (alive as long as the batch). Building the key and
        # looking it up took 1.0 us a packet (timeit), against 0.1 for the id; a cache of the
        # last context alone missed at every packet where two contexts alternate, as the two
        # ends of a loopback flow do.
        seen: dict[int, Known] = {}
        for i, (ctx, row, data) in enumerate(batch):
            # each packet's own number (bus.seq_width): ``unwritten`` names the first held
            origin = (epoch, topic, None if seq is None else seq + i)
            take(ctx, row[bus.ROW_TS], row[bus.ROW_ORIG_LEN], data, now, origin, seen)

    def _take(
        self, ctx: Mapping[str, Any], ts: Any, orig_len: Any, payload: Any, now: int,
        origin: tuple[Any, bytes, Any], seen: dict[int, Known] | None = None,
    ) -> None:  # fmt: skip
        """One packet: ``ctx`` holds its context keys (its whole envelope, or its batch
        context), ``origin`` its bus message's epoch, topic and seq; ``seen`` the files of
        the contexts of its batch found so far, by the context dict's id."""
        known = seen.get(id(ctx)) if seen is not None else None
        key = None
        if known is None:
            try:
                key = tuple(map(ctx.get, _CONTEXT_KEYS))
                known = self._contexts.get(key)
            except TypeError:  # an unhashable value where a string belongs: parse_packet says
                key, known = None, None
        try:
            if known is None:
                known = self._learn({**ctx, "ts": ts, "orig_len": orig_len}, payload, key)
            if seen is not None:
                seen[id(ctx)] = known
            files, options = known
            if type(ts) is not int or not 0 <= ts < _U64:
                raise BadPacket(f"ts is {ts!r:.80}, not an integer in [0, {_U64})")
            if type(orig_len) is not int or not 0 <= orig_len < 1 << 32:
                raise BadPacket(f"orig_len is {orig_len!r:.80}, not an integer in [0, 2**32)")
            if type(payload) is not bytes:
                if not isinstance(payload, bytearray | memoryview):
                    raise BadPacket(f"payload is {type(payload).__name__}, not bytes")
                payload = bytes(payload)
            if orig_len < len(payload):
                raise BadPacket(f"orig_len {orig_len} is less than the {len(payload)} bytes")
            data = payload[:SNAPLEN]
            block = packet_block_with(ts, data, orig_len, options)
        except ValueError as exc:
            self.counters["rejected"] += 1
            self._log("rejected", f"packet refused: {exc}")
            return
        self.counters["packets"] += 1
        cut = len(data) < len(payload)
        self.counters["cut_at_snaplen"] += cut
        held = (ts, files, block, orig_len, len(data), cut, *origin)
        if self._window.push(ts, held, len(block) + HELD_OVERHEAD, now):
            self._write_held(self._window.release(now))

    def _learn(self, env: Mapping[str, Any], payload: Any, key: tuple | None) -> Known:
        """The files and packet options of a context not seen yet (checked in full by
        ``parse_packet``); remembered under ``key`` unless it is None."""
        pkt = parse_packet(env, payload)
        files = []
        for target in packet_targets(pkt, self.split):
            f = self._files.get(target.path)
            if f is None:
                f = self._new_file(target, pkt)
            elif pkt.container and target.split != "single":
                learn_container(f.context, pkt)
            files.append(f)
        known = (tuple(files), packet_options(packet_comment(pkt), pkt.direction == "ingress"))
        if key is not None:
            if len(self._contexts) >= MAX_CONTEXTS:
                self._contexts.clear()
            self._contexts[key] = known
        return known

    def tick(self, now: float) -> None:
        """Write what the reorder window has released (a quiet stream too)."""
        self._write_held(self._window.release(self._clock()))

    def unwritten(self) -> dict[str, int]:
        """The lowest ``seq`` per ``epoch:topic`` still in the reorder window (only in memory):
        if this process dies, what it held is lost, and the restarted writer counts it as a gap
        from there (see ``Writer.unwritten``)."""
        lowest: dict[tuple[Any, bytes], int] = {}
        for *_, epoch, topic, seq in self._window.items():
            if type(seq) is int and seq < lowest.get((epoch, topic), seq + 1):
                lowest[(epoch, topic)] = seq
        return {f"{e}:{t.decode('ascii', 'backslashreplace')}": s for (e, t), s in lowest.items()}

    def _write_held(self, released: list[Held]) -> None:
        """Write packets the window released, in the order given, to all their files: each
        file's blocks in one write (``_append_all``)."""
        per_file: dict[int, tuple[PcapFile, list[Held]]] = {}
        for held in released:
            for f in held[1]:
                entry = per_file.get(id(f))
                if entry is None:
                    per_file[id(f)] = (f, [held])
                else:
                    entry[1].append(held)
        refused: set[int] = set()  # packets the budget kept out of at least one of their files
        for f, items in per_file.values():
            refused.update(map(id, self._append_all(f, items)))
        counters = self.counters
        counters["budget_dropped"] += len(refused)
        counters["late_packets"] = self._window.late
        counters["reorder_forced"] = self._window.forced

    def _new_file(self, target: Target, pkt: Packet) -> PcapFile:
        description = json.dumps(file_context(target.split, pkt), ensure_ascii=False)
        f = PcapFile(target, description, index_context(target.split, pkt))
        self._files[target.path] = f
        self.counters["files"] += 1
        return f

    # -- files -------------------------------------------------------------------------------

    def _fd(self, f: PcapFile) -> int:
        """The file's fd, opened if evicted; decides whether a (new) section header is due."""
        key = f.target.path
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        fd = self._out.open_file(f.target.dirs, f.target.name, append=True)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        if f.opened:
            self.counters["reopens"] += 1
        if size != f.size:
            try:
                self._adopt(f, fd, size)
            except OSError:
                os.close(fd)
                raise
        f.opened = True
        self._fds.add(key, fd)
        return fd

    def _adopt(self, f: PcapFile, fd: int, size: int) -> None:
        """Take over a file that is not what we left: there before us (a restarted writer),
        or changed behind our back. Decides whether our blocks need a header first."""
        f.size = size
        if size == 0:  # new or emptied: start it as if it were ours from the beginning
            f.sha = hashlib.sha256()
            f.header_done = False
            return
        f.sha = None  # our running hash no longer covers the file
        start = last_block_start(size, os.pread(fd, 4, size - 4))
        header = os.pread(fd, 8, start) if start is not None else b""
        # the block the trailer points back to must start with the same length
        whole = len(header) == 8 and struct.unpack_from("<I", header, 4)[0] == size - start
        if whole and is_our_head(os.pread(fd, HEAD_BYTES, 0)):
            f.header_done = True
            last_ts = packet_block_ts(os.pread(fd, 20, start))
            if last_ts is not None:  # what follows is in order only if it is not earlier
                f.newest_ts = max(f.newest_ts, last_ts)
            return
        self._log("new_section", f"{f.target.path}: {size} bytes on disk are not ours to continue")
        self.counters["new_sections"] += 1
        f.header_done = False

    def _append_all(self, f: PcapFile, items: list[Held]) -> list[Held]:
        """Append the blocks of ``items`` to ``f`` in order, in as few writes as rotation
        allows (one per file per release, where one write a block cost a syscall a packet);
        each block is charged to the budget and rotates the file as ``_append`` would. Returns
        the items the budget refused."""
        refused: list[Held] = []
        chunks: list[bytes] = []
        batch: list[Held] = []
        pending = 0
        fd: int | None = None
        how, budget = self._rotation, self._budget
        for item in items:
            block = item[2]
            if fd is None:
                try:
                    fd = self._fd(f)
                except OSError as exc:
                    self._write_error(f, f"cannot open: {exc}")
                    continue
            started = f.header_done or bool(batch)
            data = block if started else file_header(f.description) + block
            if how is not None and started and rotation.due(f.size + pending, len(data), how.size):
                self._flush(f, fd, chunks, batch)
                chunks, batch, pending = [], [], 0
                try:
                    self._rotate(f, how)
                except OSError as exc:  # the packet goes to the file as it is
                    self.counters["rotation_errors"] += 1
                    self._log("rotation_error", f"{f.target.path}: not rotated: {exc}")
                try:
                    fd = self._fd(f)
                except OSError as exc:
                    fd = None
                    self._write_error(f, f"cannot open: {exc}")
                    continue
                data = block if f.header_done else file_header(f.description) + block
            if budget is not None and not budget.allow(len(data)):
                f.budget_dropped += 1  # the file stays whole; its record says what it lacks
                refused.append(item)
                continue
            chunks.append(data)
            batch.append(item)
            pending += len(data)
        if fd is not None:
            self._flush(f, fd, chunks, batch)
        return refused

    def _flush(self, f: PcapFile, fd: int, chunks: list[bytes], batch: list[Held]) -> None:
        """Write ``chunks`` (the blocks of ``batch``, the first with the file header when
        due) in one write. On an error the whole blocks that landed stay, the partial one is
        cut back off, and the rest are tried one by one as if they had come alone."""
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        done, error = write_all(fd, data, f.size, append=True)
        if error is None:
            self._landed(f, data, batch)
            return
        kept = whole = 0
        for chunk in chunks:
            if kept + len(chunk) > done:
                break
            kept += len(chunk)
            whole += 1
        self._landed(f, data[:kept], batch[:whole])
        self._write_error(f, str(error))
        if done > kept:
            try:
                os.ftruncate(fd, f.size)
            except OSError as trunc_exc:
                # half a block stays: readers stop there; say so in the index
                f.damaged = True
                f.sha = None
                f.size += done - kept
                self._log("write_error", f"{f.target.path}: cannot cut back: {trunc_exc}")
        for ts, _, block, orig_len, captured, cut, *_ in batch[whole + 1 :]:
            if self._append(f, block, charge=False):
                f.account(ts, orig_len, captured, cut)

    @staticmethod
    def _landed(f: PcapFile, data: bytes, batch: list[Held]) -> None:
        """``data``, the whole blocks of ``batch``, is in the file."""
        if not batch:
            return
        f.size += len(data)
        if f.sha is not None:
            f.sha.update(data)
        f.header_done = True
        for ts, _, _, orig_len, captured, cut, *_ in batch:
            f.account(ts, orig_len, captured, cut)

    def _append(self, f: PcapFile, block: bytes, *, charge: bool = True) -> bool:
        """Append ``block`` alone (after the file header when due); all or nothing on the disk.
        ``charge``: ask the budget first (False when ``_append_all`` already did)."""
        try:
            fd = self._fd(f)
        except OSError as exc:
            self._write_error(f, f"cannot open: {exc}")
            return False
        data = block if f.header_done else file_header(f.description) + block
        if charge and self._budget is not None and not self._budget.allow(len(data)):
            f.budget_dropped += 1  # the file stays whole; its record says what it lacks
            return False
        done, error = write_all(fd, data, f.size, append=True)
        if error is not None:
            self._write_error(f, str(error))
            if done:
                try:
                    os.ftruncate(fd, f.size)
                except OSError as trunc_exc:
                    # half a block stays: readers stop there; say so in the index
                    f.damaged = True
                    f.sha = None
                    f.size += done
                    self._log("write_error", f"{f.target.path}: cannot cut back: {trunc_exc}")
            return False
        f.size += len(data)
        if f.sha is not None:
            f.sha.update(data)
        f.header_done = True
        return True

    def _rotate(self, f: PcapFile, how: Rotation) -> None:
        """Close ``f`` as its next segment: its record (final counts, hash) and a rotation
        record in the index; ``f`` then starts a fresh file under the same name."""
        if f.sha is not None:
            size, sha256 = f.size, f.sha.hexdigest()
        else:
            size, sha256 = self._disk_digest(f)
        dir_fd = self._out.open_dirs(f.target.dirs)
        try:
            self._fds.discard(f.target.path)
            done = segments.close_segment(dir_fd, f.target.name, how)
        finally:
            os.close(dir_fd)
        closed = "/".join((*f.target.dirs, done.previous))
        record = f.record(size, sha256)
        record.update(path=closed, segment=done.number, rotated_from=f.target.path)
        if how.compress:
            record["compressed"] = done.previous.endswith(rotation.GZIP_SUFFIX)
        if self._index.append_or_count(record, self.counters, self._log, f"{closed}: record"):
            self.counters["records"] += 1
        removed = ["/".join((*f.target.dirs, name)) for name in done.removed]
        note = rotation.rotation_record(
            f.target.path, closed, done.number, removed, self._wall_clock()
        )
        self._index.append_or_count(note, self.counters, self._log, f"{closed}: rotation")
        for problem in done.problems:
            self.counters["rotation_errors"] += 1
            self._log("rotation_error", f"{f.target.path}: {problem}")
        self.counters["rotations"] += 1
        f.restart()

    def _write_error(self, f: PcapFile, reason: str) -> None:
        self.counters["write_errors"] += 1
        f.write_errors += 1
        self._log("write_error", f"{f.target.path}: {reason}")

    # -- closing -----------------------------------------------------------------------------

    def _disk_digest(self, f: PcapFile) -> tuple[int | None, str | None]:
        """Size and sha256 read back from the disk, for files the running hash cannot vouch for."""
        try:
            fd = self._fd(f) if f.opened else None
        except OSError as exc:
            self._log("write_error", f"{f.target.path}: cannot hash: {exc}")
            return None, None
        if fd is None:  # never opened: nothing of ours is there
            return None, None
        try:
            size, sha256 = digest_fd(fd, self._max_hash_bytes)
        except OSError as exc:
            self._log("write_error", f"{f.target.path}: cannot hash: {exc}")
            return None, None
        if sha256 is None:
            self.counters["hash_skipped"] += 1
        return size, sha256

    def _finish(self, f: PcapFile) -> None:
        if f.sha is not None and f.opened:
            size, sha256 = f.size, f.sha.hexdigest()
        else:
            size, sha256 = self._disk_digest(f)
        record = f.record(size, sha256)
        what = f"{f.target.path}: record"
        if self._index.append_or_count(record, self.counters, self._log, what):
            self.counters["records"] += 1

    def close(self) -> None:
        """Write every packet still held, in time order, then record every file in the index
        and close every fd."""
        try:
            self._write_held(self._window.drain())
            for key in sorted(self._files):
                self._finish(self._files[key])
        finally:
            self._fds.close_all()
