"""The pcap writer, fed decoded bus messages built from real packets (no socket).

Files are read back three ways: block by block (comments, lengths and ns timestamps, which
dpkt's Reader does not expose), with dpkt's Reader, and with tshark and tcpdump, the tools users
will open them with.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import dpkt
import pytest
from dpkt import pcapng as ng
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf import records
from collector.packets import OWNER_WAIT_NS, PacketAssembler
from tests.support import envelopes
from tests.support.envelopes import packet_env
from tests.support.writer_harness import OutputTree, WriterHarness
from tracecap import bus
from writers import fileio
from writers.base import Subscriber
from writers.naming import (
    comment_text,
    container_short,
    pcap_command_name,
    pcap_container_name,
    pcap_process_name,
)
from writers.pcap import HELD_OVERHEAD, REORDER_WINDOW_NS, PcapWriter
from writers.pcapng import SNAPLEN
from writers.reorder import GRAIN_NS
from writers.runner import WRITER_KINDS, run_writer

CID = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
CID11 = CID[:11]
LO = b"\x7f\x00\x00\x01"
ALL = ("single", "process", "container", "command")
HAVE_TOOLS = all(shutil.which(tool) for tool in ("tshark", "tcpdump", "capinfos"))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="tshark/tcpdump/capinfos not installed")


# -- packets and messages ------------------------------------------------------------------------


def ip4(proto: int, l4: dpkt.Packet, src: bytes = LO, dst: bytes = LO) -> bytes:
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64)
    ip.data = l4
    ip.len = 20 + len(l4)
    return bytes(ip)


def icmp_echo(payload: bytes = b"ping-marker", reply: bool = False) -> bytes:
    echo = dpkt.icmp.ICMP.Echo(id=7, seq=1, data=payload)
    kind = dpkt.icmp.ICMP_ECHOREPLY if reply else dpkt.icmp.ICMP_ECHO
    return ip4(dpkt.ip.IP_PROTO_ICMP, dpkt.icmp.ICMP(type=kind, data=echo))


def udp(payload: bytes = b"udp-marker", sport: int = 40000, dport: int = 7) -> bytes:
    seg = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)
    return ip4(dpkt.ip.IP_PROTO_UDP, seg)


def tcp(payload: bytes = b"tcp-marker") -> bytes:
    seg = dpkt.tcp.TCP(sport=40001, dport=7, seq=1, ack=1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH)
    seg.data = payload
    return ip4(dpkt.ip.IP_PROTO_TCP, seg)


def message(payload: bytes, **overrides: Any) -> bus.Message:
    """A packet message whose ``orig_len`` is the payload's unless given."""
    return envelopes.message(
        bus.TOPIC_NET_PACKET, packet_env(**{"orig_len": len(payload), **overrides}), payload
    )


class Harness(WriterHarness[PcapWriter]):
    """A pcap writer of the given splits; ``close`` returns the index records. Unless a test
    gives ``reorder_window_ns``, packets are written as they come (a zero window), so that the
    tests of files, names and errors can look at the disk after each ``feed``."""

    def __init__(self, root: Path, split: tuple[str, ...] = ALL, **kwargs: Any) -> None:
        kwargs.setdefault("reorder_window_ns", 0)
        super().__init__(root, lambda out, index: PcapWriter(out, index, split, **kwargs))

    def feed(self, payload: bytes, **overrides: Any) -> None:
        self.writer.handle(message(payload, **overrides))

    def close(self) -> list[dict[str, Any]]:  # type: ignore[override]
        super().close()
        return self.records()

    def files(self) -> set[str]:
        return pcap_files(self.root)


def pcap_files(root: Path) -> set[str]:
    found = (p for p in root.rglob("*") if p.is_file() and p.name != "index.jsonl")
    return {str(p.relative_to(root)) for p in found}


# -- reading files back --------------------------------------------------------------------------


def read_blocks(path: Path) -> list[tuple[int, bytes]]:
    buf = path.read_bytes()
    out, pos = [], 0
    while pos < len(buf):
        btype, blen = struct.unpack_from("<II", buf, pos)
        assert blen >= 12 and blen % 4 == 0 and pos + blen <= len(buf), f"bad block at {pos}"
        assert struct.unpack_from("<I", buf, pos + blen - 4)[0] == blen
        out.append((btype, buf[pos : pos + blen]))
        pos += blen
    return out


def descriptions(path: Path) -> list[Any]:
    """The IDB description of every section, as JSON."""
    found = []
    for btype, block in read_blocks(path):
        if btype == ng.PCAPNG_BT_IDB:
            idb = ng.InterfaceDescriptionBlockLE(block)
            assert idb.linktype == 101
            opts = {o.code: o.data for o in idb.opts}
            assert opts[ng.PCAPNG_OPT_IF_TSRESOL] == b"\x09"
            found.append(json.loads(opts[ng.PCAPNG_OPT_IF_DESCRIPTION]))
    return found


def packets(path: Path) -> list[tuple[int, bytes, int, str]]:
    """(ts ns, captured bytes, original length, comment) of every packet."""
    out = []
    for btype, block in read_blocks(path):
        if btype == ng.PCAPNG_BT_EPB:
            epb = ng.EnhancedPacketBlockLE(block)
            assert epb.caplen == len(epb.pkt_data) and epb.iface_id == 0
            comment = next(o.text for o in epb.opts if o.code == ng.PCAPNG_OPT_COMMENT)
            out.append((epb.ts_high << 32 | epb.ts_low, epb.pkt_data, epb.pkt_len, comment))
    return out


def dpkt_read(path: Path) -> list[bytes]:
    with path.open("rb") as f:
        return [data for _, data in ng.Reader(f)]


def _clean_stderr(text: str) -> str:
    # tshark warns when run as root (as CI is); that is about the user, not the file
    return "\n".join(
        line for line in text.splitlines() if line.strip() and not line.startswith("Running as")
    )


def tshark(path: Path) -> list[list[str]]:
    proc = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.comment", "-e", "frame.len",
         "-e", "frame.cap_len"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _clean_stderr(proc.stderr) == "", proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


