"""DNS messages as Tracee's ``trace.ProtoDNS`` prints them, and the rule that says a payload is
DNS (pure).

The JSON shape is Tracee v0.17's (types/trace/network_trace.go; values as its
pkg/events/derive/net_packet_dns.go renders gopacket 1.1.19's decoding): every resource record
carries every per-type field (``IP``, ``NS``, ``CNAME``, ``PTR``, ``TXTs``, ``SOA``, ``SRV``,
``MX``, ``OPT``, ``URI``, ``TXT``), zero-valued unless its type fills it; type, class, opcode and
response-code strings are gopacket's (the response code lower-cased, "server failure " with its
trailing space included); ``Z`` is the header's three bits after RA, so it holds AD and CD too;
an OPT record's high TTL bits extend the response code (RFC 6891 6.1.3). tracecap adds, as
documented in the README: ``AD`` and ``CD``; a type or class gopacket calls "Unknown" is named
as dig names it (IANA mnemonic, else ``TYPE<n>`` / ``CLASS<n>``, RFC 3597); the RDATA of a type
without decoded fields in hex (``rdata``); OPT option data in hex; ``error`` when the message
could not be read whole (records before the fault are kept).

dpkt 1.9.8's parser (dpkt.dns.DNS) was checked type by type. Its header and flag accessors are
right and are used here (``_Header``). Its record reading is not used: it rejects a whole message
for any type it does not know (HTTPS, SVCB, CAA, DS, RRSIG, ...), decodes names and TXT strings
as strict UTF-8 (a binary label, legal per RFC 2181 section 11, raises UnicodeDecodeError),
returns MX preference as a 1-tuple, never checks RDLENGTH against the bytes present (a cut A
record yields a 2-byte "address"), and gives no partial result. Its facts are kept: compression
pointers must point strictly before the name being read (no loops), names are at most 255 bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dpkt

from tracecap.text import text_field

#: Tracee's names (gopacket 1.1.19 DNSType.String) first, then IANA mnemonics as dig prints them.
TYPE_NAMES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 41: "OPT", 256: "URI",
    17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 29: "LOC", 35: "NAPTR", 36: "KX",
    37: "CERT", 39: "DNAME", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA",
    53: "SMIMEA", 55: "HIP", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC",
    63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF", 108: "EUI48", 109: "EUI64",
    249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA",
    255: "ANY", 257: "CAA",
}  # fmt: skip
#: gopacket's DNSClass.String, and NONE (RFC 2136).
CLASS_NAMES = {1: "IN", 2: "CS", 3: "CH", 4: "HS", 254: "NONE", 255: "Any"}
#: Tracee: strings.ToLower(gopacket DNSOpCode.String()).
OPCODE_NAMES = {0: "query", 1: "inverse query", 2: "status", 4: "notify", 5: "update"}
#: Tracee: strings.ToLower(gopacket DNSResponseCode.String()), its trailing space in 2 included.
RCODE_NAMES = {
    0: "no error", 1: "format error", 2: "server failure ", 3: "non-existent domain",
    4: "not implemented", 5: "query refused", 6: "name exists when it should not",
    7: "rr set exists when it should not", 8: "rr set that should exist does not",
    9: "server not authoritative for zone", 10: "name not contained in zone",
    16: "bad opt version", 17: "key not recognized", 18: "signature out of time window",
    19: "bad tkey mode", 20: "duplicate key name", 21: "algorithm not supported",
    22: "bad truncation", 23: "bad cookie",
}  # fmt: skip
#: gopacket's DNSOptionCode.String, and EDE (RFC 8914), which resolvers send with errors.
OPTION_NAMES = {
    3: "NSID", 5: "DAU", 6: "DHU", 7: "N3U", 8: "EDNSClientSubnet", 9: "EDNSExpire",
    10: "Cookie", 11: "EDNSKeepAlive", 12: "CodePadding", 13: "CodeChain",
    14: "CodeEDNSKeyTag", 15: "EDE", 16: "EDNSClientTag", 17: "EDNSServerTag",
    26946: "DeviceID",
}  # fmt: skip

HEADER_LEN = 12
#: The longest name, in wire form (RFC 1035 3.1).
MAX_NAME = 255
_OPT = 41
_RR_FIXED = struct.Struct(">HHIH")
_HEADER = struct.Struct(">HHHHHH")
_SECTIONS = ("answers", "authorities", "additionals")
_SECTION_ONE = {"answers": "answer", "authorities": "authority", "additionals": "additional"}


def type_name(value: int) -> str:
    return TYPE_NAMES.get(value) or f"TYPE{value}"


def class_name(value: int) -> str:
    return CLASS_NAMES.get(value) or f"CLASS{value}"


class _Short(Exception):
    """The bytes ended inside the message (cut, or not yet arrived)."""


class _Bad(Exception):
    """The bytes present are not a well-formed DNS message."""


class _Header(dpkt.dns.DNS):
    """dpkt's DNS header (id, op and the four counts) with its flag accessors (qr, opcode, aa,
    tc, rd, ra, rcode): only the 12 fixed bytes; ``decode`` reads the sections."""

    def unpack(self, buf: bytes) -> None:
        dpkt.Packet.unpack(self, buf)


def _name(buf: bytes, off: int, stop: int) -> tuple[bytes, int]:
    """The name at ``off`` (labels joined by dots, no trailing dot, the root empty) and the
    offset after it. Labels may not run past ``stop``; pointers go strictly backwards."""
    labels: list[bytes] = []
    size = 1  # the root's zero byte
    after = -1
    limit = off
    while True:
        if off >= stop:
            raise _Short
        n = buf[off]
        if n == 0:
            off += 1
            break
        if n >= 0xC0:
            if off + 2 > stop:
                raise _Short
            ptr = ((n & 0x3F) << 8) | buf[off + 1]
            if ptr >= limit:
                raise _Bad(f"name pointer at byte {off} does not point backwards")
            if after < 0:
                after = off + 2
            limit = off = ptr
            continue
        if n > 63:
            raise _Bad(f"label type 0x{n & 0xC0:02x} at byte {off}")
        end = off + 1 + n
        if end > stop:
            raise _Short
        size += n + 1
        if size > MAX_NAME:
            raise _Bad(f"name at byte {off} longer than {MAX_NAME} bytes")
        labels.append(buf[off + 1 : end])
        off = end
    return b".".join(labels), (after if after >= 0 else off)


def _rr_shape(name: bytes, rtype: int, rclass: int, ttl: int) -> dict[str, Any]:
    """Tracee's ProtoDNSResourceRecord with its zero values (Go's nil TXTs is null)."""
    return {
        "name": text_field(name),
        "type": type_name(rtype),
        "class": class_name(rclass),
        "TTL": ttl,
        "IP": "",
        "NS": "",
        "CNAME": "",
        "PTR": "",
        "TXTs": None,
        "SOA": {"MName": "", "RName": "", "serial": 0, "refresh": 0, "retry": 0, "expire": 0,
                "minimum": 0},
        "SRV": {"priority": 0, "weight": 0, "port": 0, "name": ""},
        "MX": {"preference": 0, "name": ""},
        "OPT": [],
        "URI": {"priority": 0, "weight": 0, "target": ""},
        "TXT": "",
    }  # fmt: skip


def _exact_name(buf: bytes, off: int, end: int) -> tuple[str, int]:
    name, after = _name(buf, off, end)
    return text_field(name), after


def _done(after: int, end: int) -> None:
    if after != end:
        raise _Bad(f"{end - after} bytes of RDATA after its fields")


#: An RDATA reader: fills a record's fields from (message, RDATA start, RDATA end).
_Reader = Callable[[dict[str, Any], bytes, int, int], None]


def _fixed(size: int) -> _Reader:
    """A type whose RDATA is an address of ``size`` bytes."""
    family = socket.AF_INET if size == 4 else socket.AF_INET6

    def decode(rr: dict, buf: bytes, off: int, end: int) -> None:
        if end - off != size:
            raise _Bad(f"RDATA is {end - off} bytes, not {size}")
        rr["IP"] = socket.inet_ntop(family, buf[off:end])

    return decode


def _one_name(key: str) -> _Reader:
    def decode(rr: dict, buf: bytes, off: int, end: int) -> None:
        rr[key], after = _exact_name(buf, off, end)
        _done(after, end)

    return decode


def _soa(rr: dict, buf: bytes, off: int, end: int) -> None:
    soa = rr["SOA"]
    soa["MName"], off = _exact_name(buf, off, end)
    soa["RName"], off = _exact_name(buf, off, end)
    if end - off != 20:
        raise _Bad(f"SOA has {end - off} bytes of numbers, not 20")
    fields = struct.unpack_from(">IIIII", buf, off)
    soa.update(zip(("serial", "refresh", "retry", "expire", "minimum"), fields, strict=True))


def _mx(rr: dict, buf: bytes, off: int, end: int) -> None:
    if end - off < 3:
        raise _Bad("MX shorter than 3 bytes")
    rr["MX"]["preference"] = int.from_bytes(buf[off : off + 2], "big")
    rr["MX"]["name"], after = _exact_name(buf, off + 2, end)
    _done(after, end)


def _srv(rr: dict, buf: bytes, off: int, end: int) -> None:
    if end - off < 7:
        raise _Bad("SRV shorter than 7 bytes")
    srv = rr["SRV"]
    srv["priority"], srv["weight"], srv["port"] = struct.unpack_from(">HHH", buf, off)
    srv["name"], after = _exact_name(buf, off + 6, end)
    _done(after, end)


def _txt(rr: dict, buf: bytes, off: int, end: int) -> None:
    """TXT and HINFO: character-strings filling the RDATA; ``TXT`` is the RDATA itself, length
    bytes included, as gopacket keeps it."""
    strings = []
    i = off
    while i < end:
        nxt = i + 1 + buf[i]
        if nxt > end:
            raise _Bad(f"character-string at byte {i} runs past the RDATA")
        strings.append(text_field(buf[i + 1 : nxt]))
        i = nxt
    rr["TXTs"] = strings
    rr["TXT"] = text_field(buf[off:end])


def _opt(rr: dict, buf: bytes, off: int, end: int) -> None:
    options = []
    i = off
    while i < end:
        if i + 4 > end:
            raise _Bad(f"EDNS option at byte {i} shorter than 4 bytes")
        code, size = struct.unpack_from(">HH", buf, i)
        if i + 4 + size > end:
            raise _Bad(f"EDNS option at byte {i} runs past the RDATA")
        name = OPTION_NAMES.get(code) or f"OPTION{code}"
        options.append({"code": name, "data": buf[i + 4 : i + 4 + size].hex()})
        i += 4 + size
    rr["OPT"] = options


def _uri(rr: dict, buf: bytes, off: int, end: int) -> None:
    if end - off < 4:
        raise _Bad("URI shorter than 4 bytes")
    rr["URI"]["priority"], rr["URI"]["weight"] = struct.unpack_from(">HH", buf, off)
    rr["URI"]["target"] = text_field(buf[off + 4 : end])


#: The types whose RDATA tracecap decodes; others keep it in hex (``rdata``).
RDATA: dict[int, _Reader] = {
    1: _fixed(4),
    28: _fixed(16),
    2: _one_name("NS"),
    5: _one_name("CNAME"),
    12: _one_name("PTR"),
    6: _soa,
    15: _mx,
    16: _txt,
    13: _txt,
    33: _srv,
    41: _opt,
    256: _uri,
}


@dataclass
class Decoded:
    """One message read: ``proto_dns`` (Tracee's shape, with ``error`` when not whole), whether
    it was ``whole`` (every record read, nothing after the last), whether reading stopped only
    because bytes were ``short`` (cut or still to come, nothing malformed before), and each
    question's type and class (the content rule's evidence)."""

    proto_dns: dict[str, Any]
    whole: bool = False
    short: bool = False
    questions: list[tuple[int, int]] = field(default_factory=list)


def decode(buf: bytes, length: int | None = None) -> Decoded:
    """Read the DNS message in ``buf``; ``length`` is the message's real size when ``buf`` holds
    only its start (cut at the snap length, a TCP segment still to come, a lost segment)."""
    length = len(buf) if length is None else length
    try:
        head = _Header(buf)
    except dpkt.NeedData:
        out = empty_proto_dns(f"not a DNS message: {len(buf)} bytes, a header is {HEADER_LEN}")
        return Decoded(out, short=len(buf) < length)
    op = head.op
    proto: dict[str, Any] = {
        "ID": head.id,
        "QR": head.qr,
        "opCode": OPCODE_NAMES.get(head.opcode, "unknown"),
        "AA": head.aa,
        "TC": head.tc,
        "RD": head.rd,
        "RA": head.ra,
        "Z": (op >> 4) & 0x7,
        "AD": int(bool(op & dpkt.dns.DNS_AD)),
        "CD": int(bool(op & dpkt.dns.DNS_CD)),
        "responseCode": "",
        "QDCount": head.qd,
        "ANCount": head.an,
        "NSCount": head.ns,
        "ARCount": head.ar,
        "questions": [],
        "answers": [],
        "authorities": [],
        "additionals": [],
    }
    out = Decoded(proto)
    rcode = head.rcode
    where = "question 1"
    try:
        off = HEADER_LEN
        end = len(buf)
        for i in range(head.qd):
            where = f"question {i + 1}"
            name, off = _name(buf, off, end)
            if off + 4 > end:
                raise _Short
            qtype, qclass = struct.unpack_from(">HH", buf, off)
            off += 4
            out.questions.append((qtype, qclass))
            proto["questions"].append(
                {"name": text_field(name), "type": type_name(qtype), "class": class_name(qclass)}
            )
        for section, count in zip(_SECTIONS, (head.an, head.ns, head.ar), strict=True):
            for i in range(count):
                where = f"{_SECTION_ONE[section]} {i + 1}"
                rr, off, ttl, rtype = _record(buf, off, end, where, proto)
                proto[section].append(rr)
                if rtype == _OPT and section == "additionals":
                    rcode |= (ttl >> 20) & 0xFF0
        if off != length:
            proto.setdefault("error", f"malformed: {length - off} bytes after the last record")
        out.whole = "error" not in proto
    except _Short:
        # a record read before with malformed RDATA has already set the error: not merely short
        out.short = len(buf) < length and "error" not in proto
        if len(buf) < length:
            error = f"message cut in {where}: {len(buf)} of {length} bytes captured"
        else:
            error = f"malformed: the message ends inside {where}"
        proto.setdefault("error", error)
    except _Bad as exc:
        proto.setdefault("error", f"malformed: {where}: {exc}")
    proto["responseCode"] = RCODE_NAMES.get(rcode, "unknown")
    if "error" in proto:  # keep it last, after the sections, where readers look for it
        proto["error"] = proto.pop("error")
    return out


def _record(
    buf: bytes, off: int, end: int, where: str, proto: dict[str, Any]
) -> tuple[dict[str, Any], int, int, int]:
    """One resource record. Malformed RDATA does not stop the reading (RDLENGTH says where the
    next record starts): the record keeps its RDATA in hex and the message gets an ``error``."""
    name, off = _name(buf, off, end)
    if off + _RR_FIXED.size > end:
        raise _Short
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, off)
    off += _RR_FIXED.size
    if off + rdlen > end:
        raise _Short
    rr = _rr_shape(name, rtype, rclass, ttl)
    reader = RDATA.get(rtype)
    if reader is None:
        rr["rdata"] = buf[off : off + rdlen].hex()
    else:
        try:
            reader(rr, buf, off, off + rdlen)
        except (_Bad, _Short) as exc:
            rr["rdata"] = buf[off : off + rdlen].hex()
            reason = str(exc) or "a name runs past the RDATA"
            proto.setdefault("error", f"malformed: {where} ({type_name(rtype)}): {reason}")
    return rr, off + rdlen, ttl, rtype


def empty_proto_dns(error: str) -> dict[str, Any]:
    """The shape with zero values and the reason no message could be read."""
    return {
        "ID": 0, "QR": 0, "opCode": "", "AA": 0, "TC": 0, "RD": 0, "RA": 0, "Z": 0, "AD": 0,
        "CD": 0, "responseCode": "", "QDCount": 0, "ANCount": 0, "NSCount": 0, "ARCount": 0,
        "questions": [], "answers": [], "authorities": [], "additionals": [], "error": error,
    }  # fmt: skip


# The content rule: is a payload on a port other than 53 a DNS message?
#
# A payload is DNS when (1) its 12-byte header is one a resolver or client sends: exactly one
# question (RFC 9619), opcode QUERY, STATUS, NOTIFY or UPDATE, the reserved Z bit clear, a query's
# response code 0, and no more records than the bytes could hold (11 bytes at least each); (2) the
# question's class is IN, CH, HS, NONE or ANY and its type not 0; (3) the message reads whole with
# ``decode`` -- every name, record and RDATA well formed, ending exactly at the datagram's end
# (TCP: where its 2-byte length prefix says) -- or, when the bytes end early (cut at the snap
# length, or a TCP message continued in a later segment), everything present reads and the
# question is complete. Random bytes pass (1) and (2) about once in 10^10; HTTP, TLS and SSH
# fail (1) on their first bytes. Check (1) reads 12 bytes: a packet that is not DNS costs under
# a microsecond more (scripts/bench_protocols.py).

_QUERY_OPCODES = frozenset({0, 2, 4, 5})
_QUESTION_CLASSES = frozenset({1, 3, 4, 254, 255})
_MIN_MESSAGE = HEADER_LEN + 5  # the root name, type and class
_MIN_RR = 11


def _plausible_header(buf: bytes, off: int, length: int) -> bool:
    if len(buf) - off < HEADER_LEN or length < _MIN_MESSAGE:
        return False
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(buf, off)
    return (
        qd == 1
        and not flags & dpkt.dns.DNS_Z
        and (flags >> 11) & 0xF in _QUERY_OPCODES
        and (flags & dpkt.dns.DNS_QR or not flags & 0xF)
        and (an + ns + ar) * _MIN_RR <= length - _MIN_MESSAGE
    )


def _reads_as_dns(msg: bytes, length: int) -> bool:
    got = decode(msg, length)
    if not got.questions:
        return False
    qtype, qclass = got.questions[0]
    if qtype == 0 or qclass not in _QUESTION_CLASSES:
        return False
    return got.whole or got.short


def is_dns_udp(payload: bytes, length: int | None = None) -> bool:
    """A UDP payload that is a DNS message; ``length`` is the datagram's real payload length
    (its UDP length field less 8) when only ``payload`` was captured."""
    length = len(payload) if length is None else length
    return _plausible_header(payload, 0, length) and _reads_as_dns(payload, length)


def is_dns_tcp(payload: bytes) -> bool:
    """A TCP segment's payload that starts a DNS message (which may continue in later segments
    or have been cut at the snap length)."""
    if len(payload) < 2:
        return False
    length = int.from_bytes(payload[:2], "big")
    if not _plausible_header(payload, 2, length):
        return False
    return _reads_as_dns(payload[2 : 2 + length], length)
