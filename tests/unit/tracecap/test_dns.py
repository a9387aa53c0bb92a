"""tracecap.dns: DNS messages (built with dpkt) decoded into Tracee's ProtoDNS, and the rule that
recognises DNS by content."""

from __future__ import annotations

import random
import socket
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.dnsmsg import NON_DNS, TLS_HELLO, big_response, framed, query, response
from tracecap import dns

D = dpkt.dns
DNS, RR, Q = D.DNS, D.DNS.RR, D.DNS.Q

#: Every key of Tracee v0.17's trace.ProtoDNS, in its order (types/trace/network_trace.go), with
#: tracecap's AD and CD after Z.
PROTO_KEYS = ["ID", "QR", "opCode", "AA", "TC", "RD", "RA", "Z", "AD", "CD", "responseCode",
              "QDCount", "ANCount", "NSCount", "ARCount", "questions", "answers", "authorities",
              "additionals"]  # fmt: skip
#: Every key of Tracee's ProtoDNSResourceRecord, in its order.
RR_KEYS = ["name", "type", "class", "TTL", "IP", "NS", "CNAME", "PTR", "TXTs", "SOA", "SRV",
           "MX", "OPT", "URI", "TXT"]  # fmt: skip


def only_answer(raw: bytes) -> dict:
    got = dns.decode(raw)
    assert got.whole, got.proto_dns.get("error")
    (rr,) = got.proto_dns["answers"]
    assert list(rr)[: len(RR_KEYS)] == RR_KEYS
    return rr


def test_a_query_has_tracees_keys_and_values():
    query = DNS(id=4242, qd=[Q(name="tracecap.example", type=D.DNS_AAAA)])
    got = dns.decode(bytes(query))
    assert got.whole
    assert got.proto_dns == {
        "ID": 4242, "QR": 0, "opCode": "query", "AA": 0, "TC": 0, "RD": 1, "RA": 0, "Z": 0,
        "AD": 0, "CD": 0, "responseCode": "no error", "QDCount": 1, "ANCount": 0,
        "NSCount": 0, "ARCount": 0,
        "questions": [{"name": "tracecap.example", "type": "AAAA", "class": "IN"}],
        "answers": [], "authorities": [], "additionals": [],
    }  # fmt: skip
    assert list(got.proto_dns) == PROTO_KEYS


def test_an_a_record_and_tracees_zero_values_for_the_other_fields():
    a = RR(name="example.com", type=D.DNS_A, ttl=300, rdata=b"\x0a\x09\x08\x07")
    rr = only_answer(response(a))
    assert rr == {
        "name": "example.com", "type": "A", "class": "IN", "TTL": 300, "IP": "10.9.8.7",
        "NS": "", "CNAME": "", "PTR": "", "TXTs": None,
        "SOA": {"MName": "", "RName": "", "serial": 0, "refresh": 0, "retry": 0, "expire": 0,
                "minimum": 0},
        "SRV": {"priority": 0, "weight": 0, "port": 0, "name": ""},
        "MX": {"preference": 0, "name": ""}, "OPT": [],
        "URI": {"priority": 0, "weight": 0, "target": ""}, "TXT": "",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rr", "field", "value"),
    [
        (RR(type=D.DNS_AAAA, rdata=bytes.fromhex("fd000000000000000000000000010002")),
         "IP", "fd00::1:2"),
        (RR(type=D.DNS_AAAA, rdata=bytes.fromhex("00000000000000000000ffff01020304")),
         "IP", "::ffff:1.2.3.4"),
        (RR(type=D.DNS_CNAME, cname="host.tc.test"), "CNAME", "host.tc.test"),
        (RR(type=D.DNS_NS, nsname="ns1.tc.test"), "NS", "ns1.tc.test"),
        (RR(type=D.DNS_PTR, ptrname="host.tc.test"), "PTR", "host.tc.test"),
        (RR(type=D.DNS_MX, preference=10, mxname="mail.tc.test"), "MX",
         {"preference": 10, "name": "mail.tc.test"}),
        (RR(type=D.DNS_SRV, priority=5, weight=7, port=389, srvname="host.tc.test"), "SRV",
         {"priority": 5, "weight": 7, "port": 389, "name": "host.tc.test"}),
        (RR(type=D.DNS_SOA, mname="ns1.tc.test", rname="hostmaster.tc.test", serial=2024061501,
            refresh=1200, retry=180, expire=1209600, minimum=300), "SOA",
         {"MName": "ns1.tc.test", "RName": "hostmaster.tc.test", "serial": 2024061501,
          "refresh": 1200, "retry": 180, "expire": 1209600, "minimum": 300}),
        (RR(type=D.DNS_TXT, text=[b"hello world", b"v=spf1 -all"]), "TXTs",
         ["hello world", "v=spf1 -all"]),
        (RR(type=D.DNS_TXT, text=[b"hi", b""]), "TXT", "\x02hi\x00"),  # RDATA, as gopacket
        (RR(type=D.DNS_HINFO, text=[b"x86_64", b"Linux"]), "TXTs", ["x86_64", "Linux"]),
        (RR(type=D.DNS_TXT, text=[b"bin\xff\x00"]), "TXTs", ["bin\\xff\x00"]),
        (RR(type=256, rdata=b"\x00\x0a\x00\x01https://tc.test/"), "URI",
         {"priority": 10, "weight": 1, "target": "https://tc.test/"}),
    ],
)  # fmt: skip
def test_each_type_fills_its_field(rr, field, value):
    rr.name, rr.ttl = "q.tc.test", 60
    if not hasattr(rr, "rdata"):
        rr.rdata = b""
    got = only_answer(response(rr))
    assert got[field] == value
    assert got["type"] == dns.type_name(rr.type)
    assert "rdata" not in got