def tcpdump(path: Path) -> list[str]:
    proc = subprocess.run(
        ["tcpdump", "-nn", "-r", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    err = [line for line in proc.stderr.splitlines() if not line.startswith("reading from file")]
    assert err == [], proc.stderr
    return proc.stdout.splitlines()


def check_tools(path: Path, count: int) -> None:
    """dpkt, tshark and tcpdump all read every packet, without a complaint."""
    assert len(dpkt_read(path)) == count
    if HAVE_TOOLS:
        assert len(tshark(path)) == count
        assert len(tcpdump(path)) == count


# -- naming ------------------------------------------------------------------------------------


def test_pcap_names() -> None:
    assert container_short("") == container_short("host") == "host"
    assert container_short(CID) == CID11
    assert pcap_process_name(b"ping", 12, 34) == "ping_12_34.pcap"
    assert pcap_command_name(b"ping") == "ping.pcap"
    assert pcap_container_name(CID) == f"{CID11}.pcap"
    assert pcap_container_name("") == "host.pcap"
    assert pcap_command_name(b"") == "_.pcap"
    with pytest.raises(ValueError):
        pcap_process_name(b"x", -1, 0)
    with pytest.raises(ValueError):
        container_short("../etc")


def undo_comment_text(text: str) -> bytes:
    """The inverse of comment_text, to show that it loses nothing."""
    back = bytearray()
    i = 0
    while i < len(text):
        if text[i] != "\\":
            back += text[i].encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind == "\\":
            back += b"\\"
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}[kind]
        code = int(text[i + 2 : i + 2 + width], 16)
        # \xNN at or above 0x80 is an undecodable byte; everything else a character
        back += bytes([code]) if kind == "x" and code >= 0x80 else chr(code).encode()
        i += 2 + width
    return bytes(back)


@given(raw=st.binary(max_size=64) | st.text(max_size=20).map(lambda t: t.encode("utf-8")))
def test_comment_text_is_one_printable_token_and_injective(raw: bytes) -> None:
    text = comment_text(raw)
    assert text.isprintable() and " " not in text and "\n" not in text
    assert undo_comment_text(text) == raw


def test_comment_text_examples() -> None:
    assert comment_text(b"ping") == "ping"
    assert comment_text(b"a b\n") == "a\\x20b\\x0a"
    assert comment_text(b"\xff\\") == "\\xff\\\\"
    assert comment_text("кот".encode()) == "кот"
    assert comment_text(b"ksoftirqd/2") == "ksoftirqd/2"


# -- splits ------------------------------------------------------------------------------------


def test_every_split_gets_its_files_and_packets(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    st_ping, st_curl = 1_000, 2_000
    ts0 = 1_700_000_000_000_000_001
    ping_out, ping_in = icmp_echo(), icmp_echo(reply=True)
    curl_udp, curl_tcp = udp(b"dns?"), tcp(b"GET / HTTP/1.1\r\n\r\n")
    rst = tcp(b"")
    h.feed(ping_out, ts=ts0, start_time=st_ping)
    h.feed(ping_in, ts=ts0 + 1, start_time=st_ping, direction="ingress")
    curl = {"pid": 200, "tid": 201, "ppid": 150, "uid": 0, "comm": b"curl"}
    h.feed(curl_udp, ts=ts0 + 2, container_id=CID, start_time=st_curl, **curl)
    h.feed(curl_tcp, ts=ts0 + 3, container_id=CID, start_time=st_curl, **curl)
    kernel = {"pid": 0, "tid": 0, "ppid": 0, "uid": 0, "comm": b"", "start_time": 0}
    h.feed(rst, ts=ts0 + 4, direction="ingress", **kernel)

    ping_file = f"pcap/processes/host/ping_100_{st_ping}.pcap"
    curl_file = f"pcap/processes/{CID11}/curl_201_{st_curl}.pcap"
    assert h.files() == {
        "pcap/single.pcap",
        ping_file,
        curl_file,
        "pcap/containers/host.pcap",
        f"pcap/containers/{CID11}.pcap",
        "pcap/commands/host/ping.pcap",
        f"pcap/commands/{CID11}/curl.pcap",
    }
    root = h.root
    expect = {
        "pcap/single.pcap": [ping_out, ping_in, curl_udp, curl_tcp, rst],
        ping_file: [ping_out, ping_in],
        "pcap/commands/host/ping.pcap": [ping_out, ping_in],
        "pcap/containers/host.pcap": [ping_out, ping_in, rst],
        curl_file: [curl_udp, curl_tcp],
        f"pcap/commands/{CID11}/curl.pcap": [curl_udp, curl_tcp],
        f"pcap/containers/{CID11}.pcap": [curl_udp, curl_tcp],
    }
    for rel, pkts in expect.items():
        got = packets(root / rel)
        assert [data for _, data, _, _ in got] == pkts, rel
        assert all(orig == len(data) for _, data, orig, _ in got)
        check_tools(root / rel, len(pkts))

    single = packets(root / "pcap/single.pcap")
    assert [ts for ts, *_ in single] == [ts0 + i for i in range(5)]
    assert [c for *_, c in single] == [
        "pid=100 tid=100 comm=ping container=host direction=egress",
        "pid=100 tid=100 comm=ping container=host direction=ingress",
        f"pid=200 tid=201 comm=curl container={CID} direction=egress",
        f"pid=200 tid=201 comm=curl container={CID} direction=egress",
        "pid=0 tid=0 comm= container=host direction=ingress",
    ]
    assert h.writer.counters["packets"] == 5 and h.writer.counters["files"] == 7
    assert h.writer.counters["rejected"] == h.writer.counters["write_errors"] == 0
    h.close()


def test_descriptions_carry_each_files_context(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(udp(), pid=300, tid=301, ppid=3, uid=1000, comm=b"dig", container_id=CID,
           start_time=55, cgroup_id=77)  # fmt: skip
    root = h.root
    assert descriptions(root / "pcap/single.pcap") == [{}]
    container = {"container": {"id": CID}, "hostName": ""}
    assert descriptions(root / f"pcap/containers/{CID11}.pcap") == [container]
    assert descriptions(root / f"pcap/commands/{CID11}/dig.pcap") == [
        {"processName": "dig", **container}
    ]
    assert descriptions(root / f"pcap/processes/{CID11}/dig_301_55.pcap") == [
        {
            "processName": "dig",
            "process": {
                "processId": 300,
                "threadId": 301,
                "parentProcessId": 3,
                "hostProcessId": 300,
                "hostThreadId": 301,
                "hostParentProcessId": 3,
                "userId": 1000,
                "cgroupId": 77,
                "threadStartTime": 55,
            },
            **container,
        }
    ]
    h.close()
    h2 = Harness(tmp_path / "h", split=("container",))
    h2.feed(udp(), container_id="host")
    assert descriptions(h2.root / "pcap/containers/host.pcap") == [
        {"container": {"id": ""}, "hostName": ""}
    ]
    h2.close()


def test_only_the_chosen_splits_are_written(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("command", "container"))
    h.feed(udp())
    assert h.files() == {"pcap/containers/host.pcap", "pcap/commands/host/ping.pcap"}
    h.close()


@pytest.mark.parametrize("split", [(), ("single", "bogus"), ("files",)])
def test_bad_splits_are_refused(tmp_path: Path, split: tuple[str, ...]) -> None:
    with OutputTree(tmp_path) as tree, pytest.raises(ValueError, match="pcap split"):
        PcapWriter(tree.out, tree.index, split)


def test_one_process_file_per_thread(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("process", "command"))
    h.feed(udp(b"a"), pid=10, tid=10, comm=b"app", start_time=1)
    h.feed(udp(b"b"), pid=10, tid=11, comm=b"app", start_time=2)
    h.feed(udp(b"c"), pid=10, tid=10, comm=b"app", start_time=3)  # tid reused by a new thread
    assert h.files() == {
        "pcap/processes/host/app_10_1.pcap",
        "pcap/processes/host/app_11_2.pcap",
        "pcap/processes/host/app_10_3.pcap",
        "pcap/commands/host/app.pcap",
    }
    assert len(packets(h.root / "pcap/commands/host/app.pcap")) == 3
    h.close()


def test_kernel_packets_go_to_single_and_container_only(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for i in range(3):
        h.feed(tcp(b""), pid=0, tid=0, ppid=0, comm=b"", start_time=0, ts=10 + i)
    h.feed(tcp(b""), pid=0, tid=0, ppid=0, comm=b"", start_time=0, container_id=CID)
    assert h.files() == {
        "pcap/single.pcap",
        "pcap/containers/host.pcap",
        f"pcap/containers/{CID11}.pcap",
    }
    assert len(packets(h.root / "pcap/single.pcap")) == 4
    recs = h.close()
    assert {r["path"] for r in recs} == h.files()


# -- lengths -----------------------------------------------------------------------------------


@needs_tools
def test_truncated_packets_keep_their_original_length(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    full = udp(b"Z" * 1000)
    h.feed(full[: 28 + 96], orig_len=len(full))  # default snaplen: headers + 96
    h.feed(full[:28], orig_len=len(full), direction="ingress")  # headers only
    h.feed(full)
    path = h.root / "pcap/single.pcap"
    got = packets(path)
    assert [(len(d), o) for _, d, o, _ in got] == [(124, 1028), (28, 1028), (1028, 1028)]
    assert got[1][1] == full[:28]  # the IP and UDP length fields still say 1028 and 1008
    assert tshark(path) == [
        ["pid=100 tid=100 comm=ping container=host direction=egress", "1028", "124"],
        ["pid=100 tid=100 comm=ping container=host direction=ingress", "1028", "28"],
        ["pid=100 tid=100 comm=ping container=host direction=egress", "1028", "1028"],
    ]
    check_tools(path, 3)
    recs = h.close()
    assert recs[0]["bytes"] == 124 + 28 + 1028 and recs[0]["orig_bytes"] == 3 * 1028


def test_packets_beyond_the_snap_length_are_cut_and_keep_orig_len(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    big = udp(b"") + bytes(SNAPLEN + 1000)  # a BIG TCP-sized aggregate
    h.feed(big)
    path = h.root / "pcap/single.pcap"
    ((_, data, orig, _),) = packets(path)
    assert data == big[:SNAPLEN] and orig == len(big)
    assert h.writer.counters["cut_at_snaplen"] == 1
    check_tools(path, 1)
    (rec,) = h.close()
    assert rec["cut_at_snaplen"] == 1 and rec["bytes"] == SNAPLEN


def test_mixed_ipv6_and_ipv4(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    ip6 = dpkt.ip6.IP6(src=b"\0" * 15 + b"\1", dst=b"\0" * 15 + b"\1", nxt=17, hlim=64)
    ip6.data = dpkt.udp.UDP(sport=1, dport=2, ulen=12, data=b"six!")
    ip6.plen = len(ip6.data)
    h.feed(bytes(ip6))
    h.feed(udp())
    path = h.root / "pcap/single.pcap"
    check_tools(path, 2)
    if HAVE_TOOLS:
        assert "IP6 ::1.1 > ::1.2: UDP" in tcpdump(path)[0]
    h.close()


# -- the LRU -----------------------------------------------------------------------------------


def test_lru_bound_reopens_without_a_second_header(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("process",), max_open=2)
    expect: dict[str, list[bytes]] = {}
    for rnd in range(4):
        for t in range(5):
            pkt = udp(f"r{rnd}t{t}".encode())
            h.feed(pkt, pid=500, tid=500 + t, comm=b"worker", start_time=t, ts=rnd * 10 + t)
            expect.setdefault(f"pcap/processes/host/worker_{500 + t}_{t}.pcap", []).append(pkt)
            assert len(h.writer._fds) <= 2
    assert h.writer.counters["reopens"] >= 15
    assert h.writer.counters["new_sections"] == 0
    assert h.files() == set(expect)
    for rel, pkts in expect.items():
        path = h.root / rel
        kinds = [t for t, _ in read_blocks(path)]
        assert kinds.count(ng.PCAPNG_BT_SHB) == 1 and kinds.count(ng.PCAPNG_BT_IDB) == 1
        assert [d for _, d, _, _ in packets(path)] == pkts
        assert dpkt_read(path) == pkts
        check_tools(path, 4)
    recs = h.close()
    assert len(recs) == 5
    for rec in recs:
        data = (h.root / rec["path"]).read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
        assert rec["packets"] == 4 and rec["complete"] is True


def test_a_file_removed_while_evicted_gets_a_new_header(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("command",), max_open=1)
    h.feed(udp(b"1"), comm=b"a")
    h.feed(udp(b"2"), comm=b"b")  # evicts a
    (h.root / "pcap/commands/host/a.pcap").unlink()
    h.feed(udp(b"3"), comm=b"a")
    path = h.root / "pcap/commands/host/a.pcap"
    assert descriptions(path) == [{"processName": "a", "container": {"id": ""}, "hostName": ""}]
    check_tools(path, 1)
    recs = {r["path"]: r for r in h.close()}
    rec = recs["pcap/commands/host/a.pcap"]
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert h.writer.counters["reopens"] == 1 and h.writer.counters["new_sections"] == 0


def test_a_restarted_writer_continues_the_file(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(udp(b"first"))
    h.close()
    h2 = Harness(tmp_path, split=("single",))
    h2.feed(udp(b"second"))
    path = h2.root / "pcap/single.pcap"
    assert descriptions(path) == [{}]  # one section: tcpdump stops at a second one
    assert [d for _, d, _, _ in packets(path)] == [udp(b"first"), udp(b"second")]
    check_tools(path, 2)
    recs = h2.close()
    assert recs[-1]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recs[-1]["packets"] == 1 and recs[-1]["size"] == path.stat().st_size
    assert h2.writer.counters["new_sections"] == 0


@pytest.mark.parametrize(
    "content",
    [b"not a pcap at all", b"\x0a\x0d\x0d\x0a" + bytes(40)],
    ids=["foreign", "garbage-shb"],
)
def test_a_foreign_file_gets_a_section_of_its_own(tmp_path: Path, content: bytes) -> None:
    h = Harness(tmp_path, split=("single",))
    (h.root / "pcap").mkdir()
    (h.root / "pcap/single.pcap").write_bytes(content)
    h.feed(udp(b"x"))
    data = (h.root / "pcap/single.pcap").read_bytes()
    assert data.startswith(content)  # never destroyed
    assert h.writer.counters["new_sections"] == 1
    (rec,) = h.close()
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_file_cut_inside_a_block_gets_a_new_section(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(udp(b"first"))
    h.close()
    path = tmp_path / "out/pcap/single.pcap"
    whole = path.read_bytes()
    path.write_bytes(whole[:-6])  # a crash in mid-write
    h2 = Harness(tmp_path, split=("single",))
    h2.feed(udp(b"second"))
    assert h2.writer.counters["new_sections"] == 1
    assert path.read_bytes().startswith(whole[:-6])
    h2.close()


# -- the index ---------------------------------------------------------------------------------


def test_one_index_record_per_file_at_close(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(icmp_echo(), ts=5, comm=b"p\xffng", start_time=9)
    h.feed(icmp_echo(reply=True), ts=8, comm=b"p\xffng", start_time=9, direction="ingress",
           orig_len=len(icmp_echo()) + 10)  # fmt: skip
    assert (h.root / "index.jsonl").read_text() == ""  # nothing until the files are final
    recs = {r["path"]: r for r in h.close()}
    assert set(recs) == h.files()
    size = len(icmp_echo())
    for rel, rec in recs.items():
        data = (h.root / rel).read_bytes()
        assert rec["kind"] == "pcap"
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
        assert (rec["packets"], rec["bytes"], rec["orig_bytes"]) == (2, 2 * size, 2 * size + 10)
        assert (rec["first_ts"], rec["last_ts"]) == (5, 8)
        assert rec["complete"] is True and rec["write_errors"] == 0
    single = recs["pcap/single.pcap"]
    assert single["split"] == "single" and "pid" not in single and "comm" not in single
    cont = recs["pcap/containers/host.pcap"]
    assert cont["container_id"] == "" and "comm" not in cont
    cmd = recs["pcap/commands/host/p%FFng.pcap"]
    assert cmd["comm"] == "p\\xffng" and cmd["comm_hex"] == "70ff6e67" and "pid" not in cmd
    proc = recs["pcap/processes/host/p%FFng_100_9.pcap"]
    assert (proc["pid"], proc["tid"], proc["ppid"], proc["uid"]) == (100, 100, 1, 1000)
    assert (proc["cgroup_id"], proc["start_time"], proc["split"]) == (42, 9, "process")


# -- hostile input -----------------------------------------------------------------------------

HOSTILE_COMMS = [
    b"/",
    b"..",
    b".",
    b"../../etc/passwd",
    b"ksoftirqd/2",
    b".hidden",
    b"a\nb",
    b"tab\there",
    b"\xff\xfe\x00bad",
    bytes(range(1, 256)),  # 255 bytes, every value but NUL
    b"x" * 255,
    "кот 🐈".encode(),
]


@needs_tools
def test_hostile_comms_stay_inside_pcap(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("process", "command", "single"))
    for i, comm in enumerate(HOSTILE_COMMS):
        h.feed(udp(bytes([i])), pid=1000 + i, tid=1000 + i, comm=comm, start_time=i)
    files = h.files()
    assert len(files) == 2 * len(HOSTILE_COMMS) + 1
    for rel in files:
        parts = rel.split("/")
        assert parts[0] == "pcap" and len(parts) in (2, 4)
        name = parts[-1]
        assert not name.startswith(".") and len(name.encode()) <= 255 and name.isascii()
        assert name.isprintable()
    for path in (h.root / "pcap/commands/host").iterdir():
        assert len(packets(path)) == 1
    got = tshark(h.root / "pcap/single.pcap")
    assert len(got) == len(HOSTILE_COMMS)
    for (comment, _, _), comm in zip(got, HOSTILE_COMMS, strict=True):
        assert comment.isprintable() and f"comm={comment_text(comm)} " in comment
    for path in (h.root / "pcap/processes/host").iterdir():
        check_tools(path, 1)
        (desc,) = descriptions(path)
        assert "processName" in desc
    recs = h.close()
    assert all(r["complete"] for r in recs) and len(recs) == len(files)


def raw_message(payload: bytes = b"", **overrides: Any) -> bus.Message:
    """A message that skipped the bus decoder: the writer must check values itself."""
    env = packet_env(**{"orig_len": len(payload), **overrides})
    return bus.Message(bus.TOPIC_NET_PACKET, env, payload)


@pytest.mark.parametrize(
    "overrides",
    [
        {"orig_len": -1},
        {"orig_len": 3},  # less than the captured bytes
        {"orig_len": 1 << 32},
        {"orig_len": True},
        {"orig_len": "40"},
        {"direction": 1},
        {"direction": None},
        {"direction": "sideways"},
        {"ts": -5},
        {"ts": 1 << 64},
        {"pid": -1},
        {"tid": 1.5},
        {"start_time": -1},
        {"comm": "ping"},
        {"container_id": "../../x"},
        {"container_id": b"host"},
        {"container_id": CID + "\n"},
    ],
)
def test_malformed_values_are_rejected(tmp_path: Path, overrides: dict[str, Any]) -> None:
    h = Harness(tmp_path)
    h.writer.handle(raw_message(udp(), **overrides))
    assert h.writer.counters["rejected"] == 1 and h.writer.counters["packets"] == 0
    assert h.files() == set()
    assert h.close() == []


def test_missing_keys_and_bad_payloads_are_rejected(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    env = packet_env(orig_len=10)
    del env["direction"]
    h.writer.handle(bus.Message(bus.TOPIC_NET_PACKET, env, b"x"))
    h.writer.handle(bus.Message(bus.TOPIC_NET_PACKET, packet_env(orig_len=1), None))  # type: ignore[arg-type]
    h.writer.handle(bus.Message(bus.TOPIC_NET_PACKET, {}, b""))
    assert h.writer.counters["rejected"] == 3
    h.writer.handle(bus.Message(b"file.write.", packet_env(orig_len=0), b""))  # not ours: ignored
    assert h.writer.counters["rejected"] == 3 and h.files() == set()
    h.close()


def test_empty_capture_is_a_packet(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(b"", orig_len=60)
    assert [(d, o) for _, d, o, _ in packets(h.root / "pcap/single.pcap")] == [(b"", 60)]
    h.close()


ENV_KEYS = ["ts", "pid", "tid", "ppid", "uid", "comm", "cgroup_id", "container_id",
            "direction", "orig_len", "start_time"]  # fmt: skip
ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.binary(max_size=300)
    | st.text(max_size=80)
    | st.sampled_from(["egress", "ingress", "", "host", CID])
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(env=st.dictionaries(st.sampled_from(ENV_KEYS), ANY_VALUE), payload=st.binary(max_size=64))
def test_any_envelope_values_never_crash(
    tmp_path: Path, env: dict[str, Any], payload: bytes
) -> None:
    h = Harness(tmp_path / os.urandom(6).hex())
    full = packet_env(orig_len=len(payload))
    full.update(env)
    h.writer.handle(bus.Message(bus.TOPIC_NET_PACKET, full, payload))
    c = h.writer.counters
    assert c["packets"] + c["rejected"] == 1 and c["write_errors"] == 0
    for rel in h.files():
        assert rel.startswith("pcap/")
        assert len(packets(h.root / rel)) == 1
    h.close()


# -- write errors ------------------------------------------------------------------------------


def test_planted_symlinks_are_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    h = Harness(tmp_path)
    (h.root / "pcap").mkdir()
    (h.root / "pcap/processes").symlink_to(victim)
    (h.root / "pcap/containers").mkdir()
    (h.root / "pcap/containers/host.pcap").symlink_to(victim / "stolen")
    h.feed(udp())
    assert list(victim.iterdir()) == []
    assert h.writer.counters["write_errors"] == 2  # process and container; the rest is written
    assert h.files() == {"pcap/single.pcap", "pcap/commands/host/ping.pcap"}
    recs = {r["path"]: r for r in h.close()}
    assert recs["pcap/containers/host.pcap"]["complete"] is False
    assert recs["pcap/containers/host.pcap"]["packets"] == 0
    assert recs["pcap/single.pcap"]["complete"] is True


def test_enospc_never_leaves_half_a_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(udp(b"one"))
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:10])  # part of the block lands
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "write", short_then_full)
    h.feed(udp(b"two"))
    monkeypatch.setattr(fileio.os, "write", real_write)
    h.feed(udp(b"three"))
    path = h.root / "pcap/single.pcap"
    assert [d for _, d, _, _ in packets(path)] == [udp(b"one"), udp(b"three")]
    check_tools(path, 2)
    assert h.writer.counters["write_errors"] == 1 and h.writer.counters["packets"] == 3
    (rec,) = h.close()
    assert rec["packets"] == 2 and rec["complete"] is False and rec["write_errors"] == 1
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failed_first_write_retries_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, split=("single",))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "write", full)
    h.feed(udp(b"lost"))
    monkeypatch.undo()
    h.feed(udp(b"kept"))
    path = h.root / "pcap/single.pcap"
    assert descriptions(path) == [{}]
    assert [d for _, d, _, _ in packets(path)] == [udp(b"kept")]
    h.close()


# -- registration ------------------------------------------------------------------------------


def test_registered_with_its_split(tmp_path: Path) -> None:
    with OutputTree(tmp_path) as tree:
        writer = WRITER_KINDS["pcap"](tree.out, tree.index, split=frozenset({"process", "single"}))
        assert isinstance(writer, PcapWriter)
        assert writer.name == "pcap" and writer.topics == (bus.TOPIC_NET_PACKETS,)
        assert writer.split == ("single", "process")
        assert WRITER_KINDS["pcap"](tree.out, tree.index).split == ("single",)


def test_run_writer_refuses_options_a_kind_does_not_take(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no option"):
        run_writer("file", str(tmp_path / "o"), "ipc:///x", None, drop_to=None,
                   options={"split": {"single"}})  # fmt: skip
    with pytest.raises(ValueError, match="takes no option"):
        run_writer("pcap", str(tmp_path / "o"), "ipc:///x", None, drop_to=None,
                   options={"splits": {"single"}})  # fmt: skip
    assert not (tmp_path / "o").exists()  # refused before anything was created


def test_dpkt_reader_sees_ns_timestamps(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(udp(), ts=1_700_000_000_000_000_500)
    with (h.root / "pcap/single.pcap").open("rb") as f:
        ((ts, _),) = list(ng.Reader(io.BufferedReader(f)))
    assert ts == pytest.approx(1_700_000_000.0000005, abs=1e-6)
    h.close()


# -- time order --------------------------------------------------------------------------------

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
KERNEL = {"pid": 0, "tid": 0, "ppid": 0, "uid": 0, "comm": b"", "start_time": 0}


class Clock:
    """The writer's monotonic clock (ns), moved by the test."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def ordered(root: Path, clock: Clock, split: tuple[str, ...] = ALL, **kwargs: Any) -> Harness:
    """A writer with the real reorder window on ``clock``."""
    kwargs.setdefault("reorder_window_ns", REORDER_WINDOW_NS)
    return Harness(root, split, clock=clock, **kwargs)


def strict_time_order(path: Path) -> bool:
    """What ``capinfos -o`` says of the file (tshark's package has it)."""
    shown = subprocess.run(["capinfos", "-o", "-T", "-r", str(path)], capture_output=True,
                           text=True, check=True, timeout=60)  # fmt: skip
    verdict = shown.stdout.strip().split("\t")[-1]
    assert verdict in ("True", "False"), shown.stdout
    return verdict == "True"


def timestamps(path: Path) -> list[int]:
    return [ts for ts, *_ in packets(path)]


@needs_tools
def test_an_unowned_packet_published_late_goes_in_its_place(tmp_path: Path) -> None:
    """The collector sends a packet of an unknown socket up to 300 ms after later ones (it waits
    for the owner): the files still come out in time order, the packet where it belongs."""
    clock = Clock()
    h = ordered(tmp_path, clock)
    h.feed(udp(b"a"), ts=T0)
    clock.now = 5 * MS
    h.feed(udp(b"c"), ts=T0 + 5 * MS)
    clock.now = 200 * MS
    h.feed(udp(b"d"), ts=T0 + 200 * MS, direction="ingress")
    clock.now = 305 * MS  # published 300 ms after it was sent, with no owner
    h.feed(tcp(b""), ts=T0 + 2 * MS, **KERNEL)
    clock.now = 310 * MS
    h.feed(udp(b"e"), ts=T0 + 310 * MS)
    for ms in range(320, 1400, 100):  # the subscriber's housekeeping
        clock.now = ms * MS
        h.writer.tick(0)
    assert h.writer.counters["late_packets"] == 0
    single = h.root / "pcap/single.pcap"
    got = packets(single)
    assert [d for _, d, _, _ in got] == [udp(b"a"), tcp(b""), udp(b"c"), udp(b"d"), udp(b"e")]
    assert got[1][3] == "pid=0 tid=0 comm= container=host direction=egress"
    assert timestamps(single) == sorted(timestamps(single))
    assert [d for _, d, _, _ in packets(h.root / "pcap/containers/host.pcap")] == [
        d for _, d, _, _ in got
    ]
    assert len(packets(h.root / "pcap/commands/host/ping.pcap")) == 4  # not the kernel's
    for rel in h.files():
        assert strict_time_order(h.root / rel), rel
        check_tools(h.root / rel, len(packets(h.root / rel)))
    recs = h.close()
    assert all(r["out_of_order"] == 0 and r["complete"] for r in recs)
    single_rec = next(r for r in recs if r["path"] == "pcap/single.pcap")
    assert (single_rec["first_ts"], single_rec["last_ts"]) == (T0, T0 + 310 * MS)


def test_a_packet_waits_one_window_after_its_arrival_at_most(tmp_path: Path) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single",))
    clock.now = 50 * MS
    h.feed(udp(b"x"), ts=T0)
    path = h.root / "pcap/single.pcap"
    clock.now = 50 * MS + REORDER_WINDOW_NS - 1
    h.writer.tick(0)
    assert not path.exists()  # held: an earlier packet may still come
    clock.now = 50 * MS + REORDER_WINDOW_NS + GRAIN_NS
    h.writer.tick(0)
    assert [d for _, d, _, _ in packets(path)] == [udp(b"x")]
    h.close()


@needs_tools
def test_a_packet_later_than_the_window_is_written_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single", "process"))
    h.feed(udp(b"new"), ts=T0 + 10 * MS)
    clock.now = 2 * REORDER_WINDOW_NS
    h.writer.tick(0)
    h.feed(udp(b"old"), ts=T0, tid=555, start_time=5)  # 2 s late: its place is already written
    single = h.root / "pcap/single.pcap"
    assert [d for _, d, _, _ in packets(single)] == [udp(b"new"), udp(b"old")]  # not dropped
    assert h.writer.counters["late_packets"] == 1
    assert not strict_time_order(single)  # and the index says so
    recs = {r["path"]: r for r in h.close()}
    assert recs["pcap/single.pcap"]["out_of_order"] == 1
    assert recs["pcap/single.pcap"]["complete"] is True  # every packet is there
    assert (recs["pcap/single.pcap"]["first_ts"], recs["pcap/single.pcap"]["last_ts"]) == (
        T0,
        T0 + 10 * MS,
    )
    own = recs["pcap/processes/host/ping_555_5.pcap"]  # its own file is in order
    assert own["out_of_order"] == 0 and own["packets"] == 1


def test_close_writes_everything_held_in_time_order(tmp_path: Path) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock)
    order = [5, 1, 4, 2, 3]
    for i in order:
        h.feed(udp(bytes([i])), ts=T0 + i, tid=100 + i % 2, start_time=i % 2)
    assert h.files() == set()  # nothing is due yet: the clock never moved
    recs = h.close()
    for rel in pcap_files(h.root):
        ts = timestamps(h.root / rel)
        assert ts == sorted(ts) and ts, rel
    assert [d for _, d, _, _ in packets(h.root / "pcap/single.pcap")] == [
        udp(bytes([i])) for i in sorted(order)
    ]
    assert sum(r["packets"] for r in recs if r["split"] == "process") == 5
    assert h.writer.counters["late_packets"] == h.writer.counters["reorder_forced"] == 0


def test_the_memory_bound_writes_early_and_counts_it(tmp_path: Path) -> None:
    clock = Clock()
    block = len(udp(b"p0")) + 100  # about what one block of it takes
    h = ordered(tmp_path, clock, split=("single",),
                reorder_max_bytes=3 * (block + HELD_OVERHEAD))  # fmt: skip
    for i in range(6):
        h.feed(udp(f"p{i}".encode()), ts=T0 + 10 + i)
    c = h.writer.counters
    assert c["reorder_forced"] >= 3
    assert len(packets(h.root / "pcap/single.pcap")) == c["reorder_forced"]
    assert len(h.writer._window) == 6 - c["reorder_forced"]
    h.feed(udp(b"early"), ts=T0)  # earlier than what was forced out: late, still written
    assert c["late_packets"] == 1
    (rec,) = h.close()
    assert rec["packets"] == 7 and rec["out_of_order"] == 1


def test_held_packets_stay_out_of_the_stats_last_seq(tmp_path: Path) -> None:
    """What the writer holds is only in memory: a restarted writer must count it lost if this
    process dies, so the stats' last_seq (where a restarted writer resumes) stops before it."""
    clock = Clock()
    with OutputTree(tmp_path) as tree:
        writer = PcapWriter(tree.out, tree.index, ("single",), clock=clock)
        sub = Subscriber(writer, "ipc:///nonexistent", index=tree.index)
        for seq in range(3):
            env = packet_env(orig_len=len(udp()), ts=T0 + seq, epoch=9, seq=seq)
            sub.process(bus.encode(bus.TOPIC_NET_PACKET, env, udp()))
        assert sub.snapshot()["last_seq"] == {"9:net.packet.": -1}
        clock.now = REORDER_WINDOW_NS + GRAIN_NS
        writer.tick(0)
        env = packet_env(orig_len=len(udp()), ts=T0 + 3, epoch=9, seq=3)
        sub.process(bus.encode(bus.TOPIC_NET_PACKET, env, udp()))
        assert writer.unwritten() == {"9:net.packet.": 3}
        assert sub.snapshot()["last_seq"] == {"9:net.packet.": 2}
        writer.close()
        assert sub.snapshot()["last_seq"] == {"9:net.packet.": 3}
        assert [r["packets"] for r in tree.records()] == [4]


def test_a_continued_file_counts_a_packet_earlier_than_its_last(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("single",))
    h.feed(udp(b"first"), ts=T0 + 100)
    h.close()
    h2 = Harness(tmp_path, split=("single",))
    h2.feed(udp(b"earlier"), ts=T0 + 50)  # the file on disk ends at T0 + 100
    h2.feed(udp(b"later"), ts=T0 + 200)
    (rec,) = h2.close()[-1:]
    assert rec["out_of_order"] == 1 and rec["packets"] == 2


def test_a_full_disk_while_flushing_the_window_cuts_back_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single",))
    for i in (3, 1, 2):
        h.feed(udp(bytes([i])), ts=T0 + i)
    real_write = os.write
    calls = {"n": 0}

    def second_fails(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # the release's one write: the header, block 1, part of block 2
            data = bytes(data)
            first = sum(struct.unpack_from("<I", data, at + 4)[0] for at in _starts(data, 3))
            return real_write(fd, data[: first + 10])
        if calls["n"] == 2:  # the rest of that write: block 2 is lost
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # block 3, tried alone

    monkeypatch.setattr(fileio.os, "write", second_fails)
    (rec,) = h.close()
    path = h.root / "pcap/single.pcap"
    assert [d for _, d, _, _ in packets(path)] == [udp(b"\x01"), udp(b"\x03")]
    check_tools(path, 2)
    assert rec["packets"] == 2 and rec["write_errors"] == 1 and rec["complete"] is False
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert calls["n"] == 3


def _starts(buf: bytes, count: int) -> list[int]:
    """Where the first ``count`` blocks of ``buf`` start."""
    out, pos = [], 0
    for _ in range(count):
        out.append(pos)
        pos += struct.unpack_from("<I", buf, pos + 4)[0]
    return out


def test_a_release_is_one_write_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks the window releases together reach each file in one write, not a syscall a
    packet, and read back whole and in order."""
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single", "process"))
    for i in range(50):
        h.feed(udp(bytes([i])), ts=T0 + i)
    real_write = os.write
    writes: list[int] = []

    def counted(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(fileio.os, "write", counted)
    recs = {r["path"]: r for r in h.close()}
    assert len(writes) == 2
    for path in ("pcap/single.pcap", "pcap/processes/host/ping_100_1699999999000000000.pcap"):
        assert [d for _, d, _, _ in packets(h.root / path)] == [udp(bytes([i])) for i in range(50)]
        assert recs[path]["packets"] == 50 and recs[path]["complete"] is True


def test_lru_reopens_while_the_window_releases(tmp_path: Path) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock, split=("process",), max_open=1)
    for rnd in range(3):
        for t in (2, 0, 1):  # threads interleaved, each thread's packets in order
            clock.now += 400 * MS
            h.feed(udp(f"{rnd}{t}".encode()), tid=700 + t, start_time=t, ts=T0 + rnd * 10 + t)
            h.writer.tick(0)
    h.close()
    for t in range(3):
        path = h.root / f"pcap/processes/host/ping_{700 + t}_{t}.pcap"
        kinds = [k for k, _ in read_blocks(path)]
        assert kinds.count(ng.PCAPNG_BT_SHB) == 1
        assert [d for _, d, _, _ in packets(path)] == [udp(f"{r}{t}".encode()) for r in range(3)]
    assert h.writer.counters["reopens"] >= 3


def test_the_collectors_owner_wait_fits_in_the_window(tmp_path: Path) -> None:
    """The collector's PacketAssembler and this writer on one clock: packets of an unknown
    socket, which the assembler holds OWNER_WAIT_NS and then sends ownerless after later ones,
    still land in their place."""
    assert REORDER_WINDOW_NS >= 3 * OWNER_WAIT_NS  # the margin the writer's docstring argues
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single", "process"))
    assembler = PacketAssembler(boot_to_epoch=T0)
    seq = 0

    def deliver(out: list) -> None:
        nonlocal seq
        for o in out:
            env = {**o.env, "v": bus.VERSION, "epoch": 3, "seq": seq}
            h.writer.handle(bus.Message(o.topic, env, o.payload))
            seq += 1

    def record(ts: int, owned: bool, data: bytes) -> records.Packet:
        who = (100, 100, 1, 0, b"curl") if owned else (0, 0, 0, 0, b"")
        return records.Packet(ts, 77 if owned else 78, 1, 5, len(data), 1, "egress",
                              *who, data)  # fmt: skip

    for ms in range(1500):  # a packet a millisecond; every 40th one no process owns
        clock.now = ms * MS
        deliver(assembler.on_packet(record(ms * MS, ms % 40 != 3, udp(b"%d" % ms)), clock.now))
        if ms % 10 == 0:  # the collector's poll loop
            deliver(assembler.expire(clock.now))
            h.writer.tick(0)
    deliver(assembler.expire(clock.now, force=True))  # the collector stops first
    assert assembler.waited_in_vain > 30  # they did wait, and went out late
    (single,) = [r for r in h.close() if r["split"] == "single"]
    got = timestamps(h.root / "pcap/single.pcap")
    assert got == [T0 + ms * MS for ms in range(1500)]
    assert single["out_of_order"] == 0 and h.writer.counters["late_packets"] == 0


# -- container names -----------------------------------------------------------------------------

NAMED = {
    "container_name": "web",
    "container_image": "nginx:1",
    "container_image_digest": "sha256:11",
    "pod_name": "web 0",  # a label may hold anything: escaped in the comment
    "pod_namespace": "shop",
    "pod_uid": "u-1",
}


def test_container_names_in_comments_descriptions_and_the_index(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(udp(), pid=300, tid=301, comm=b"dig", container_id=CID, start_time=55)
    h.feed(udp(), pid=300, tid=301, comm=b"dig", container_id=CID, start_time=55, **NAMED)
    h.feed(udp(), pid=300, tid=301, comm=b"dig", container_id="", start_time=55, **NAMED)
    first, second, host = (c for *_, c in packets(h.root / "pcap/single.pcap"))
    assert first == f"pid=300 tid=301 comm=dig container={CID} direction=egress"
    assert second == (
        f"pid=300 tid=301 comm=dig container={CID} container_name=web "
        "container_image=nginx:1 pod_namespace=shop pod_name=web\\x200 direction=egress"
    )
    assert host == "pid=300 tid=301 comm=dig container=host direction=egress"
    records = {r["path"]: r for r in h.close()}
    # the files were opened at the first packet, before the names were known: the index
    # learns them from a later one
    for split in ("containers", "commands", "processes"):
        (path,) = [p for p in records if p.startswith(f"pcap/{split}/{CID11}")]
        assert {k: records[path].get(k) for k in NAMED} == NAMED
    assert "container_name" not in records["pcap/single.pcap"]
    h2 = Harness(tmp_path / "h2", split=("container",))
    h2.feed(udp(), container_id=CID, **NAMED)
    assert descriptions(h2.root / f"pcap/containers/{CID11}.pcap") == [
        {
            "container": {"id": CID, "name": "web", "image": "nginx:1", "imageDigest": "sha256:11"},
            "kubernetes": {"podName": "web 0", "podNamespace": "shop", "podUID": "u-1"},
            "hostName": "",
        }
    ]
    h2.close()


def test_container_values_that_are_no_strings_are_ignored(tmp_path: Path) -> None:
    h = Harness(tmp_path, split=("container",))
    h.feed(udp(), container_id=CID, container_name=5, container_image="x" * 2000)
    (c,) = (c for *_, c in packets(h.root / f"pcap/containers/{CID11}.pcap"))
    assert c == f"pid=100 tid=100 comm=ping container={CID} direction=egress"
    assert h.writer.counters["rejected"] == 0
    (rec,) = h.close()
    assert "container_name" not in rec and "container_image" not in rec


# -- batches (net.packets.) ----------------------------------------------------------------------


def as_batch(msgs: list[bus.Message], seq: int = 0) -> bus.Message:
    """``msgs`` (net.packet.) as the one net.packets. batch the collector would send."""
    contexts: list[dict[str, Any]] = []
    rows = []
    for m in msgs:
        ctx = {k: v for k, v in m.env.items() if k in bus.CONTEXT_KEYS or k in bus.CONTAINER_KEYS}
        if ctx not in contexts:
            contexts.append(ctx)
        rows.append([m.env["ts"], contexts.index(ctx), m.env["ifindex"], m.env["orig_len"],
                     m.env["cookie"], len(m.payload), m.env["protocols"]])  # fmt: skip
    env = envelopes.packet_batch_env(contexts=contexts, packets=rows, seq=seq)
    return envelopes.message(bus.TOPIC_NET_PACKETS, env, b"".join(m.payload for m in msgs))


def test_a_batch_writes_what_its_packets_alone_would(tmp_path: Path) -> None:
    """Files, blocks, comments and index records are the same whether packets come one per
    message or in a batch, several owners, directions and containers mixed."""
    msgs = [
        message(udp(bytes([i]) * i), pid=300 + i % 3, tid=301 + i % 3, ts=T0 + i,
                direction=("egress", "ingress")[i % 2], container_id=("", CID)[i % 5 == 0],
                **(NAMED if i % 5 == 0 else {}))
        for i in range(40)
    ]  # fmt: skip
    alone, batched = Harness(tmp_path / "alone"), Harness(tmp_path / "batched")
    for m in msgs:
        alone.writer.handle(m)
    batched.writer.handle(as_batch(msgs[:25], seq=0))
    batched.writer.handle(as_batch(msgs[25:], seq=1))
    assert alone.files() == batched.files() and len(alone.files()) > 4
    for path in alone.files():
        assert (alone.root / path).read_bytes() == (batched.root / path).read_bytes(), path
    assert alone.close() == batched.close()
    assert batched.writer.counters["packets"] == 40 and batched.writer.counters["rejected"] == 0


def test_a_batch_that_does_not_add_up_is_refused_and_counted(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    good = as_batch([message(udp(b"a")), message(udp(b"b"))])
    h.writer.handle(bus.Message(good.topic, good.env, good.payload[:-1]))  # a byte short
    assert h.writer.counters["rejected"] == 2 and h.writer.counters["packets"] == 0
    # a packet the pcap cannot hold is refused alone, its batch's other packets are written
    bad = as_batch([message(udp(b"c")), message(udp(b"d"), direction="sideways")])
    h.writer.handle(bad)
    assert (h.writer.counters["rejected"], h.writer.counters["packets"]) == (3, 1)
    assert [d for _, d, _, _ in packets(h.root / "pcap/single.pcap")] == [udp(b"c")]


def test_unwritten_names_the_lowest_batch_held(tmp_path: Path) -> None:
    clock = Clock()
    h = ordered(tmp_path, clock, split=("single",))
    h.writer.handle(as_batch([message(udp(b"a"), ts=T0), message(udp(b"b"), ts=T0 + 1)], seq=4))
    assert h.writer.unwritten() == {"7:net.packets.": 4}
    h.close()
