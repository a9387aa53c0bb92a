"""Packets: join each with the process that owns its socket, name its protocols (pure).

The kernel knows a socket's owner once the owning thread created it or sent or received on
it; an accepted TCP socket gets its first packets before that. Such packets wait here briefly
for the owner to become known, then go out without one rather than be held forever.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import dpkt

from bpf import records
from collector import bus
from collector.envelopes import Outgoing

#: How long a packet of an unknown socket waits for its owner.
OWNER_WAIT_NS = 300_000_000
#: Packets waiting at most, and sockets remembered.
MAX_WAITING = 20_000
MAX_OWNERS = 65_536

HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ",
               b"CONNECT ", b"TRACE ", b"HTTP/1.")  # fmt: skip


@dataclass(frozen=True)
class Owner:
    pid: int
    tid: int
    ppid: int
    uid: int
    comm: bytes
    start_time: int  # boot ns
    in_scope: bool


def l4_of(data: bytes) -> tuple[dpkt.Packet | None, dpkt.Packet | None]:
    """The IP and transport layers of a (possibly truncated) packet, as far as they parse."""
    if not data:
        return None, None
    try:
        ip: dpkt.Packet = dpkt.ip.IP(data) if data[0] >> 4 == 4 else dpkt.ip6.IP6(data)
    except (dpkt.UnpackError, IndexError, ValueError):
        return None, None
    l4 = ip.data if isinstance(ip.data, dpkt.Packet) else None
    return ip, l4


def classify(data: bytes) -> list[str]:
    """The net_packet_* event names (without the prefix) that the packet matches."""
    out: list[str] = []
    if not data:
        return out
    version = data[0] >> 4
    if version == 4:
        out.append("ipv4")
    elif version == 6:
        out.append("ipv6")
    ip, l4 = l4_of(data)
    if ip is None:
        return out
    if isinstance(l4, dpkt.tcp.TCP):
        out.append("tcp")
        if 53 in (l4.sport, l4.dport):
            out.append("dns")
        if bytes(l4.data).startswith(HTTP_STARTS):
            out.append("http")
    elif isinstance(l4, dpkt.udp.UDP):
        out.append("udp")
        if 53 in (l4.sport, l4.dport):
            out.append("dns")
    elif isinstance(l4, dpkt.icmp.ICMP) and version == 4:
        out.append("icmp")
    elif isinstance(l4, dpkt.icmp6.ICMP6):
        out.append("icmpv6")
    return out


def dns_summary(l4: dpkt.Packet) -> dict[str, Any]:
    """Questions and answers of a DNS message (over UDP, or TCP with its length prefix)."""
    raw = bytes(l4.data)
    if isinstance(l4, dpkt.tcp.TCP):
        raw = raw[2:]
    try:
        msg = dpkt.dns.DNS(raw)
    except (dpkt.UnpackError, IndexError, ValueError):
        return {"error": "not a DNS message"}
    answers = []
    for rr in msg.an:
        value: Any = None
        if rr.type == dpkt.dns.DNS_A and len(rr.rdata) == 4:
            value = ".".join(str(b) for b in rr.rdata)
        elif rr.type in (dpkt.dns.DNS_CNAME, dpkt.dns.DNS_PTR, dpkt.dns.DNS_NS):
            value = getattr(rr, "cname", None) or getattr(rr, "ptrname", None)
        answers.append({"name": rr.name, "type": rr.type, "value": value})
    return {
        "id": msg.id,
        "qr": msg.qr,
        "questions": [{"name": q.name, "type": q.type, "class": q.cls} for q in msg.qd],
        "answers": answers,
    }


def http_summary(l4: dpkt.Packet) -> dict[str, Any]:
    """Method and path of a request, or the status line of a response, from its first line."""
    first = bytes(l4.data).split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ", 2)
    if first.startswith("HTTP/"):
        return {"direction": "response", "protocol": parts[0], "status": " ".join(parts[1:])}
    return {
        "direction": "request",
        "method": parts[0],
        "uri_path": parts[1] if len(parts) > 1 else "",
        "protocol": parts[2] if len(parts) > 2 else "",
    }


class PacketAssembler:
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
        self._owners[ev.cookie] = Owner(
            h.pid, h.tid, h.ppid, h.uid, h.comm, ev.start_time, ev.in_scope
        )
        self._owners.move_to_end(ev.cookie)
        if len(self._owners) > MAX_OWNERS:
            self._owners.popitem(last=False)
        if not any(pkt.cookie == ev.cookie for _, pkt in self._waiting):
            return []
        still: deque[tuple[int, records.Packet]] = deque()
        out: list[Outgoing] = []
        for since, pkt in self._waiting:
            if pkt.cookie == ev.cookie:
                out += self._emit(pkt, self._owners[ev.cookie])
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
