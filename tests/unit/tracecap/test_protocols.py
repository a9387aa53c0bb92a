"""tracecap.protocols.classify: the net_packet_* names the collector puts on each packet."""

from __future__ import annotations

import dpkt
import pytest

from tests.support.dnsmsg import NON_DNS, big_response, framed, query, response, tcp, udp
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