def test_an_unknown_type_is_named_as_dig_names_it_and_keeps_its_rdata_in_hex():
    https = RR(name="https.tc.test", type=65, ttl=60, rdata=bytes.fromhex("000100"))
    caa = RR(name="tc.test", type=257, ttl=60, rdata=b"\x00\x05issueca.example")
    odd = RR(name="tc.test", type=65280, ttl=60, rdata=b"\x01")
    got = dns.decode(response(https, caa, odd))
    assert got.whole
    types = [(rr["type"], rr["rdata"]) for rr in got.proto_dns["answers"]]
    assert types == [("HTTPS", "000100"), ("CAA", caa.rdata.hex()), ("TYPE65280", "01")]


def test_dpkt_rejects_what_this_decoder_reads():
    """The reasons dpkt.dns.DNS does not read the records (tracecap.dns's docstring)."""
    https = response(RR(name="h.tc.test", type=65, rdata=b"\x00\x01\x00"))
    with pytest.raises(dpkt.UnpackError):
        DNS(https)
    mx = response(RR(name="tc.test", type=D.DNS_MX, preference=10, mxname="m.tc.test", rdata=b""))
    assert DNS(mx).an[0].preference == (10,)
    binary = response(RR(name="h.tc.test", type=D.DNS_TXT, text=[b"\xff"], rdata=b""))
    with pytest.raises(UnicodeDecodeError):
        DNS(binary)
    cut_a = bytearray(response(RR(name="a", type=D.DNS_A, rdata=b"\x01\x02\x03\x04")))
    assert len(DNS(bytes(cut_a[:-2])).an[0].rdata) == 2  # RDLENGTH 4 but 2 bytes: no error
    for raw in (https, mx, binary):
        assert dns.decode(raw).whole
    assert not dns.decode(bytes(cut_a[:-2])).whole


def test_this_decoder_agrees_with_dpkt_where_dpkt_is_right():
    records = [
        RR(name="a.tc.test", type=D.DNS_A, ttl=1, rdata=b"\x01\x02\x03\x04"),
        RR(name="a.tc.test", type=D.DNS_AAAA, ttl=2, rdata=bytes(range(16))),
        RR(name="c.tc.test", type=D.DNS_CNAME, ttl=3, cname="a.tc.test", rdata=b""),
        RR(name="tc.test", type=D.DNS_NS, ttl=4, nsname="ns.tc.test", rdata=b""),
        RR(name="p.arpa", type=D.DNS_PTR, ttl=5, ptrname="a.tc.test", rdata=b""),
        RR(name="tc.test", type=D.DNS_SOA, ttl=6, mname="ns.tc.test", rname="h.tc.test",
           serial=1, refresh=2, retry=3, expire=4, minimum=5, rdata=b""),
        RR(name="_s._udp.tc.test", type=D.DNS_SRV, ttl=7, priority=1, weight=2, port=3,
           srvname="a.tc.test", rdata=b""),
        RR(name="t.tc.test", type=D.DNS_TXT, ttl=8, text=[b"one", b"two"], rdata=b""),
    ]  # fmt: skip
    raw = response(*records)
    for theirs, ours in zip(DNS(raw).an, dns.decode(raw).proto_dns["answers"], strict=True):
        assert (theirs.name, theirs.ttl) == (ours["name"], ours["TTL"])
        assert theirs_fields(theirs) == ours_fields(ours), ours["type"]


