"""Network flows from a pcap file (pure over the file's bytes): 5-tuples with their bytes and
packets, DNS questions and answers, HTTP requests and statuses.

The writers' pcapng files have link type RAW (packets start at the IP header); dpkt reads them
(and classic pcap, which the same code accepts). Parsing reuses ``tracecap.protocols`` and
``tracecap.dns``, so the report reads a packet as the collector classified it. A file that does
not parse whole gives the flows read so far and an ``error``, never an exception.
"""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass, field

import dpkt

from tracecap import dns, protocols

#: Of each flow, at most this many DNS and HTTP lines are kept.
MAX_NOTES = 20
_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


@dataclass
class Flow:
    """One 5-tuple, as its first packet went (``src`` is whoever sent first)."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    packets: int = 0
    bytes: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    dns: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)

    def tuple_text(self) -> str:
        if self.proto in ("tcp", "udp"):
            return f"{self.proto} {self.src}:{self.sport} → {self.dst}:{self.dport}"
        return f"{self.proto} {self.src} → {self.dst}"


@dataclass
class PcapFlows:
    flows: list[Flow]
    packets: int
    error: str | None = None


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _note(notes: list[str], text: str) -> None:
    if len(notes) < MAX_NOTES and text not in notes:
        notes.append(text)


def dns_notes(payload: bytes) -> list[str]:
    """``? name TYPE`` for each question, ``name TYPE value`` for each answer."""
    proto = dns.decode(payload).proto_dns
    out = [f"? {q['name']} {q['type']}" for q in proto.get("questions", [])]
    for rr in proto.get("answers", []):
        value = rr.get("IP") or rr.get("CNAME") or rr.get("PTR") or rr.get("rdata", "")
        out.append(f"{rr['name']} {rr['type']} {value}")
    return out


def http_note(payload: bytes) -> str:
    summary = protocols.proto_http(_Payload(payload))
    if summary["direction"] == "response":
        return f"{summary['protocol']} {summary['status']}"
    return f"{summary['method']} {summary['uri_path']}"


class _Payload:
    """What ``protocols.proto_http`` reads of a transport layer: its ``data``."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def read_flows(data: bytes) -> PcapFlows:
    """Every flow of a pcapng (or pcap) file of RAW packets, in the order they began."""
    flows: dict[tuple, Flow] = {}
    packets = 0
    error = None
    try:
        reader = _reader(data)
        for ts, raw in reader:
            packets += 1
            _packet(flows, float(ts), bytes(raw))
    except (dpkt.UnpackError, ValueError, struct.error, EOFError) as exc:
        error = f"{exc.__class__.__name__}: {exc}"
    return PcapFlows(list(flows.values()), packets, error)


def _reader(data: bytes) -> dpkt.pcapng.Reader | dpkt.pcap.Reader:
    fileobj = io.BytesIO(data)
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        return dpkt.pcapng.Reader(fileobj)
    return dpkt.pcap.Reader(fileobj)


def _packet(flows: dict[tuple, Flow], ts: float, raw: bytes) -> None:
    ip, l4 = protocols.l4_of(raw)
    if ip is None:
        return
    proto_num = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    proto = _PROTO_NAMES.get(proto_num, f"ip{proto_num}")
    src, dst = _addr(ip.src), _addr(ip.dst)
    sport = dport = 0
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        sport, dport = l4.sport, l4.dport
    key = (proto, src, sport, dst, dport)
    flow = flows.get(key) or flows.get((proto, dst, dport, src, sport))
    if flow is None:
        flow = flows[key] = Flow(proto, src, sport, dst, dport, first_ts=ts)
    flow.packets += 1
    flow.bytes += len(raw)
    flow.last_ts = ts
    payload = bytes(l4.data) if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else b""
    if not payload:
        return
    if _is_dns(proto, sport, dport, payload):
        body = payload[2:] if proto == "tcp" else payload
        for text in dns_notes(body):
            _note(flow.dns, text)
    elif payload.startswith(protocols.HTTP_STARTS):
        _note(flow.http, http_note(payload))


def _is_dns(proto: str, sport: int, dport: int, payload: bytes) -> bool:
    """Port 53, or a message on another port that ``tracecap.dns``'s content rule takes for
    DNS (a resolver such as dnsmasq on a port of its own), as the collector classifies it."""
    if 53 in (sport, dport):
        return True
    return dns.is_dns_udp(payload) if proto == "udp" else dns.is_dns_tcp(payload)
