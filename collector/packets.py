"""Packets: join each with the process that owns its socket, name its protocols (pure).

The kernel knows a socket's owner once the owning thread created it or sent or received on
it; an accepted TCP socket gets its first packets before that. Such packets wait here briefly
for the owner to become known, then go out without one rather than be held forever.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from bpf import records
from collector.envelopes import Outgoing
from tracecap import bus
from tracecap.protocols import classify

#: How long a packet of an unknown socket waits for its owner.
OWNER_WAIT_NS = 300_000_000
#: Packets waiting at most, and sockets remembered.
MAX_WAITING = 20_000
MAX_OWNERS = 65_536


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
    owner and protocols and applies the scope and protocol filters. Memory stays bounded: at
    most MAX_OWNERS sockets remembered (least recently told first out) and MAX_WAITING packets
    waiting, each at most OWNER_WAIT_NS."""

    def __init__(
        self,
        boot_to_epoch: int,
        container_of: Any = None,
        filtered_protocols: frozenset[str] | None = None,
        scoped: bool = False,
    ) -> None:
        self._boot_to_epoch = boot_to_epoch
        self._container_of = container_of or (lambda cgroup_id: "")
        self._filtered = filtered_protocols
        self._scoped = scoped
        self._owners: OrderedDict[int, Owner] = OrderedDict()
        self._waiting: deque[tuple[int, records.Packet]] = deque()
        self.filtered_out = 0
        self.waited_in_vain = 0
        self.waiting_overflow = 0

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
                out += self._emit(pkt, owner)
            else:
                still.append((since, pkt))
        self._waiting = still
        return out

    def on_packet(self, pkt: records.Packet, now_ns: int) -> list[Outgoing]:
        if pkt.owner_pid:
            owner = Owner(pkt.owner_pid, pkt.owner_tid, pkt.owner_ppid, pkt.owner_uid,
                          pkt.owner_comm, pkt.owner_start, True)  # fmt: skip
            return self._emit(pkt, owner)
        owner = self._owners.get(pkt.cookie) if pkt.cookie else None
        if owner is not None or not pkt.cookie:
            return self._emit(pkt, owner)
        if len(self._waiting) >= MAX_WAITING:
            self.waiting_overflow += 1
            return self._emit(pkt, None)
        self._waiting.append((now_ns, pkt))
        return []

    def expire(self, now_ns: int, force: bool = False) -> list[Outgoing]:
        out: list[Outgoing] = []
        while self._waiting and (force or now_ns - self._waiting[0][0] >= OWNER_WAIT_NS):
            _, pkt = self._waiting.popleft()
            self.waited_in_vain += 1
            out += self._emit(pkt, None)
        return out

    def _emit(self, pkt: records.Packet, owner: Owner | None) -> list[Outgoing]:
        if owner is not None and not owner.in_scope:
            return []
        if owner is None and self._scoped:
            return []
        protocols = classify(pkt.data)
        if self._filtered is not None and not self._filtered.intersection(protocols):
            self.filtered_out += 1
            return []
        env = {
            "ts": pkt.ts + self._boot_to_epoch,
            "pid": owner.pid if owner else 0,
            "tid": owner.tid if owner else 0,
            "ppid": owner.ppid if owner else 0,
            "uid": owner.uid if owner else 0,
            "comm": owner.comm if owner else b"",
            "start_time": owner.start_time + self._boot_to_epoch if owner else 0,
            "cgroup_id": pkt.cgroup_id,
            "container_id": self._container_of(pkt.cgroup_id),
            "direction": pkt.direction,
            "ifindex": pkt.ifindex,
            "orig_len": pkt.orig_len,
            "cookie": pkt.cookie,
            "protocols": protocols,
        }
        return [Outgoing(bus.TOPIC_NET_PACKET, env, pkt.data)]
