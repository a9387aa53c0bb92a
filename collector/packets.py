"""Packets: join each with the process that owns its socket, name its protocols, and batch
them into bus messages (pure).

The kernel knows a socket's owner once the owning thread created it or sent or received on
it; an accepted TCP socket gets its first packets before that. Such packets wait here briefly
for the owner to become known, then go out without one rather than be held forever.

Packets travel in ``net.packets.`` batches (tracecap/bus.py): a ZeroMQ send and a msgpack
envelope per packet were 40% of the collector under a paced flood (py-spy, NOTES.md "Issue 16
part 4"). A batch is sent when it is full and at every turn of the collector's loop
(``flush``), so a packet waits no longer than it did. The single-packet ``net.packet.`` topic
is still published, beside the batches, while anyone subscribes to it (``legacy``).
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from bpf import records
from collector.envelopes import Outgoing
from tracecap import bus

#: How long a packet of an unknown socket waits for its owner.
OWNER_WAIT_NS = 300_000_000
#: Packets waiting at most, and sockets remembered.
MAX_WAITING = 20_000
MAX_OWNERS = 65_536
#: Packets per batch. Its envelope stays under bus.MAX_ENVELOPE_BYTES: a row packs to at most
#: 57 bytes (ints, and the at most four protocol names classify gives), 256 rows to 14.6 KiB,
#: beside MAX_CONTEXT_BYTES of contexts.
MAX_BATCH_PACKETS = 256
#: Packed bytes of a batch's contexts (one per owner, cgroup and direction in it).
MAX_CONTEXT_BYTES = 32 * 1024
#: Captured bytes per batch: under publisher.ZERO_COPY_MIN, so that ZeroMQ copies a batch (its
#: bytes still count against the batches' own budget, publisher.OWN_BUDGETS). A packet
#: bigger than this (pcap-snaplen:max) goes in a batch of its own.
MAX_BATCH_PAYLOAD = 60 * 1024
#: The common keys of a batch: the batch itself is nobody's (its packets name their owners).
_BATCH_COMMON = {"pid": 0, "tid": 0, "ppid": 0, "uid": 0, "comm": b"", "cgroup_id": 0,
                 "container_id": ""}  # fmt: skip
#: Who owns a packet nobody owns: pid, tid, ppid, uid, comm, start (boot ns).
_NOBODY = (0, 0, 0, 0, b"", 0)


@dataclass(frozen=True)
class Owner:
    """The process that owns a socket, as a packet's envelope names it: from the packet record
    itself when the kernel knew it, else from the socket's SockOwner record. ``in_scope`` is
    False for an owner outside the capture's scope, whose packets are dropped."""

    pid: int
    tid: int
    ppid: int
    uid: int
    comm: bytes
    start_time: int  # boot ns
    in_scope: bool


