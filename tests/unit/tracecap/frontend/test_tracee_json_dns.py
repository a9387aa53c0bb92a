"""tracee_json: net_packet_dns events, one per DNS message a packet carries or completes."""

from __future__ import annotations

import json

import dpkt

from tests.support import tracee_decode
from tests.support.dnsmsg import big_response, framed, query, response, tcp, udp
from tests.support.envelopes import message, packet_env
from tracecap import bus
from tracecap.dns_streams import DnsReader, TcpDnsStreams
from tracecap.frontend.tracee_json import EventPrinter
from tracecap.protocols import classify

DNS_ONLY = ("net_packet_dns",)


def packet(
    data: bytes, direction: str = "egress", orig_len: int | None = None, **env: object
) -> bus.Message:
    length = len(data) if orig_len is None else orig_len
    envelope = packet_env(protocols=classify(data), direction=direction, orig_len=length, **env)
    return message(bus.TOPIC_NET_PACKET, envelope, data)


def proto_dns(event: dict) -> dict:
    event = tracee_decode.decode(json.dumps(event))
    assert event["eventName"] == "net_packet_dns"
    arg = event["args"][4]
    assert arg["type"] == "trace.ProtoDNS"
    return arg["value"]


def arg(event: dict, name: str):
    return next(a["value"] for a in event["args"] if a["name"] == name)


def test_a_udp_query_and_its_answer_are_one_event_each():
    printer = EventPrinter()
    (q,) = printer.events_for(packet(udp(query())), DNS_ONLY)
    assert proto_dns(q)["questions"] == [{"name": "host.tc.test", "type": "A", "class": "IN"}]
    assert arg(q, "dst_port") == 53
    answer = dpkt.dns.DNS.RR(name="host.tc.test", type=dpkt.dns.DNS_A, rdata=b"\x0a\x09\x08\x07")
    (r,) = printer.events_for(packet(udp(response(answer), sport=53, dport=40000)), DNS_ONLY)
    assert proto_dns(r)["answers"][0]["IP"] == "10.9.8.7"


def test_tcp_control_segments_on_port_53_are_no_dns_event():
    printer = EventPrinter()
    wanted = ("net_packet_dns", "net_packet_tcp")
    for flags in (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK):
        events = printer.events_for(packet(tcp(flags=flags)), wanted)
        assert [e["eventName"] for e in events] == ["net_packet_tcp"]


def test_a_tcp_message_split_on_another_port_is_one_event_when_it_is_whole():
    printer = EventPrinter()
    stream = framed(big_response())
    first, rest = stream[:700], stream[700:]
    syn = tcp(flags=dpkt.tcp.TH_SYN, sport=5300, dport=40000, seq=99)
    assert printer.events_for(packet(syn), DNS_ONLY) == []
    assert printer.events_for(packet(tcp(first, sport=5300, dport=40000, seq=100)), DNS_ONLY) == []
    later = packet(tcp(rest, sport=5300, dport=40000, seq=800))
    assert "dns" not in later.env["protocols"]  # the collector cannot tell it is DNS
    (event,) = printer.events_for(later, DNS_ONLY)
    got = proto_dns(event)
    assert len(got["answers"]) == 8 and "error" not in got
    assert arg(event, "src_port") == 5300


def test_each_direction_of_a_loopback_segment_is_its_own_event():
    printer = EventPrinter()
    data = tcp(framed(query()), seq=1)
    events = [*printer.events_for(packet(data), DNS_ONLY),
              *printer.events_for(packet(data, "ingress"), DNS_ONLY)]  # fmt: skip
    assert [proto_dns(e)["ID"] for e in events] == [0xBEEF, 0xBEEF]


def test_what_is_not_dns_on_port_53_is_an_event_that_says_so():
    printer = EventPrinter()
    (event,) = printer.events_for(packet(udp(b"NOT-DNS", dport=53)), DNS_ONLY)
    assert proto_dns(event)["error"] == "not a DNS message: 7 bytes, a header is 12"


def test_a_datagram_cut_at_the_snap_length_is_decoded_as_far_as_it_goes():
    whole = udp(big_response(), sport=53, dport=40000)
    cut = whole[: 28 + 96]
    (event,) = EventPrinter().events_for(packet(cut, orig_len=len(whole)), DNS_ONLY)
    got = proto_dns(event)
    assert got["questions"][0]["name"] == "big.tc.test"
    assert got["error"] == f"message cut in answer 1: 96 of {len(whole) - 28} bytes captured"


def test_a_message_dropped_to_bound_memory_is_printed_with_its_own_packet():
    printer = EventPrinter()
    printer.dns = DnsReader(TcpDnsStreams(max_flows=1))
    stream = framed(big_response())
    first = packet(tcp(stream[:700], sport=53, dport=40001, seq=1), ts=1_700_000_000_000_000_001)
    assert printer.events_for(first, DNS_ONLY) == []
    other = packet(tcp(stream[:700], sport=53, dport=40002, seq=1))
    (event,) = printer.events_for(other, DNS_ONLY)
    assert arg(event, "dst_port") == 40001
    assert event["timestamp"] == 1_700_000_000_000_000_001 != other.env["ts"]
    assert proto_dns(event)["error"].startswith("dropped to bound memory (1 connections")


def test_a_batch_prints_the_events_of_its_packets_alone():
    """A ``net.packets.`` batch gives the events its packets give one message each, in order
    (a TCP DNS message split over two of its packets included)."""
    from tests.support.envelopes import packet_batch_env

    stream = framed(big_response())
    datas = [udp(query()), tcp(stream[:100], sport=53, dport=40000),
             tcp(stream[100:], sport=53, dport=40000, seq=1100)]  # fmt: skip
    singles = [packet(d, direction="ingress") for d in datas]
    wanted = ("net_packet_dns", "net_packet_udp", "net_packet_tcp")
    one_by_one = EventPrinter()
    alone = [e for m in singles for e in one_by_one.events_for(m, wanted)]
    ctx = {k: singles[0].env[k] for k in bus.CONTEXT_KEYS}
    rows = [[m.env["ts"], 0, m.env["ifindex"], m.env["orig_len"], m.env["cookie"], len(m.payload),
             m.env["protocols"]] for m in singles]  # fmt: skip
    batch = message(bus.TOPIC_NET_PACKETS, packet_batch_env(contexts=[ctx], packets=rows),
                    b"".join(datas))  # fmt: skip
    printer = EventPrinter()
    assert printer.events_for(batch, wanted) == alone != []
    assert [e["eventName"] for e in alone].count("net_packet_dns") == 2
