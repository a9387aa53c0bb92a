"""tracecap.dns_streams: DNS over TCP reassembled per flow from the segments a consumer sees."""

from __future__ import annotations

import itertools

import dpkt
import pytest

from tests.support.dnsmsg import framed
from tracecap.dns_streams import DnsReader, TcpDnsStreams

D = dpkt.dns
KEY = ("egress", 1, b"\x7f\x00\x00\x01", b"\x7f\x35\x00\x01", 40000, 53)


def message(i: int = 1, texts: int = 1) -> bytes:
    msg = D.DNS(id=i, qd=[D.DNS.Q(name=f"m{i}.tc.test", type=D.DNS_TXT)])
    msg.qr = 1
    msg.an = [D.DNS.RR(name=f"m{i}.tc.test", type=D.DNS_TXT, ttl=0, text=[b"t" * 200], rdata=b"")
              for _ in range(texts)]  # fmt: skip
    return bytes(msg)


def ids(found: list[tuple]) -> list[int]:
    return [p["ID"] for _, p in found]


def protos(found: list[tuple]) -> list[dict]:
    return [p for _, p in found]


def test_one_message_in_one_segment():
    streams = TcpDnsStreams()
    ((context, got),) = streams.feed(KEY, 1000, framed(message(7)), context="segment 1")
    assert context == "segment 1" and got["ID"] == 7 and "error" not in got
    assert got["answers"][0]["TXTs"] == ["t" * 200]


def test_a_message_split_across_segments_comes_out_with_the_last_one():
    stream = framed(message(3, texts=30))  # about 6.5 KB
    cuts = [0, 1, 2, 700, 4000, len(stream)]  # the length prefix split too
    streams = TcpDnsStreams()
    assert streams.feed(KEY, 5000, b"", starts=True) == []  # the SYN: the flow starts in step
    got = []
    for start, end in itertools.pairwise(cuts):
        got.append(streams.feed(KEY, 5000 + start, stream[start:end]))
    assert [ids(g) for g in got] == [[], [], [], [], [3]]
    (last,) = protos(got[-1])
    assert len(last["answers"]) == 30 and "error" not in last
    assert streams.buffered == 0


def test_pipelined_messages_in_one_segment_and_across_a_boundary():
    stream = framed(message(1)) + framed(message(2)) + framed(message(3))
    streams = TcpDnsStreams()
    cut = len(framed(message(1))) + len(framed(message(2))) + 5
    assert ids(streams.feed(KEY, 1, stream[:cut])) == [1, 2]
    assert ids(streams.feed(KEY, 1 + cut, stream[cut:])) == [3]


def test_a_retransmitted_segment_is_not_read_twice():
    stream = framed(message(4, texts=5))
    streams = TcpDnsStreams()
    assert streams.feed(KEY, 100, stream[:300]) == []
    assert streams.feed(KEY, 100, stream[:300]) == []  # the same again
    assert ids(streams.feed(KEY, 200, stream[100:])) == [4]  # overlapping the first
    assert streams.feed(KEY, 100, stream) == []


def test_sequence_numbers_wrap():
    stream = framed(message(5, texts=3))
    streams = TcpDnsStreams()
    start = (1 << 32) - 100
    assert streams.feed(KEY, start, stream[:300]) == []
    assert ids(streams.feed(KEY, (start + 300) % (1 << 32), stream[300:])) == [5]


def test_a_lost_segment_is_reported_and_the_next_message_read():
    first, second = framed(message(1, texts=4)), framed(message(2))
    streams = TcpDnsStreams()
    assert streams.feed(KEY, 0, first[:300]) == []
    got = protos(streams.feed(KEY, 600, first[600:] + second))  # 300..600 never seen
    assert [p["ID"] for p in got] == [1, 2]
    assert got[0]["error"].startswith("message cut in answer 2: 298 of ")
    assert len(got[0]["answers"]) == 1 and "error" not in got[1]
    assert streams.lost_bytes == 300


def test_bytes_cut_at_the_snap_length_are_lost_but_the_stream_stays_in_step():
    first, second = framed(message(1, texts=2)), framed(message(2))
    streams = TcpDnsStreams()
    (got,) = protos(streams.feed(KEY, 0, first[:96], missing=len(first) - 96))
    assert got["ID"] == 1 and got["error"].endswith(f"94 of {len(first) - 2} bytes captured")
    assert ids(streams.feed(KEY, len(first), second)) == [2]


