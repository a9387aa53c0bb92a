"""Flows from pcap bytes: 5-tuples both ways, DNS questions and answers, HTTP lines."""

from __future__ import annotations

import io
import socket

import dpkt

from tracecap.tools.report.flows import read_flows

A, B = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    seg = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    seg.ulen = len(seg)
    return bytes(dpkt.ip.IP(src=src, dst=dst, p=17, data=seg))


def tcp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, data=payload, flags=dpkt.tcp.TH_ACK)
    return bytes(dpkt.ip.IP(src=src, dst=dst, p=6, data=seg))


def dns_query(answer: bool) -> bytes:
    msg = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="evil.test", type=1, cls=1)])
    if answer:
        msg.op = dpkt.dns.DNS_RA | 0x8000
        msg.an = [dpkt.dns.DNS.RR(name="evil.test", type=1, cls=1, ttl=60, ip=B)]
    return bytes(msg)


def pcapng(packets: list[bytes]) -> bytes:
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf, linktype=101)
    for i, pkt in enumerate(packets):
        writer.writepkt(pkt, ts=1_700_000_000 + i)
    return buf.getvalue()


def test_flows_dns_and_http() -> None:
    data = pcapng([
        udp(A, B, 40000, 53, dns_query(False)),
        udp(B, A, 53, 40000, dns_query(True)),
        tcp(A, B, 40001, 8000, b"GET /payload.bin HTTP/1.1\r\nHost: x\r\n\r\n"),
        tcp(B, A, 8000, 40001, b"HTTP/1.0 200 OK\r\n\r\n"),
    ])  # fmt: skip
    parsed = read_flows(data)
    assert parsed.error is None and parsed.packets == 4
    dns, http = parsed.flows
    assert dns.tuple_text() == "udp 10.0.0.1:40000 → 10.0.0.2:53"
    assert (dns.packets, dns.dns) == (2, ["? evil.test A", "evil.test A 10.0.0.2"])
    assert http.tuple_text() == "tcp 10.0.0.1:40001 → 10.0.0.2:8000"
    assert http.http == ["GET /payload.bin", "HTTP/1.0 200 OK"]
    assert http.bytes == sum(len(p) for p in (
        tcp(A, B, 40001, 8000, b"GET /payload.bin HTTP/1.1\r\nHost: x\r\n\r\n"),
        tcp(B, A, 8000, 40001, b"HTTP/1.0 200 OK\r\n\r\n"),
    ))  # fmt: skip


def test_a_cut_file_keeps_what_was_read_and_says_why() -> None:
    data = pcapng([udp(A, B, 1, 2, b"x"), udp(A, B, 1, 2, b"y")])
    parsed = read_flows(data[:-10])
    assert parsed.packets == 1 and len(parsed.flows) == 1
    assert parsed.error is not None
    assert read_flows(b"garbage!").error is not None


def test_dns_on_another_port_is_read_by_its_content() -> None:
    data = pcapng([udp(A, B, 40000, 5353, dns_query(False)), udp(A, B, 40001, 5353, b"x" * 20)])
    first, second = read_flows(data).flows
    assert first.dns == ["? evil.test A"] and second.dns == []
