"""Packets to pcapng, split per process, container and command, read back with dpkt and tshark."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dpkt
import pytest

from tests.support.pipeline import tracecap_program_ids
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

ECHO = """
    import socket, threading
    kind, marker = {kind!r}, {marker!r}
    if kind == "udp":
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cli.sendto(marker + b"-PING", srv.getsockname())
        data, peer = srv.recvfrom(65536)
        srv.sendto(marker + b"-PONG", peer)
        assert cli.recv(65536) == marker + b"-PONG"
    else:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        def serve():
            conn, _ = srv.accept()
            got = b""
            while len(got) < {size} // (len(marker) + 5) * (len(marker) + 5):
                got += conn.recv(1 << 20)
            conn.sendall(marker + b"-PONG")
            conn.close()
        t = threading.Thread(target=serve)
        t.start()
        cli = socket.create_connection(srv.getsockname())
        cli.sendall((marker + b"-PING") * ({size} // (len(marker) + 5)))
        assert cli.recv(100) == marker + b"-PONG"
        t.join()
"""


def echo(kind: str, marker: bytes, size: int = 0) -> None:
    body = ECHO.format(kind=kind, marker=marker, size=size or len(marker) + 5)
    python(body)


def read_pcap(path: Path) -> list[tuple[int, bytes, int, str]]:
    """(ns timestamp, captured bytes, original length, comment) of every packet."""
    out = []
    with open(path, "rb") as f:
        for block_ts, data in dpkt.pcapng.Reader(f):
            out.append((block_ts, bytes(data)))
    shown = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.comment"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    complaints = [line for line in shown.stderr.splitlines() if not line.startswith("Running as")]
    assert complaints == [], shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == len(out)
    return [(ts, data, int(line.split("\t")[0]), line.split("\t", 1)[1]) for (ts, data), line in
            zip(out, lines, strict=True)]  # fmt: skip


def payloads(packets: list[tuple[int, bytes, int, str]]) -> list[bytes]:
    out = []
    for _, data, _, _ in packets:
        ip = dpkt.ip.IP(data)
        out.append(bytes(ip.data.data) if hasattr(ip.data, "data") else b"")
    return out


def icmp_types(packets: list[tuple[int, bytes, int, str]]) -> list[int]:
    out = []
    for _, data, _, _ in packets:
        ip = dpkt.ip.IP(data)
        if isinstance(ip.data, dpkt.icmp.ICMP):
            out.append(ip.data.type)
    return out


def test_ping_udp_and_tcp_with_every_split(tracecap, workdir: Path):
    run = tracecap(
        "--capture", "network", "--capture", "pcap:single,process,container,command",
        "--capture", "pcap-snaplen:max",
    )  # fmt: skip
    ping = subprocess.Popen(
        ["ping", "-c", "3", "-i", "0.2", "127.0.0.1"], stdout=subprocess.DEVNULL
    )
    threading.Thread(target=echo, args=("udp", b"TC-UDP-MARK")).start()
    echo("tcp", b"TC-TCP-MARK")
    assert ping.wait(30) == 0
    run.stop()
    assert run.returncode == 0, run.stderr
    pcap = run.out_dir / "pcap"

    single = read_pcap(pcap / "single.pcap")
    seen = payloads(single)
    for marker in (b"TC-UDP-MARK-PING", b"TC-UDP-MARK-PONG", b"TC-TCP-MARK-PONG"):
        # on loopback every packet is seen leaving (egress) and arriving (ingress)
        assert seen.count(marker) == 2, marker
    assert any(p.startswith(b"TC-TCP-MARK-PING") for p in seen)
    assert 8 in icmp_types(single) and 0 in icmp_types(single)  # echo request and reply
    assert all("direction=" in c and "pid=" in c for *_, c in single)

    ping_files = list((pcap / "processes" / "host").glob("ping_*.pcap"))
    assert len(ping_files) == 1, ping_files
    name = ping_files[0].name
    assert name.startswith(f"ping_{ping.pid}_")
    ping_packets = read_pcap(ping_files[0])
    assert len(ping_packets) >= 6  # 3 requests out, 3 replies in
    assert set(icmp_types(ping_packets)) == {0, 8}
    assert all(f"pid={ping.pid} " in c for *_, c in ping_packets)
    assert read_pcap(pcap / "commands" / "host" / "ping.pcap")
    assert len(read_pcap(pcap / "containers" / "host.pcap")) >= len(ping_packets)
    for path in pcap.rglob("*.pcap"):
        read_pcap(path)  # tshark reads every file without a complaint


UDP_500 = """
    import socket
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.sendto(b"S" * 500, srv.getsockname())
    assert len(srv.recv(1000)) == 500
"""


@pytest.mark.parametrize(
    ("snaplen", "kept"), [("default", 96), ("headers", 0), ("64b", 64), ("max", 500)]
)
def test_snaplen_keeps_payload_after_the_l4_header(tracecap, workdir: Path, snaplen, kept):
    run = tracecap("--capture", "network", "--capture", f"pcap-snaplen:{snaplen}",
                   "--scope", "comm=tc-snap")  # fmt: skip
    python(UDP_500, comm=b"tc-snap")
    run.stop()
    packets = [p for p in read_pcap(run.out_dir / "pcap" / "single.pcap") if p[2] == 528]
    assert len(packets) == 2, packets  # egress and ingress, original length 20 + 8 + 500
    for _, data, orig_len, _ in packets:
        assert len(data) == 28 + kept and orig_len == 528
        assert dpkt.ip.IP(data).len == 528  # length fields are never rewritten


DNS_SERVER = """
    import socket, dpkt
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 53))
    open({ready!r}, "w").close()
    data, peer = srv.recvfrom(4096)
    q = dpkt.dns.DNS(data)
    q.op = dpkt.dns.DNS_RA
    q.qr = dpkt.dns.DNS_R
    q.rcode = dpkt.dns.DNS_RCODE_NOERR
    an = dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, cls=1, ttl=60,
                         rdata=bytes([10, 1, 2, 3]))
    q.an.append(an)
    srv.sendto(bytes(q), peer)