def test_a_segment_without_payload_is_nothing():
    streams = TcpDnsStreams()
    assert streams.feed(KEY, 0, b"") == []  # SYN, ACK
    assert streams.feed(KEY, 0, b"", ends=True) == []  # FIN
    assert streams.feed(KEY, 0, b"", starts=True, ends=True) == []  # SYN then RST
    assert not streams.tracks(KEY)


def test_the_connection_ending_inside_a_message_is_reported():
    stream = framed(message(9, texts=3))
    streams = TcpDnsStreams()
    assert streams.feed(KEY, 0, stream[:400]) == []
    (got,) = protos(streams.feed(KEY, 400, b"", ends=True))
    assert got["ID"] == 9
    expected = f"the connection ended inside a message: 398 of {len(stream) - 2} bytes arrived"
    assert got["error"] == expected
    assert not streams.tracks(KEY) and streams.buffered == 0


def test_a_flow_first_seen_mid_message_waits_for_a_message_start():
    stream = framed(message(1, texts=3)) + framed(message(2))
    streams = TcpDnsStreams()
    middle = protos(streams.feed(KEY, 100, stream[100 : len(stream) - len(framed(message(2)))]))
    assert middle[0]["error"].startswith("not a DNS message: ")
    assert middle[0]["ID"] == 0
    assert ids(streams.feed(KEY, len(stream) - len(framed(message(2))), framed(message(2)))) == [2]
    assert streams.resyncs == 1


def test_flows_and_buffered_bytes_are_bounded_and_what_is_dropped_is_reported():
    part = framed(message(1, texts=3))[:600]
    streams = TcpDnsStreams(max_flows=4, max_buffered=1000)
    reported = []
    for port in range(6):
        reported += streams.feed((*KEY[:-1], port), 0, part, context=port)
    assert sum(streams.tracks((*KEY[:-1], port)) for port in range(6)) == 1
    assert streams.buffered <= 1000
    assert streams.evicted == 5
    assert [context for context, _ in reported] == [0, 1, 2, 3, 4]  # each with its own
    why = "dropped to bound memory (4 connections, 1000 bytes of unfinished messages)"
    assert all(p["error"].startswith(f"{why} inside a message: 598 of ") for _, p in reported)
    streams = TcpDnsStreams(max_flows=4, max_buffered=1 << 20)
    for port in range(6):
        streams.feed((*KEY[:-1], port), 0, part)
    assert [streams.tracks((*KEY[:-1], port)) for port in range(6)] == [False] * 2 + [True] * 4
    assert streams.feed((*KEY[:-1], 5), 0, b"", starts=True)[0][1]["error"].startswith(
        "a new connection on the same ports began inside a message"
    )


def tcp(payload: bytes, seq: int, flags: int = dpkt.tcp.TH_ACK, sport: int = 40000,
        dport: int = 5300) -> dpkt.tcp.TCP:  # fmt: skip
    return dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, data=payload)


def test_the_reader_follows_an_untagged_flow_only_once_it_is_known():
    reader = DnsReader()
    stream = framed(message(6, texts=10))
    side = KEY[:4]
    # a port other than 53: the collector tags only the segment that starts the message
    assert reader.messages(side, tcp(b"", 99, dpkt.tcp.TH_SYN), 0, tagged=False) == []
    assert reader.messages(side, tcp(stream[500:], 600), 0, tagged=False) == []  # not followed
    assert not reader.streams.tracks((*side, 40000, 5300))
    assert reader.messages(side, tcp(stream[:500], 100), 0, tagged=True) == []
    assert ids(reader.messages(side, tcp(stream[500:], 600), 0, tagged=False)) == [6]
    fin = tcp(b"", 100 + len(stream), dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    assert reader.messages(side, fin, 0, tagged=False) == []
    assert not reader.streams.tracks((*side, 40000, 5300))


def test_the_reader_counts_a_syn_and_reads_data_it_carries():
    reader = DnsReader()
    stream = framed(message(8))
    syn = tcp(stream, 41, dpkt.tcp.TH_SYN)  # TCP Fast Open: data at ISN + 1
    assert ids(reader.messages(KEY[:4], syn, 0, tagged=True)) == [8]
    assert reader.streams.feed((*KEY[:4], 40000, 5300), 42, stream) == []  # a retransmission


@pytest.mark.parametrize("missing", [0, 40])
def test_the_reader_decodes_a_udp_datagram_whole_or_cut(missing):
    raw = message(2)
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=raw[: len(raw) - missing])
    ((context, got),) = DnsReader().messages(KEY[:4], udp, missing, tagged=True, context=5)
    assert context == 5 and got["ID"] == 2
    assert ("error" in got) == bool(missing)
    assert DnsReader().messages(KEY[:4], udp, missing, tagged=False) == []