def theirs_fields(rr: RR) -> tuple:
    """What dpkt read of a record, in tracecap's terms."""
    return {
        D.DNS_A: lambda: (socket.inet_ntoa(rr.ip),),
        D.DNS_AAAA: lambda: (socket.inet_ntop(socket.AF_INET6, rr.ip6),),
        D.DNS_CNAME: lambda: (rr.cname,),
        D.DNS_NS: lambda: (rr.nsname,),
        D.DNS_PTR: lambda: (rr.ptrname,),
        D.DNS_SOA: lambda: (rr.mname, rr.rname, rr.serial, rr.refresh, rr.retry, rr.expire,
                            rr.minimum),
        D.DNS_SRV: lambda: (rr.priority, rr.weight, rr.port, rr.srvname),
        D.DNS_TXT: lambda: tuple(rr.text),
    }[rr.type]()  # fmt: skip


def ours_fields(rr: dict) -> tuple:
    return {
        "A": lambda: (rr["IP"],),
        "AAAA": lambda: (rr["IP"],),
        "CNAME": lambda: (rr["CNAME"],),
        "NS": lambda: (rr["NS"],),
        "PTR": lambda: (rr["PTR"],),
        "SOA": lambda: tuple(rr["SOA"].values()),
        "SRV": lambda: tuple(rr["SRV"].values()),
        "TXT": lambda: tuple(rr["TXTs"]),
    }[rr["type"]]()


@pytest.mark.parametrize(
    ("rcode", "name"),
    [(0, "no error"), (1, "format error"), (2, "server failure "), (3, "non-existent domain"),
     (4, "not implemented"), (5, "query refused"), (9, "server not authoritative for zone"),
     (10, "name not contained in zone"), (11, "unknown")],
)  # fmt: skip
def test_response_codes_are_tracees_strings(rcode, name):
    got = dns.decode(response(rcode=rcode))
    assert got.proto_dns["responseCode"] == name


def test_an_opt_record_extends_the_response_code_and_lists_its_options():
    opt = RR(name="", type=D.DNS_OPT, cls=1232, ttl=(1 << 24), rdata=b"")
    opt.rdata = b"\x00\x0a\x00\x08" + bytes(range(8)) + b"\x00\x0f\x00\x02\x00\x12"
    msg = DNS(id=1, qd=[Q(name="x.tc.test")], ar=[opt])
    msg.qr = 1
    got = dns.decode(bytes(msg)).proto_dns
    assert got["responseCode"] == "bad opt version"  # extended RCODE 1 << 4 = BADVERS (16)
    (rr,) = got["additionals"]
    assert (rr["type"], rr["class"], rr["name"]) == ("OPT", "CLASS1232", "")
    assert rr["OPT"] == [{"code": "Cookie", "data": "0001020304050607"},
                         {"code": "EDE", "data": "0012"}]  # fmt: skip


def test_flags_opcode_and_z_are_read_as_tracee_reads_them():
    msg = DNS(id=9, qd=[Q(name="x")])
    msg.qr, msg.aa, msg.tc, msg.rd, msg.ra, msg.opcode = 1, 1, 1, 0, 1, D.DNS_NOTIFY
    msg.op |= D.DNS_AD | D.DNS_CD
    got = dns.decode(bytes(msg)).proto_dns
    assert {k: got[k] for k in ("QR", "AA", "TC", "RD", "RA", "Z", "AD", "CD", "opCode")} == {
        "QR": 1, "AA": 1, "TC": 1, "RD": 0, "RA": 1, "Z": 3, "AD": 1, "CD": 1,
        "opCode": "notify",
    }  # fmt: skip
    for opcode, name in [(0, "query"), (1, "inverse query"), (2, "status"), (5, "update"),
                         (6, "unknown")]:  # fmt: skip
        msg.opcode = opcode
        assert dns.decode(bytes(msg)).proto_dns["opCode"] == name


