"""DNS messages and the packets that carry them, built with dpkt, for the DNS unit tests; and
payloads of other protocols that must not be taken for DNS."""

from __future__ import annotations

import socket

import dpkt

D = dpkt.dns
LO, RESOLVER = socket.inet_aton("127.0.0.1"), socket.inet_aton("127.53.0.1")


def query(name: str = "host.tc.test", qtype: int = D.DNS_A) -> bytes:
    """A query as dig sends it: one question, an OPT record with a cookie."""
    msg = D.DNS(id=0xBEEF, qd=[D.DNS.Q(name=name, type=qtype)])
    msg.ar = [D.DNS.RR(name="", type=D.DNS_OPT, cls=1232, rdata=b"\x00\x0a\x00\x08" + bytes(8))]
    return bytes(msg)


def response(
    *answers: D.DNS.RR, qname: str = "example.com", qtype: int = D.DNS_A, **header: int
) -> bytes:
    """A response (QR and RA set) to one question; ``header`` sets dpkt's DNS attributes."""
    msg = D.DNS(id=header.pop("id", 0x1234), qd=[D.DNS.Q(name=qname, type=qtype)])
    msg.an = list(answers)
    msg.qr, msg.ra = 1, 1
    for key, value in header.items():
        setattr(msg, key, value)
    return bytes(msg)


def big_response() -> bytes:
    """Eight 200-byte TXT strings: longer than the default snap length."""
    text = D.DNS.RR(name="big.tc.test", type=D.DNS_TXT, ttl=0, text=[b"x" * 200], rdata=b"")
    return response(*[text] * 8, qname="big.tc.test", qtype=D.DNS_TXT)


def framed(raw: bytes) -> bytes:
    """A message as DNS over TCP sends it, after its 2-byte length."""
    return len(raw).to_bytes(2, "big") + raw


def ipv4(l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=LO, dst=RESOLVER, p=proto, data=l4)
    ip.len = 20 + len(bytes(l4))
    return bytes(ip)


def ipv6(l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "::1"),
                      dst=socket.inet_pton(socket.AF_INET6, "fd00::53"), nxt=proto, hlim=64,
                      data=l4)  # fmt: skip
    ip.plen = len(bytes(l4))
    return bytes(ip)


def udp(payload: bytes, sport: int = 40000, dport: int = 53, v6: bool = False) -> bytes:
    seg = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    seg.ulen = 8 + len(payload)
    return ipv6(seg, 17) if v6 else ipv4(seg, 17)


def tcp(payload: bytes = b"", sport: int = 40000, dport: int = 53, seq: int = 1,
        flags: int = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH) -> bytes:  # fmt: skip
    return ipv4(dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, data=payload), 6)


#: A TLS ClientHello whose record length (0x0200) puts 00 01 where QDCOUNT would be read.
TLS_HELLO = bytes.fromhex("160301020001000001fc0303") + bytes(range(32)) + b"\x00" * 480
NON_DNS = {
    "http request": b"GET /index.html HTTP/1.1\r\nHost: tc.test\r\nUser-Agent: curl/7.88\r\n\r\n",
    "http response": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "tls client hello": TLS_HELLO,
    "ssh banner": b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    "ntp": bytes([0x23]) + bytes(47),
    "zeros": bytes(64),
    "quic initial": bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(range(200)),
}
