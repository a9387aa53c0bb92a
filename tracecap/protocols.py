"""A packet's protocols: which net_packet_* events it is, and what its HTTP says (pure).

The collector names a packet's events with ``classify`` (for every packet, so it stays cheap:
about 10 microseconds, most of it dpkt's IP and transport parsing); the Tracee JSON output
prints the summaries. Both must read a packet the same way, so the parsing lives here once
(dpkt); DNS decoding and the rule that recognises DNS by content are in ``tracecap.dns``.
"""

from __future__ import annotations

from typing import Any

import dpkt

from tracecap import dns

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


def missing_bytes(data: bytes, ip: dpkt.Packet) -> int:
    """Bytes of the packet not captured (cut at the snap length), from its IP length field."""
    size = ip.len if isinstance(ip, dpkt.ip.IP) else ip.plen + 40
    return max(0, size - len(data))


def is_dns(l4: dpkt.Packet, payload: bytes, missing: int) -> bool:
    """DNS traffic: port 53 (every segment of a TCP flow, handshake included, so that a
    ``pcap-options:filtered`` capture keeps whole connections), or a payload that is a DNS
    message by ``tracecap.dns``'s content rule (a resolver on another port)."""
    if 53 in (l4.sport, l4.dport):
        return True
    if isinstance(l4, dpkt.tcp.TCP):
        return dns.is_dns_tcp(payload)
    return dns.is_dns_udp(payload, missing)


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
    if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        tcp = isinstance(l4, dpkt.tcp.TCP)
        out.append("tcp" if tcp else "udp")
        payload = bytes(l4.data)
        if is_dns(l4, payload, missing_bytes(data, ip)):
            out.append("dns")
        if tcp and payload.startswith(HTTP_STARTS):
            out.append("http")
    elif isinstance(l4, dpkt.icmp.ICMP) and version == 4:
        out.append("icmp")
    elif isinstance(l4, dpkt.icmp6.ICMP6):
        out.append("icmpv6")
    return out


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