def test_authorities_and_additionals_are_read_with_their_counts():
    msg = DNS(id=3, qd=[Q(name="nope.tc.test")])
    msg.qr, msg.rcode = 1, D.DNS_RCODE_NXDOMAIN
    msg.ns = [RR(name="tc.test", type=D.DNS_SOA, ttl=300, mname="ns1.tc.test", rname="h.tc.test",
                 serial=7, refresh=1, retry=2, expire=3, minimum=4, rdata=b"")]  # fmt: skip
    msg.ar = [RR(name="ns1.tc.test", type=D.DNS_A, ttl=300, rdata=b"\x7f\x35\x00\x01")]
    got = dns.decode(bytes(msg)).proto_dns
    assert (got["QDCount"], got["ANCount"], got["NSCount"], got["ARCount"]) == (1, 0, 1, 1)
    assert got["responseCode"] == "non-existent domain"
    assert got["authorities"][0]["SOA"]["serial"] == 7
    assert got["additionals"][0]["IP"] == "127.53.0.1"


def test_compressed_names_and_binary_labels():
    raw = response(RR(name="example.com", type=D.DNS_CNAME, cname="www.example.com", rdata=b""))
    assert b"\xc0" in raw  # dpkt compressed the names
    assert only_answer(raw)["CNAME"] == "www.example.com"
    label = bytes([3]) + b"a\xffb" + b"\x00"
    raw = struct.pack(">6H", 1, 0, 1, 0, 0, 0) + label + b"\x00\x01\x00\x01"
    assert dns.decode(raw).proto_dns["questions"][0]["name"] == "a\\xffb"
    root = struct.pack(">6H", 1, 0, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01"
    assert dns.decode(root).proto_dns["questions"][0] == {"name": "", "type": "NS", "class": "IN"}


HEADER_1Q = struct.pack(">6H", 1, 0x8180, 1, 1, 0, 0)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\x00\x01\x01", "not a DNS message: 3 bytes, a header is 12"),
        (HEADER_1Q + b"\xc0\x0c\x00\x01\x00\x01",
         "malformed: question 1: name pointer at byte 12 does not point backwards"),
        (HEADER_1Q + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01",
         "malformed: the message ends inside answer 1"),
        (HEADER_1Q + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01"
         + b"\x00\x05" + b"\x01\x02\x03\x04\x05",
         "malformed: answer 1 (A): RDATA is 5 bytes, not 4"),
        (HEADER_1Q + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x01"
         + b"\x00\x02" + b"\x05a",
         "malformed: answer 1 (TXT): character-string at byte 31 runs past the RDATA"),
        (HEADER_1Q + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x01"
         + b"\x00\x03" + b"\x01b\x00" + b"\x00",
         "malformed: 1 bytes after the last record"),
        (HEADER_1Q + b"\x41" + b"a" * 65,
         "malformed: question 1: label type 0x40 at byte 12"),
        (HEADER_1Q + (b"\x3f" + b"a" * 63) * 4 + b"\x00",
         "malformed: question 1: name at byte 204 longer than 255 bytes"),
    ],
)  # fmt: skip
def test_malformed_messages_say_why_and_keep_what_was_read(raw, error):
    got = dns.decode(raw)
    assert not got.whole and not got.short
    assert got.proto_dns["error"] == error
    assert list(got.proto_dns)[-1] == "error"


def test_a_record_with_bad_rdata_keeps_it_in_hex_and_the_next_records_are_read():
    bad = RR(name="a", type=D.DNS_A, ttl=1, rdata=b"\x01\x02\x03")
    good = RR(name="b", type=D.DNS_A, ttl=1, rdata=b"\x01\x02\x03\x04")
    got = dns.decode(response(bad, good)).proto_dns
    assert got["answers"][0]["rdata"] == "010203"
    assert got["answers"][1]["IP"] == "1.2.3.4"
    assert got["error"] == "malformed: answer 1 (A): RDATA is 3 bytes, not 4"


