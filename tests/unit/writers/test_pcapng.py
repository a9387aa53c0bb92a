"""pcapng block encoding, checked against dpkt's reader and the pcapng layout rules."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import dpkt
import pytest
from dpkt import pcapng as ng
from hypothesis import given, settings
from hypothesis import strategies as st

from writers.pcapng import (
    LINKTYPE_RAW,
    MAX_OPTION_BYTES,
    SNAPLEN,
    TSRESOL_NS,
    file_header,
    packet_block,
    packet_block_with,
    packet_options,
    split_ts,
)

TS = 1_700_000_000_123_456_789


def udp_packet(payload: bytes = b"marker") -> bytes:
    udp = dpkt.udp.UDP(sport=40000, dport=53, ulen=8 + len(payload), data=payload)
    ip = dpkt.ip.IP(src=b"\x7f\x00\x00\x01", dst=b"\x7f\x00\x00\x01", p=dpkt.ip.IP_PROTO_UDP)
    ip.data = udp
    ip.len = 20 + len(udp)
    return bytes(ip)


def blocks(buf: bytes) -> list[tuple[int, bytes]]:
    """(type, whole block) for every block, checking the two length fields agree."""
    out = []
    pos = 0
    while pos < len(buf):
        btype, blen = struct.unpack_from("<II", buf, pos)
        assert blen % 4 == 0 and blen >= 12
        block = buf[pos : pos + blen]
        assert len(block) == blen
        assert struct.unpack_from("<I", block, blen - 4)[0] == blen
        out.append((btype, block))
        pos += blen
    return out


def epbs(buf: bytes) -> list[ng.EnhancedPacketBlockLE]:
    return [ng.EnhancedPacketBlockLE(b) for t, b in blocks(buf) if t == ng.PCAPNG_BT_EPB]


def options(block: ng._PcapngBlock) -> dict[int, bytes]:
    return {o.code: o.data for o in block.opts if o.code != ng.PCAPNG_OPT_ENDOFOPT}


# -- header ------------------------------------------------------------------------------------


def test_header_is_one_section_with_one_raw_ns_interface() -> None:
    desc = json.dumps({"processName": "ping", "container": {"id": ""}})
    found = blocks(file_header(desc))
    assert [t for t, _ in found] == [ng.PCAPNG_BT_SHB, ng.PCAPNG_BT_IDB]
    shb = ng.SectionHeaderBlockLE(found[0][1])
    assert found[0][1][8:12] == b"\x4d\x3c\x2b\x1a"  # byte-order magic, little-endian
    assert shb.sec_len == -1  # length unknown: blocks may be appended
    idb = ng.InterfaceDescriptionBlockLE(found[1][1])
    assert idb.linktype == LINKTYPE_RAW == 101
    assert idb.snaplen == SNAPLEN == 262144
    opts = options(idb)
    assert opts[ng.PCAPNG_OPT_IF_TSRESOL] == bytes([TSRESOL_NS])
    assert json.loads(opts[ng.PCAPNG_OPT_IF_DESCRIPTION]) == json.loads(desc)


def test_description_that_cannot_fit_an_option_is_refused_not_cut() -> None:
    file_header("x" * MAX_OPTION_BYTES)
    with pytest.raises(ValueError, match="exceeds"):
        file_header("x" * (MAX_OPTION_BYTES + 1))


# -- packets -----------------------------------------------------------------------------------


def test_round_trip_through_dpkt_reader_keeps_lengths_ns_and_comment() -> None:
    full = udp_packet(b"A" * 200)
    cut = full[:60]
    buf = (
        file_header("{}")
        + packet_block(TS, full, len(full), "pid=1 tid=1 comm=a container=host direction=egress")
        + packet_block(TS + 1, cut, len(full), "second", inbound=True)
    )
    reader = ng.Reader(io.BytesIO(buf))
    assert reader.datalink() == 101
    got = list(reader)
    assert [data for _, data in got] == [full, cut]
    # dpkt turns ts into a float: only good to the microsecond at today's epoch
    assert got[0][0] == pytest.approx(TS / 1e9, abs=1e-6)

    first, second = epbs(buf)
    assert (first.caplen, first.pkt_len) == (len(full), len(full))
    assert (second.caplen, second.pkt_len) == (60, len(full))  # truncation stays visible
    assert (first.ts_high << 32 | first.ts_low) == TS
    assert (second.ts_high << 32 | second.ts_low) == TS + 1
    assert first.opts[0].text == "pid=1 tid=1 comm=a container=host direction=egress"
    assert second.opts[0].text == "second"
    assert options(second)[2] == struct.pack("<I", 1)  # epb_flags inbound
    assert 2 not in options(first)


def test_packet_bytes_are_never_rewritten() -> None:
    full = udp_packet(b"B" * 500)
    cut = full[:28]  # IP + UDP headers only: ip.len and udp.ulen still say 528 and 508
    (epb,) = epbs(packet_block(TS, cut, len(full), "c"))
    assert epb.pkt_data == cut


@pytest.mark.parametrize("length", range(8))
def test_padding_and_total_length_for_short_data(length: int) -> None:
    data = bytes(range(1, length + 1))
    block = packet_block(TS, data, length + 100, "abc")
    assert len(block) % 4 == 0
    ((btype, whole),) = blocks(block)
    assert btype == ng.PCAPNG_BT_EPB and whole == block
    caplen, orig = struct.unpack_from("<II", block, 20)
    assert (caplen, orig) == (length, length + 100)
    padded = (length + 3) // 4 * 4
    assert block[28 : 28 + length] == data
    assert block[28 + length : 28 + padded] == bytes(padded - length)
    # options follow the padding: comment (code 1, len 3, 'abc' + 1 pad), then end of options
    assert block[28 + padded : 28 + padded + 8] == b"\x01\x00\x03\x00abc\x00"
    assert block[28 + padded + 8 : 28 + padded + 12] == bytes(4)
    assert len(block) == 28 + padded + 12 + 4


@pytest.mark.parametrize(
    ("data", "orig_len"),
    [(b"abc", 2), (b"", -1), (b"", 1 << 32), (b"x" * (SNAPLEN + 1), SNAPLEN + 1)],
)
def test_impossible_lengths_are_refused(data: bytes, orig_len: int) -> None:
    with pytest.raises(ValueError):
        packet_block(TS, data, orig_len, "")


def test_largest_capture_is_accepted() -> None:
    data = b"\x45" + bytes(SNAPLEN - 1)
    (epb,) = epbs(packet_block(TS, data, 1 << 20, ""))
    assert epb.caplen == SNAPLEN and epb.pkt_len == 1 << 20


@pytest.mark.parametrize("ts", [-1, 1 << 64])
def test_timestamps_outside_64_bits_are_refused(ts: int) -> None:
    with pytest.raises(ValueError):
        packet_block(ts, b"", 0, "")


def test_split_ts() -> None:
    assert split_ts(0) == (0, 0)
    assert split_ts((5 << 32) | 7) == (5, 7)
    assert split_ts((1 << 64) - 1) == (0xFFFFFFFF, 0xFFFFFFFF)


def test_overlong_comment_is_cut_on_a_character_boundary() -> None:
    comment = "é" * MAX_OPTION_BYTES  # 2 bytes each: cut must not split one
    (epb,) = epbs(packet_block(TS, b"", 0, comment))
    text = epb.opts[0].data.decode("utf-8")  # still valid UTF-8
    assert len(text.encode()) <= MAX_OPTION_BYTES and comment.startswith(text)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    extra=st.integers(min_value=0, max_value=100_000),
    ts=st.integers(min_value=0, max_value=(1 << 64) - 1),
    comment=st.text(max_size=200),
    inbound=st.none() | st.booleans(),
)
def test_any_packet_round_trips(
    data: bytes, extra: int, ts: int, comment: str, inbound: bool | None
) -> None:
    block = packet_block(ts, data, len(data) + extra, comment, inbound=inbound)
    assert len(block) % 4 == 0
    (epb,) = epbs(block)
    assert epb.pkt_data == data
    assert (epb.caplen, epb.pkt_len) == (len(data), len(data) + extra)
    assert (epb.ts_high << 32 | epb.ts_low) == ts
    assert epb.opts[0].code == ng.PCAPNG_OPT_COMMENT
    assert epb.opts[0].data == comment.encode("utf-8", "backslashreplace")
    assert epb.opts[-1].code == ng.PCAPNG_OPT_ENDOFOPT


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    ts=st.integers(min_value=0, max_value=(1 << 64) - 1),
    comment=st.text(max_size=200),
    inbound=st.none() | st.booleans(),
)
def test_struct_packing_is_dpkts_layout(
    data: bytes, ts: int, comment: str, inbound: bool | None
) -> None:
    """The per-packet path packs with struct; dpkt's own EPB packs the same bytes (dpkt sets
    the original length to the captured one, so the two agree when nothing was cut)."""
    opts = [ng.PcapngOptionLE(code=ng.PCAPNG_OPT_COMMENT, data=_utf8(comment))]
    if inbound is not None:
        opts.append(ng.PcapngOptionLE(code=2, data=struct.pack("<I", 1 if inbound else 2)))
    opts.append(ng.PcapngOptionLE())
    epb = ng.EnhancedPacketBlockLE(
        ts_high=ts >> 32, ts_low=ts & 0xFFFFFFFF, pkt_data=data, opts=opts
    )
    assert packet_block(ts, data, len(data), comment, inbound=inbound) == bytes(epb)
    block = packet_block_with(ts, data, len(data), packet_options(comment, inbound))
    assert block == bytes(epb)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


@settings(max_examples=100, deadline=None)
@given(comment=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=100))
def test_non_ascii_comments_are_utf8_and_read_back_by_dpkt(comment: str) -> None:
    buf = file_header(json.dumps({"c": comment})) + packet_block(TS, b"", 0, comment)
    (epb,) = epbs(buf)
    assert epb.opts[0].text == comment
    assert len(list(ng.Reader(io.BytesIO(buf)))) == 1


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_ns_time_lengths_and_comment(tmp_path: Path) -> None:
    full = udp_packet(b"C" * 100)
    path = tmp_path / "x.pcap"
    path.write_bytes(
        file_header('{"processName": "é"}')
        + packet_block(TS, full[:40], len(full), "pid=7 comm=é", inbound=False)
    )
    proc = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.comment", "-e", "frame.len",
         "-e", "frame.cap_len", "-e", "frame.time_epoch", "-e", "frame.packet_flags_direction"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\t") == [
        "pid=7 comm=é",
        str(len(full)),
        "40",
        "1700000000.123456789",
        "0x00000002\n",
    ]
