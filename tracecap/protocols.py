"""A packet's protocols: which net_packet_* events it is, and what its HTTP says (pure).

The collector names a packet's events with ``classify`` for every packet, so it stays cheap:
IPv4 TCP and UDP headers are read with struct (about 1 us), the rest with dpkt (4-7 us, most of
it dpkt's IP and transport parsing), 17-50 for DNS on a port other than 53, which the content
rule decodes (scripts/bench_protocols.py). The Tracee JSON output prints the summaries. Both
must read a packet the same way, so the parsing lives here once (dpkt, and the struct reading
that a property test holds to dpkt's answers); DNS decoding and the rule that recognises DNS by
content are in ``tracecap.dns``.
"""

from __future__ import annotations

import struct
import urllib.parse
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


def classify(data: bytes) -> list[str]:
    """The net_packet_* event names (without the prefix) that the packet matches.

    DNS is port 53 -- every segment of a TCP flow, handshake included, so that a
    ``pcap-options:filtered`` capture keeps whole connections -- or, on any other port, a
    payload that is a DNS message by ``tracecap.dns``'s content rule (a resolver on another
    port); over TCP only a segment that starts a message can be told by content.
    """
    if not data:
        return []
    fast = _ipv4_tcp_udp(data) if data[0] >> 4 == 4 else None
    return fast if fast is not None else _classify_parsed(data)


_PORTS_AND_LENGTH = struct.Struct(">HHH")


def _ipv4_tcp_udp(data: bytes) -> list[str] | None:
    """``classify`` of an unfragmented IPv4 TCP or UDP packet whose headers are whole, read
    with struct the way dpkt reads it (header length, total length, fragment offset, data
    offset); None for every other packet, which dpkt parses. The collector classifies every
    packet: measured on a 100-byte UDP datagram, 0.9 us here against 5 us through dpkt (31
    against 1 under the CPU load of a flood's other processes)."""
    if len(data) < 20:
        return None
    header = (data[0] & 0xF) << 2
    proto = data[9]
    if header < 20 or proto not in (6, 17) or data[6] & 0x1F or data[7]:
        return None
    total = data[2] << 8 | data[3]
    body = data[header:total] if total else data[header:]
    if proto == 17:
        if len(body) < 8:
            return None
        sport, dport, ulen = _PORTS_AND_LENGTH.unpack_from(body)
        if 53 in (sport, dport) or dns.is_dns_udp(body[8:], ulen - 8):
            return ["ipv4", "udp", "dns"]
        return ["ipv4", "udp"]
    if len(body) < 20:
        return None
    offset = (body[12] >> 4) << 2
    if offset < 20:
        return None
    sport, dport, _ = _PORTS_AND_LENGTH.unpack_from(body)
    payload = body[offset:]
    out = ["ipv4", "tcp"]
    if 53 in (sport, dport) or dns.is_dns_tcp(payload):
        out.append("dns")
    if payload.startswith(HTTP_STARTS):
        out.append("http")
    return out


def _classify_parsed(data: bytes) -> list[str]:
    """``classify`` through dpkt's parsers: every packet the fast path does not read."""
    out: list[str] = []
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
        payload = bytes(l4.data)
        if 53 in (l4.sport, l4.dport) or dns.is_dns_tcp(payload):
            out.append("dns")
        if payload.startswith(HTTP_STARTS):
            out.append("http")
    elif isinstance(l4, dpkt.udp.UDP):
        out.append("udp")
        if 53 in (l4.sport, l4.dport) or dns.is_dns_udp(bytes(l4.data), l4.ulen - 8):
            out.append("dns")
    elif isinstance(l4, dpkt.icmp.ICMP) and version == 4:
        out.append("icmp")
    elif isinstance(l4, dpkt.icmp6.ICMP6):
        out.append("icmpv6")
    return out


def _canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: ``content-type`` -> ``Content-Type``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def proto_http(l4: dpkt.Packet) -> dict[str, Any]:
    """Tracee's ProtoHTTP of a packet that starts a request or a response, read as Go's
    http.ReadRequest/ReadResponse would from the packet alone: the first line, the headers
    present (canonical names; a request's Host moves to ``host``), ``content_length`` from
    Content-Length, else 0 for a request and -1 (unknown) for a response."""
    head = bytes(l4.data).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first, *lines = head.split("\r\n")
    parts = first.split(" ", 2)
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name and name == name.strip():
            headers.setdefault(_canonical(name), []).append(value.strip())
    proto: dict[str, Any] = {
        "direction": "", "method": "", "protocol": "", "host": "", "uri_path": "", "status": "",
        "status_code": 0, "headers": headers, "content_length": 0,
    }  # fmt: skip
    length = headers.get("Content-Length", [""])[0]
    known = length.isdigit() and "Transfer-Encoding" not in headers
    if first.startswith("HTTP/"):
        code = parts[1] if len(parts) > 1 else ""
        proto |= {
            "direction": "response",
            "protocol": parts[0],
            "status": " ".join(parts[1:]),
            "status_code": int(code) if code.isdigit() else 0,
            "content_length": int(length) if known else -1,
        }
        return proto
    target = parts[1] if len(parts) > 1 else ""
    proto |= {
        "direction": "request",
        "method": parts[0],
        "protocol": parts[2] if len(parts) > 2 else "",
        "host": headers.pop("Host", [""])[0],
        "uri_path": urllib.parse.urlsplit(target).path,
        "content_length": int(length) if known else 0,
    }
    return proto