def test_a_cut_message_reports_what_was_captured():
    raw = response(*[RR(name="a", type=D.DNS_A, rdata=bytes([10, 0, 0, i])) for i in range(8)])
    got = dns.decode(raw[:96], len(raw))
    assert got.short and not got.whole
    assert got.proto_dns["ANCount"] == 8
    assert 1 <= len(got.proto_dns["answers"]) < 8
    assert got.proto_dns["error"].endswith(f": 96 of {len(raw)} bytes captured")


def test_an_empty_shape_has_every_key_and_the_error():
    empty = dns.empty_proto_dns("why")
    assert list(empty) == [*PROTO_KEYS, "error"]


@given(st.binary(max_size=600))
@settings(max_examples=3000, deadline=None)
def test_any_bytes_decode_without_raising(raw):
    got = dns.decode(raw)
    assert got.whole or "error" in got.proto_dns
    dns.is_dns_udp(raw)
    dns.is_dns_tcp(raw)


# The content rule.


def test_real_dns_messages_are_dns_by_content():
    for raw in (query(), query("tc.test", D.DNS_SOA), response(), big_response()):
        assert dns.is_dns_udp(raw)
        assert dns.is_dns_tcp(framed(raw))
    big = big_response()
    assert dns.is_dns_udp(big[:96], len(big))  # cut at the default snap length
    assert dns.is_dns_tcp(framed(big)[:502])  # continued later


@pytest.mark.parametrize("name", sorted(NON_DNS))
def test_other_protocols_are_not_dns(name):
    raw = NON_DNS[name]
    assert not dns.is_dns_udp(raw)
    assert not dns.is_dns_tcp(raw)
    assert not dns.is_dns_tcp(framed(raw))


def test_the_tls_hello_passes_the_question_count_but_not_the_rest():
    assert struct.unpack_from(">H", TLS_HELLO, 4)[0] == 1  # QDCOUNT 1
    assert not dns.is_dns_udp(TLS_HELLO)


def test_random_bytes_are_not_dns():
    rng = random.Random(14)
    for _ in range(50_000):
        raw = rng.randbytes(rng.randrange(0, 700))
        assert not dns.is_dns_udp(raw), raw.hex()
        assert not dns.is_dns_tcp(raw), raw.hex()
    # random bytes behind a plausible header: the sections still have to read whole
    header = struct.pack(">6H", 7, 0x0100, 1, 0, 0, 0)
    for _ in range(20_000):
        raw = header + rng.randbytes(rng.randrange(5, 300))
        assert not dns.is_dns_udp(raw) or dns.decode(raw).whole


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.__setitem__(slice(4, 6), b"\x00\x02"), "two questions"),
        (lambda m: m.__setitem__(slice(4, 6), b"\x00\x00"), "no question"),
        (lambda m: m.__setitem__(2, m[2] | 0x18), "opcode 3"),
        (lambda m: m.__setitem__(3, m[3] | 0x40), "the reserved Z bit"),
        (lambda m: m.__setitem__(3, m[3] | 0x03), "a query with a response code"),
        (lambda m: m.__setitem__(slice(28, 30), b"\x00\x07"), "class 7"),
        (lambda m: m.__setitem__(slice(26, 28), b"\x00\x00"), "type 0"),
        (lambda m: m.extend(b"\x00"), "a byte after the message"),
        (lambda m: m.__delitem__(-1), "a byte short"),
    ],
)  # fmt: skip
def test_each_part_of_the_rule_rejects(change, why):
    raw = bytearray(query())
    assert raw[26:30] == b"\x00\x01\x00\x01"  # the question's type and class
    assert dns.is_dns_udp(bytes(raw))
    change(raw)
    assert not dns.is_dns_udp(bytes(raw)), why


def test_a_cut_message_is_dns_only_if_its_question_is_complete():
    raw = query("a-rather-long-name-for-a-host.tc.test")
    assert dns.is_dns_udp(raw[:60], len(raw))
    assert not dns.is_dns_udp(raw[:30], len(raw))  # the question is cut
    assert not dns.is_dns_udp(raw[:60])  # not cut: a message that ends early is malformed