"""

DNS_CLIENT = """
    import socket, dpkt
    q = dpkt.dns.DNS(id=4242, qd=[dpkt.dns.DNS.Q(name="tracecap.example", type=dpkt.dns.DNS_A)])
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.sendto(bytes(q), ("127.0.0.1", 53))
    assert dpkt.dns.DNS(c.recv(4096)).an[0].rdata == bytes([10, 1, 2, 3])
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.sendto(b"NOT-DNS", ("127.0.0.1", 9))
"""


def test_filtered_mode_keeps_dns_packets_only(tracecap, workdir: Path):
    ready = workdir / "dns-ready"
    run = tracecap(
        "--events", "net_packet_dns", "--output", "json",
        "--capture", "network", "--capture", "pcap-options:filtered",
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DNS_SERVER.format(ready=str(ready)))]
    )
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    python(DNS_CLIENT)
    assert server.wait(10) == 0
    ping = subprocess.run(["ping", "-c", "1", "127.0.0.1"], capture_output=True)
    assert ping.returncode == 0
    run.stop()
    packets = read_pcap(run.out_dir / "pcap" / "single.pcap")
    assert len(packets) == 4  # query and answer, each leaving and arriving
    for _, data, _, _ in packets:
        udp = dpkt.ip.IP(data).data
        assert isinstance(udp, dpkt.udp.UDP) and 53 in (udp.sport, udp.dport)
    events = [json.loads(line) for line in run.stdout.splitlines()]
    dns = [e for e in events if e["eventName"] == "net_packet_dns"]
    assert dns and all(e["eventName"] == "net_packet_dns" for e in events)
    questions = [a["value"] for e in dns for a in e["args"] if a["name"] == "proto_dns"]
    assert any(q["questions"][0]["name"] == "tracecap.example" for q in questions)


def test_a_60kb_tcp_send_is_captured_whole(tracecap, workdir: Path):
    run = tracecap("--capture", "network", "--capture", "pcap-snaplen:max",
                   "--scope", "comm=tc-bigsend")  # fmt: skip
    python(ECHO.format(kind="tcp", marker=b"TC-BIG", size=60000), comm=b"tc-bigsend")
    run.stop()
    packets = read_pcap(run.out_dir / "pcap" / "single.pcap")
    segments = [(dpkt.ip.IP(data).data, comment) for _, data, orig_len, comment in packets]
    assert all(len(data) == orig_len for _, data, orig_len, _ in packets)
    (client,) = {t.sport for t, c in segments if t.flags == dpkt.tcp.TH_SYN and "egress" in c}
    sent = sum(len(t.data) for t, c in segments if t.sport == client and "egress" in c)
    assert sent == (60000 // 11) * 11


FLOOD = """
    import socket
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    srv.bind(("127.0.0.1", 0))
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range({n}):
        cli.sendto(b"TC-FLOOD-" + b"x" * 91, srv.getsockname())
"""


def test_a_stop_right_after_a_flood_keeps_every_packet_or_counts_it(tracecap, workdir: Path):
    n = 60_000
    before = tracecap_program_ids()
    run = tracecap("--capture", "network", "--capture", "pcap-snaplen:headers",
                   "--scope", "comm=tc-flood")  # fmt: skip
    ours = tracecap_program_ids() - before
    python(FLOOD.format(n=n), comm=b"tc-flood")
    run.stop()  # at once: the writer is still behind
    assert run.returncode == 0, run.stderr
    assert ours and ours & tracecap_program_ids() == set()  # every probe detached
    shown = subprocess.run(
        ["tcpdump", "-n", "-r", str(run.out_dir / "pcap" / "single.pcap"), "udp"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    captured = sum(1 for line in shown.stdout.splitlines() if "UDP, length 100" in line)
    lost = int(re.search(r"kernel ring buffer (\d+) records", run.stderr).group(1))
    gaps = int(re.search(r"bus gaps (\d+) messages", run.stderr).group(1))
    assert captured + lost + gaps >= 2 * n, (captured, lost, gaps)
    assert captured <= 2 * n