class PacketAssembler:
    """Turns packet records into bus messages, one instance per collector: names each packet's
    owner and protocols, applies the scope and protocol filters and batches what passes. Memory
    stays bounded: at most MAX_OWNERS sockets remembered (least recently told first out),
    MAX_WAITING packets waiting, each at most OWNER_WAIT_NS, and one batch.

    ``enrich`` gives what the runtime said of a container (collector/enricher.py) for the
    contexts; ``legacy`` says whether anyone subscribes to ``net.packet.``, asked at each
    ``flush``: while so, every packet goes there too, as its own message."""

    def __init__(
        self,
        boot_to_epoch: int,
        container_of: Any = None,
        filtered_protocols: frozenset[str] | None = None,
        scoped: bool = False,
        enrich: Callable[[str], dict[str, str]] | None = None,
        legacy: Callable[[], bool] | None = None,
    ) -> None:
        self._boot_to_epoch = boot_to_epoch
        self._container_of = container_of or (lambda cgroup_id: "")
        self._enrich = enrich or (lambda container_id: {})
        self._legacy_asked = legacy or (lambda: False)
        self._legacy = self._legacy_asked()
        self._filtered = filtered_protocols
        self._scoped = scoped
        self._owners: OrderedDict[int, Owner] = OrderedDict()
        self._waiting: deque[tuple[int, records.Packet]] = deque()
        self.filtered_out = 0
        self.waited_in_vain = 0
        self.waiting_overflow = 0
        #: packets put in batches (each also on ``net.packet.`` while ``legacy``)
        self.batched = 0
        # the batch being built: its contexts (by key: index), rows and captured bytes
        self._index: dict[tuple[Any, ...], int] = {}
        self._contexts: list[dict[str, Any]] = []
        self._context_bytes = 0
        self._rows: list[list[Any]] = []
        self._chunks: list[bytes] = []
        self._payload_bytes = 0

    def on_owner(self, ev: records.SockOwner, now_ns: int) -> list[Outgoing]:
        h = ev.hdr
        owner = Owner(h.pid, h.tid, h.ppid, h.uid, h.comm, ev.start_time, ev.in_scope)
        return self._learn(ev.cookie, owner)

    def on_adopted(self, a: records.Adopted) -> list[Outgoing]:
        """The owner the kernel recorded for a socket that existed before the capture: the
        process's main thread (collector/preexisting_sockets.py)."""
        return self._learn(a.cookie, Owner(a.pid, a.pid, a.ppid, a.uid, a.comm, a.start_time,
                                           a.in_scope))  # fmt: skip

    def _learn(self, cookie: int, owner: Owner) -> list[Outgoing]:
        self._owners[cookie] = owner
        self._owners.move_to_end(cookie)
        if len(self._owners) > MAX_OWNERS:
            self._owners.popitem(last=False)
        if not any(pkt.cookie == cookie for _, pkt in self._waiting):
            return []
        still: deque[tuple[int, records.Packet]] = deque()
        out: list[Outgoing] = []
        for since, pkt in self._waiting:
            if pkt.cookie == cookie:
                out += self._emit_owned(pkt, owner)
            else:
                still.append((since, pkt))
        self._waiting = still
        return out

    def on_packet(self, pkt: records.Packet, now_ns: int) -> list[Outgoing]:
        """Batch ``pkt``; returns the messages due now (a full batch; ``net.packet.`` ones)."""
        if pkt.owner_pid:
            who = (pkt.owner_pid, pkt.owner_tid, pkt.owner_ppid, pkt.owner_uid, pkt.owner_comm,
                   pkt.owner_start)  # fmt: skip
            return self._emit(pkt, who)
        owner = self._owners.get(pkt.cookie) if pkt.cookie else None
        if owner is not None or not pkt.cookie:
            return self._emit_owned(pkt, owner)
        if len(self._waiting) >= MAX_WAITING:
            self.waiting_overflow += 1
            return self._emit_owned(pkt, None)
        self._waiting.append((now_ns, pkt))
        return []

    def expire(self, now_ns: int, force: bool = False) -> list[Outgoing]:
        """Send the packets that waited OWNER_WAIT_NS for an owner (all with ``force``)
        without one; then ``flush``."""
        out: list[Outgoing] = []
        while self._waiting and (force or now_ns - self._waiting[0][0] >= OWNER_WAIT_NS):
            _, pkt = self._waiting.popleft()
            self.waited_in_vain += 1
            out += self._emit_owned(pkt, None)
        return out + self.flush()

    def flush(self) -> list[Outgoing]:
        """The batch built so far, as its message (none when empty); asks ``legacy`` again."""
        self._legacy = self._legacy_asked()
        return [self._batch()] if self._rows else []

    def _emit_owned(self, pkt: records.Packet, owner: Owner | None) -> list[Outgoing]:
        if owner is None:
            return [] if self._scoped else self._emit(pkt, _NOBODY)
        if not owner.in_scope:
            return []
        return self._emit(pkt, (owner.pid, owner.tid, owner.ppid, owner.uid, owner.comm,
                                owner.start_time))  # fmt: skip

    @functools.cached_property
    def _classify(self) -> Callable[[bytes], list[str]]:
        """tracecap.protocols.classify, imported at the first packet: it brings dpkt, 60 ms of
        the collector's start (python -X importtime) that readiness does not wait for."""
        from tracecap.protocols import classify

        return classify

    def _emit(self, pkt: records.Packet, who: tuple[Any, ...]) -> list[Outgoing]:
        """Add ``pkt`` of owner ``who`` (pid, tid, ppid, uid, comm, start) to the batch."""
        protocols = self._classify(pkt.data)
        if self._filtered is not None and not self._filtered.intersection(protocols):
            self.filtered_out += 1
            return []
        data = pkt.data
        out = []
        if self._rows and (
            len(self._rows) >= MAX_BATCH_PACKETS
            or self._payload_bytes + len(data) > MAX_BATCH_PAYLOAD
        ):
            out.append(self._batch())
        key = (*who, pkt.cgroup_id, pkt.direction)
        index = self._index.get(key)
        if index is None:
            context = self._context(who, pkt.cgroup_id, pkt.direction)
            size = len(msgpack.packb(context, use_bin_type=True))
            if self._rows and self._context_bytes + size > MAX_CONTEXT_BYTES:
                out.append(self._batch())
            index = self._index[key] = len(self._contexts)
            self._contexts.append(context)
            self._context_bytes += size
        ts = pkt.ts + self._boot_to_epoch
        self._rows.append([ts, index, pkt.ifindex, pkt.orig_len, pkt.cookie, len(data), protocols])
        self._chunks.append(data)
        self._payload_bytes += len(data)
        self.batched += 1
        if self._legacy:
            env = dict(self._contexts[index], ts=ts, ifindex=pkt.ifindex, orig_len=pkt.orig_len,
                       cookie=pkt.cookie, protocols=protocols)  # fmt: skip
            out.append(Outgoing(bus.TOPIC_NET_PACKET, env, data))
        return out

    def _context(self, who: tuple[Any, ...], cgroup_id: int, direction: str) -> dict[str, Any]:
        """A context of the batch (bus.CONTEXT_KEYS, and the container's names when known)."""
        pid, tid, ppid, uid, comm, start = who
        container_id = self._container_of(cgroup_id)
        context = {
            "pid": pid,
            "tid": tid,
            "ppid": ppid,
            "uid": uid,
            "comm": comm,
            "start_time": start + self._boot_to_epoch if pid else 0,
            "cgroup_id": cgroup_id,
            "container_id": container_id,
            "direction": direction,
        }
        if container_id:
            context.update(self._enrich(container_id))
        return context

    def _batch(self) -> Outgoing:
        """The ``net.packets.`` message of the batch built so far; starts the next one."""
        env = {"ts": self._rows[0][0], **_BATCH_COMMON, "contexts": self._contexts,
               "packets": self._rows}  # fmt: skip
        payload = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._index, self._contexts, self._context_bytes = {}, [], 0
        self._rows, self._chunks, self._payload_bytes = [], [], 0
        return Outgoing(bus.TOPIC_NET_PACKETS, env, payload)
