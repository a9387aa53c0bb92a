"""Bytes sent and received with the socket calls (sendto/recvfrom, which send(2) and recv(2)
are, sendmsg/recvmsg and sendmmsg), captured end to end with real programs: curl fetching a
file from Python's http.server (send and recv on a TCP stream), and dnsmasq answering dig
(dig sends with sendmmsg and reads with recvmsg; dnsmasq reads with recvmsg and answers with
sendmsg, on UDP), compared with what curl received and with tcpdump's packets."""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from tests.support.workloads import WORKLOAD_TIMEOUT_S

pytestmark = pytest.mark.ebpf

#: Several of the collector's messages, and not a multiple of anything.
SIZE = 1024 * 1024 + 4321


def _sockets(run, kind: str, pid: int, syscall: str) -> list[dict]:
    return [
        r for r in run.records(kind)
        if r["pid"] == pid and syscall in r["syscalls"] and r["append"] is True
    ]  # fmt: skip


def _whole(run, rec: dict) -> bytes:
    """The bytes of the artifact ``rec`` indexes, which must be complete."""
    assert rec["complete"] is True and rec["missing"] == [], rec
    return (run.out_dir / rec["path"]).read_bytes()


def _one(run, kind: str, pid: int, syscall: str) -> bytes:
    """The bytes of the one socket artifact of ``pid`` moved with ``syscall``, complete."""
    found = _sockets(run, kind, pid, syscall)
    assert len(found) == 1, (kind, pid, syscall, run.records(kind))
    return _whole(run, found[0])


def test_curl_and_http_server_send_and_recv(tracecap, workdir: Path) -> None:
    """The server writes the response with send(2), curl reads it with recv(2) and sends
    its request the same way: four artifacts, each what the other side got."""
    (workdir / "www").mkdir()
    body = os.urandom(SIZE)
    (workdir / "www" / "f.bin").write_bytes(body)
    run = tracecap("--capture", "write:type=socket", "--capture", "read:type=socket")
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(workdir / "www")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        match = re.search(r" port (\d+) ", server.stdout.readline())
        assert match, "http.server did not say its port"
        curl = subprocess.run(
            ["curl", "-s", "-i", "--raw", "-H", "Connection: close",
             f"http://127.0.0.1:{match.group(1)}/f.bin"],
            check=True, capture_output=True, timeout=WORKLOAD_TIMEOUT_S,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    run.stop()
    assert run.returncode == 0, run.stderr
    got = curl.stdout
    assert got.endswith(body)
    curl_pid = int(next(r["pid"] for r in run.records("read") if r["comm"] == "curl"))
    response = _one(run, "write", server.pid, "sendto")
    assert response == got, (len(response), len(got), response[:200], got[:200])
    received = _one(run, "read", curl_pid, "recvfrom")
    assert received == got
    request = _one(run, "write", curl_pid, "sendto")
    assert request.startswith(b"GET /f.bin HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n")
    request_read = _one(run, "read", server.pid, "recvfrom")
    assert request_read == request


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _udp_payloads(dump: Path, port: int) -> tuple[list[bytes], list[bytes]]:
    """The UDP payloads tcpdump saw to ``port`` and from it, in order."""
    to, back = [], []
    with open(dump, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                if ip.data.dport == port:
                    to.append(bytes(ip.data.data))
                elif ip.data.sport == port:
                    back.append(bytes(ip.data.data))
    return to, back


def test_dnsmasq_recvmsg_and_sendmsg_match_the_packets(tracecap, workdir: Path) -> None:
    """dnsmasq reads each query with recvmsg(2) and answers with sendmsg(2): its socket's
    read artifact is every query tcpdump saw, its write artifact every answer, in order."""
    port = _free_udp_port()
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join([
        "keep-in-foreground", "no-resolv", "no-hosts", "bind-interfaces", "user=nobody",
        "group=nogroup",
        "pid-file=", "listen-address=127.0.0.1", f"port={port}",
        "address=/a.tc.test/10.9.8.7", 'txt-record=t.tc.test,"captured by sendmsg"', "",
    ]))  # fmt: skip
    # dig does its I/O on threads named isc-net-*, and dnsmasq drops to nobody once bound:
    # nobody's processes are the scope, dig runs as nobody too
    nobody = pwd.getpwnam("nobody").pw_uid
    run = tracecap("--scope", f"uid={nobody}", "--capture", "write:type=socket",
                   "--capture", "read:type=socket")  # fmt: skip
    dnsmasq = subprocess.Popen(["dnsmasq", f"--conf-file={conf}"], stdin=subprocess.DEVNULL)
    dump = workdir / "dns.pcap"
    tcpdump = None
    try:
        deadline = time.monotonic() + 20
        while _port_is_free(port):  # dnsmasq binds it once it is ready
            assert dnsmasq.poll() is None and time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)
        tcpdump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-n", "-s", "0", "-U", "--immediate-mode", "-w", str(dump),
             "udp", "port", str(port)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert "listening on lo" in tcpdump.stderr.readline()
        asked = [("a.tc.test", "A"), ("t.tc.test", "TXT"), ("a.tc.test", "A")]
        digs = []
        for name, qtype in asked:  # one at a time: the i-th query on the wire is dig i's
            dig = subprocess.Popen(
                ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                 "dig", "@127.0.0.1", "-p", str(port), "+time=5", "+tries=1", "+short",
                 name, qtype],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            out, _ = dig.communicate(timeout=30)
            assert dig.returncode == 0
            digs.append((dig.pid, out.strip()))
        answers = [answer for _, answer in digs]
        assert answers == ["10.9.8.7", '"captured by sendmsg"', "10.9.8.7"], answers
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(10)
        if tcpdump is not None:
            time.sleep(0.5)  # tcpdump -U writes each packet as it comes; let the last land
            tcpdump.terminate()
            tcpdump.wait(10)
    run.stop()
    assert run.returncode == 0, run.stderr
    queries, replies = _udp_payloads(dump, port)
    assert len(queries) == len(replies) == len(digs)
    # dnsmasq also talks to the kernel over netlink with recvmsg: its UDP socket is the one
    # artifact holding the queries
    reads = [_whole(run, rec) for rec in _sockets(run, "read", dnsmasq.pid, "recvmsg")]
    writes = [_whole(run, rec) for rec in _sockets(run, "write", dnsmasq.pid, "sendmsg")]
    assert reads.count(b"".join(queries)) == 1, [len(d) for d in reads]
    assert writes.count(b"".join(replies)) == 1, [len(d) for d in writes]
    # dig sends its query with sendmmsg (one message) and reads the answer with recvmsg
    for (pid, _), query, reply in zip(digs, queries, replies, strict=True):
        assert _one(run, "write", pid, "sendmmsg") == query
        assert _one(run, "read", pid, "recvmsg") == reply
