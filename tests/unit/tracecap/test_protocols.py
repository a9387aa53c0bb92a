"""tracecap.protocols.classify: the net_packet_* names the collector puts on each packet."""

from __future__ import annotations

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.dnsmsg import NON_DNS, big_response, framed, query, response, tcp, udp
from tracecap import protocols
from tracecap.protocols import classify


@pytest.mark.parametrize("v6", [False, True])
def test_port_53_is_dns_over_udp(v6):
    assert classify(udp(query(), v6=v6)) == ["ipv6" if v6 else "ipv4", "udp", "dns"]
    assert classify(udp(response(), sport=53, dport=40000, v6=v6))[-1] == "dns"


def test_every_segment_of_a_port_53_tcp_flow_is_dns_handshake_included():
    for flags in (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK):
        assert classify(tcp(flags=flags)) == ["ipv4", "tcp", "dns"]
    assert classify(tcp(framed(query()))) == ["ipv4", "tcp", "dns"]


@pytest.mark.parametrize("v6", [False, True])
def test_a_resolver_on_another_port_is_dns_by_content(v6):
    assert classify(udp(query(), dport=5300, v6=v6))[-1] == "dns"
    assert classify(udp(big_response(), sport=5300, dport=40000, v6=v6))[-1] == "dns"
    assert classify(tcp(framed(query()), dport=5300)) == ["ipv4", "tcp", "dns"]


def test_on_another_port_only_segments_that_start_a_message_are_dns():
    stream = framed(big_response())
    assert classify(tcp(stream[:700], sport=5300, dport=40000))[-1] == "dns"
    assert classify(tcp(stream[700:], sport=5300, dport=40000)) == ["ipv4", "tcp"]
    assert classify(tcp(flags=dpkt.tcp.TH_SYN, dport=5300)) == ["ipv4", "tcp"]


def test_a_datagram_cut_at_the_snap_length_is_still_dns_by_content():
    whole = udp(big_response(), sport=5300, dport=40000)
    cut = whole[: 28 + 96]
    assert dpkt.ip.IP(cut).data.ulen == len(big_response()) + 8  # the real length is known
    assert classify(cut) == ["ipv4", "udp", "dns"]
    assert classify(whole[: 28 + 20]) == ["ipv4", "udp"]  # the question is not all there


@pytest.mark.parametrize("name", sorted(NON_DNS))
def test_other_protocols_on_other_ports_are_not_dns(name):
    payload = NON_DNS[name]
    assert "dns" not in classify(udp(payload, dport=8080))
    assert "dns" not in classify(tcp(payload, dport=8080))


def test_http_is_still_http():
    assert classify(tcp(NON_DNS["http request"], dport=8080)) == ["ipv4", "tcp", "http"]


def test_proto_http_of_a_request_and_a_response_as_go_reads_them():
    request = dpkt.tcp.TCP(
        data=b"GET /a/b?x=1 HTTP/1.1\r\nHost: h.test\r\nuser-agent: curl\r\nAccept: */*\r\n\r\n"
    )
    assert protocols.proto_http(request) == {
        "direction": "request", "method": "GET", "protocol": "HTTP/1.1", "host": "h.test",
        "uri_path": "/a/b", "status": "", "status_code": 0,
        "headers": {"User-Agent": ["curl"], "Accept": ["*/*"]}, "content_length": 0,
    }  # fmt: skip
    response = dpkt.tcp.TCP(data=b"HTTP/1.0 404 Not Found\r\nContent-Length: 12\r\n\r\nnot found\n")
    got = protocols.proto_http(response)
    assert (got["direction"], got["status"], got["status_code"]) == (
        "response",
        "404 Not Found",
        404,
    )
    assert (got["content_length"], got["headers"]) == (12, {"Content-Length": ["12"]})
    chunked = dpkt.tcp.TCP(data=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert protocols.proto_http(chunked)["content_length"] == -1


_IPV4_HEADERS = st.builds(
    lambda hl, total, frag, proto, rest: bytes([0x40 | hl, 0]) + total.to_bytes(2, "big")
    + b"\0\0" + frag.to_bytes(2, "big") + bytes([64, proto]) + rest,
    hl=st.just(5) | st.integers(0, 15),
    total=st.just(0) | st.integers(0, 200),
    frag=st.just(0) | st.sampled_from([0x4000, 0x2000, 1, 0x1FFF]),
    proto=st.sampled_from([6, 17, 1, 58, 47]),
    rest=st.binary(min_size=0, max_size=160),
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(header=_IPV4_HEADERS, l4=st.binary(max_size=80), ports=st.sampled_from([0, 53, 5300]))
def test_the_struct_reading_of_ipv4_answers_as_dpkt_does(header, l4, ports):
    """Every IPv4 packet, whole, cut or malformed, gets the names dpkt's parsing gives it."""
    data = header + ports.to_bytes(2, "big") + l4
    assert classify(data) == protocols._classify_parsed(data)


@pytest.mark.parametrize(
    "data",
    [
        udp(query()),
        udp(query(), dport=5300),
        tcp(framed(query())),
        tcp(flags=dpkt.tcp.TH_SYN, dport=5300),
        udp(b"x" * 100, sport=40000, dport=41000),
    ],
)
def test_the_fast_path_reads_real_packets_as_dpkt(data):
    assert protocols._ipv4_tcp_udp(data) == protocols._classify_parsed(data)
