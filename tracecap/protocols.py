"""A packet's protocols: which net_packet_* events it is, and what its DNS or HTTP says (pure).

The collector names a packet's events with ``classify``; the Tracee JSON output prints the
summaries. Both must read a packet the same way, so the parsing lives here once (dpkt).
"""

from __future__ import annotations

from typing import Any

import dpkt

HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ",
               b"CONNECT ", b"TRACE ", b"HTTP/1.")  # fmt: skip


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
