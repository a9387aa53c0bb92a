"""DNS as analysts read it: real `dig` queries to a real `dnsmasq` serving every record type, on
port 53 and on another port, over UDP and TCP, printed as net_packet_dns events and checked field
by field against what dig printed."""

from __future__ import annotations

import http.server
import itertools
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest

pytestmark = pytest.mark.ebpf

#: A zone with every record type a resolver returns. Both resolvers serve it; each is
#: authoritative (SOA, NS) for the queries arriving at its own address.
ZONE = [
    "auth-zone=tc.test",
    "auth-soa=2024061501,hostmaster.tc.test,1200,180,1209600",
    "auth-sec-servers=ns2.tc.test",
    "auth-ttl=300",
    "host-record=host.tc.test,10.9.8.7,fd00::1:2,600",
    "host-record=ns1.tc.test,10.9.8.1",
    "host-record=mail.tc.test,10.9.8.8",
    "cname=alias.tc.test,host.tc.test",
    "mx-host=tc.test,mail.tc.test,10",
    'txt-record=txt.tc.test,"hello world","v=spf1 -all"',
    "srv-host=_ldap._tcp.tc.test,host.tc.test,389,5,7",
    "ptr-record=7.8.9.10.in-addr.arpa,host.tc.test",
    "address=/wild.tc.test/10.1.1.1",
    "caa-record=caa.tc.test,0,issue,letsencrypt.org",
    "dns-rr=https.tc.test,65,000100",
    # 100 strings of 250 bytes: about 25 KB, more than dig's TCP window lets the server send in
    # one segment, so the answer arrives split across several (RFC 7766 framing across segments)
    *(f'txt-record=big.tc.test,"chunk-{i:03d}-{"x" * 240}"' for i in range(100)),
]

#: (arguments naming the query, dig options): every type, a CNAME chain, an NXDOMAIN, two types
#: dnsmasq serves that gopacket calls "Unknown" (printed by dig in RFC 3597 form to compare hex).
QUERIES = [
    (["host.tc.test", "A"], []),
    (["host.tc.test", "AAAA"], []),
    (["alias.tc.test", "A"], []),
    (["wild.tc.test", "A"], []),
    (["tc.test", "MX"], []),
    (["txt.tc.test", "TXT"], []),
    (["_ldap._tcp.tc.test", "SRV"], []),
    (["-x", "10.9.8.7"], []),
    (["tc.test", "SOA"], []),
    (["tc.test", "NS"], []),
    (["nope.tc.test", "A"], []),
    (["https.tc.test", "TYPE65"], ["+unknownformat"]),
    (["caa.tc.test", "CAA"], ["+unknownformat"]),
]
STATUS = {"NOERROR": "no error", "NXDOMAIN": "non-existent domain"}
FLAGS = ("qr", "aa", "tc", "rd", "ra", "ad", "cd")


@dataclass
class Resolver:
    address: str
    port: int
    proc: subprocess.Popen | None = None


def port_is_free(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_port(address: str) -> int:
    """A port free for both UDP and TCP on ``address``, other than 53."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port_is_free(address, port):
            return port
    pytest.fail(f"no port free for UDP and TCP on {address}")


def dig(resolver: Resolver, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dig", f"@{resolver.address}", "-p", str(resolver.port), "+time=2", "+tries=2", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.fixture
def resolvers(workdir: Path) -> Iterator[list[Resolver]]:
    """dnsmasq on 127.53.0.1 port 53 and on 127.53.0.2 at a free port, nothing else: no upstream,
    no hosts file, no DHCP; each stopped after the test, and its ports free again."""
    started = [Resolver("127.53.0.1", 53), Resolver("127.53.0.2", free_port("127.53.0.2"))]
    try:
        for r in started:
            assert port_is_free(r.address, r.port), f"{r.address}:{r.port} is in use"
            conf = workdir / f"dnsmasq-{r.port}.conf"
            conf.write_text("\n".join([
                "keep-in-foreground", "no-resolv", "no-hosts", "bind-interfaces", "user=root",
                "pid-file=", f"listen-address={r.address}", f"port={r.port}",
                f"auth-server=ns1.tc.test,{r.address}", f"log-facility={workdir}/dnsmasq.log",
                *ZONE, "",
            ]))  # fmt: skip
            r.proc = subprocess.Popen(["dnsmasq", f"--conf-file={conf}"], stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while "10.9.8.7" not in dig(r, "+short", "host.tc.test", "A").stdout:
                if r.proc.poll() is not None or time.monotonic() > deadline:
                    log = (workdir / "dnsmasq.log").read_text(errors="replace")
                    pytest.fail(f"dnsmasq on {r.address}:{r.port} did not answer\n{log}")
                time.sleep(0.1)
        yield started
    finally:
        for r in started:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(10)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait(10)
        busy = [f"{r.address}:{r.port}" for r in started if not port_is_free(r.address, r.port)]
        assert not busy, f"still listening after the test: {busy}"


# dig's output, read back.

_HEADER = re.compile(r";; ->>HEADER<<- opcode: (\w+), status: (\w+), id: (\d+)")
_COUNTS = re.compile(
    r";; flags:([^;]*); QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), ADDITIONAL: (\d+)"
)
_EDNS = re.compile(r"; EDNS: version: (\d+), flags:([^;]*); udp: (\d+)")
_COOKIE = re.compile(r"; COOKIE: ([0-9a-f]+)")
_SECTION = re.compile(r";; (QUESTION|ANSWER|AUTHORITY|ADDITIONAL|OPT PSEUDO) ?SECTION:")


@dataclass
class DigMessage:
    opcode: str = ""
    status: str = ""
    id: int = -1
    flags: set[str] = field(default_factory=set)
    counts: tuple[int, ...] = ()
    edns: tuple[int, str, int] | None = None  # version, flags, udp size
    cookie: str | None = None
    sections: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)


def parse_dig(text: str) -> tuple[DigMessage, DigMessage]:
    """The query dig sent (``+qr``) and the response it got."""
    messages: list[DigMessage] = []
    section = ""
    for line in text.splitlines():
        if line.startswith((";; Sending:", ";; Got answer:")):
            messages.append(DigMessage())
            section = ""
            continue
        if not line.strip() or not messages:
            continue
        msg = messages[-1]
        if m := _HEADER.match(line):
            msg.opcode, msg.status, msg.id = m[1], m[2], int(m[3])
        elif m := _COUNTS.match(line):
            msg.flags = set(m[1].split())
            msg.counts = tuple(int(m[i]) for i in range(2, 6))
        elif m := _EDNS.match(line):
            msg.edns = (int(m[1]), m[2].strip(), int(m[3]))
        elif m := _COOKIE.match(line):
            msg.cookie = m[1]
        elif m := _SECTION.match(line):
            section = m[1]
        elif section == "QUESTION" and line.startswith(";"):
            msg.sections.setdefault(section, []).append(tuple(line[1:].split()))
        elif section != "OPT PSEUDO" and not line.startswith(";"):
            name, ttl, cls, rtype, *rdata = line.split(None, 4)
            msg.sections.setdefault(section, []).append((name, ttl, cls, rtype, *rdata))
    query, response = messages
    return query, response


# The events, in dig's presentation form.

#: What dig's +unknownformat prints for the names tracecap gives (RFC 3597 form).
RFC3597 = {"IN": "CLASS1", "HTTPS": "TYPE65", "CAA": "TYPE257"}


def fqdn(name: str) -> str:
    return name + "."


def rdata_text(rr: dict) -> str:
    if "rdata" in rr:
        return f"\\# {len(rr['rdata']) // 2} {rr['rdata']}"
    return {
        "A": lambda: rr["IP"],
        "AAAA": lambda: rr["IP"],
        "CNAME": lambda: fqdn(rr["CNAME"]),
        "NS": lambda: fqdn(rr["NS"]),
        "PTR": lambda: fqdn(rr["PTR"]),
        "MX": lambda: f"{rr['MX']['preference']} {fqdn(rr['MX']['name'])}",
        "SRV": lambda: "{priority} {weight} {port} ".format(**rr["SRV"]) + fqdn(rr["SRV"]["name"]),
        "SOA": lambda: (
            f"{fqdn(rr['SOA']['MName'])} {fqdn(rr['SOA']['RName'])} "
            + "{serial} {refresh} {retry} {expire} {minimum}".format(**rr["SOA"])
        ),
        "TXT": lambda: " ".join(f'"{t}"' for t in rr["TXTs"]),
    }[rr["type"]]()


def record_text(rr: dict, unknown_form: bool) -> tuple[str, ...]:
    cls, rtype = rr["class"], rr["type"]
    if unknown_form:
        cls, rtype = RFC3597.get(cls, cls), RFC3597.get(rtype, rtype)
    return (fqdn(rr["name"]), str(rr["TTL"]), cls, rtype, rdata_text(rr))


def dig_records(msg: DigMessage, section: str) -> list[tuple[str, ...]]:
    out = []
    for name, ttl, cls, rtype, *rdata in msg.sections.get(section, []):
        text = rdata[0] if rdata else ""
        if text.startswith("\\#"):  # hex in upper case, maybe in several words
            size, *words = text.split()[1:]
            text = f"\\# {size} {''.join(words).lower()}"
        out.append((name, ttl, cls, rtype, text))
    return sorted(out)


def check_message(proto: dict, msg: DigMessage, unknown_form: bool) -> None:
    """One net_packet_dns proto_dns against the message dig printed, field by field."""
    assert "error" not in proto, proto["error"]
    assert proto["ID"] == msg.id
    assert proto["opCode"] == msg.opcode.lower()
    assert proto["responseCode"] == STATUS[msg.status]
    assert {f: proto[f.upper()] for f in FLAGS} == {f: int(f in msg.flags) for f in FLAGS}
    counts = (proto["QDCount"], proto["ANCount"], proto["NSCount"], proto["ARCount"])
    assert counts == msg.counts
    questions = []
    for q in proto["questions"]:
        cls, qtype = q["class"], q["type"]
        if unknown_form:
            cls, qtype = RFC3597.get(cls, cls), RFC3597.get(qtype, qtype)
        questions.append((fqdn(q["name"]), cls, qtype))
    assert questions == msg.sections["QUESTION"]
    for section, key in (("ANSWER", "answers"), ("AUTHORITY", "authorities")):
        ours = sorted(record_text(rr, unknown_form) for rr in proto[key])
        assert ours == dig_records(msg, section), section
    opts = [rr for rr in proto["additionals"] if rr["type"] == "OPT"]
    others = [rr for rr in proto["additionals"] if rr["type"] != "OPT"]
    assert sorted(record_text(rr, unknown_form) for rr in others) == dig_records(msg, "ADDITIONAL")
    assert msg.edns is not None and msg.edns[:2] == (0, "")  # EDNS 0, no DO flag
    (opt,) = opts
    assert (opt["name"], opt["class"], opt["TTL"]) == ("", f"CLASS{msg.edns[2]}", 0)
    cookies = [o["data"] for o in opt["OPT"] if o["code"] == "Cookie"]
    assert cookies == ([msg.cookie] if msg.cookie else [])


@dataclass
class Asked:
    resolver: Resolver
    tcp: bool
    unknown_form: bool
    query: DigMessage
    response: DigMessage


def ask(resolver: Resolver, qid: int, names: list[str], opts: list[str], tcp: bool) -> Asked:
    shown = dig(resolver, f"+qid={qid}", "+qr", "+noall", "+comments", "+question", "+answer",
                "+authority", "+additional", *(["+tcp"] if tcp else []), *opts, *names)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    query, response = parse_dig(shown.stdout)
    assert query.id == response.id == qid, shown.stdout
    return Asked(resolver, tcp, "+unknownformat" in opts, query, response)


def dns_events(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events and all(e["eventName"] == "net_packet_dns" for e in events)
    return events


def meta(event: dict) -> dict:
    """Tracee's net_packet_dns addresses and ports (src, dst, src_port, dst_port)."""
    args = {a["name"]: a["value"] for a in event["args"]}
    return {"src": args["src"], "dst": args["dst"], "srcPort": args["src_port"],
            "dstPort": args["dst_port"]}  # fmt: skip


def proto(event: dict) -> dict:
    assert event["args"][4]["name"] == "proto_dns"
    return event["args"][4]["value"]


def test_every_record_type_over_udp_and_tcp_on_port_53_and_another(
    tracecap, workdir: Path, resolvers: list[Resolver]
):
    server, port = http_server()
    run = tracecap("--capture", "network", "--capture", "pcap-snaplen:max",
                   "--events", "net_packet_dns", "--output", "json")  # fmt: skip
    asked: list[Asked] = []
    ids = itertools.count(1000)
    for resolver, tcp in itertools.product(resolvers, (False, True)):
        for names, opts in QUERIES:
            asked.append(ask(resolver, next(ids), names, opts, tcp))
        if tcp:  # a 25 KB answer: several segments
            big = ask(resolver, next(ids), ["big.tc.test", "TXT"], [], tcp)
            assert big.response.counts[1] == 100
            asked.append(big)
    curl = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/"], capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    server.shutdown()
    server.server_close()
    assert curl.returncode == 0, curl.stderr
    run.stop()
    assert run.returncode == 0, run.stderr
    events = dns_events(run.stdout)

    ours = {(r.address, r.port) for r in resolvers}
    by_id: dict[int, list[dict]] = {}
    for event in events:
        m = meta(event)
        if (m["src"], m["srcPort"]) not in ours and (m["dst"], m["dstPort"]) not in ours:
            # a UDP query may leave from the web server's port number: only flows without a
            # resolver can be the HTTP one
            assert port not in (m["srcPort"], m["dstPort"]), ("HTTP taken for DNS", m)
        else:
            # nothing but whole messages: no event for SYN, ACK, FIN, no error
            assert "error" not in proto(event), (m, proto(event)["error"])
            by_id.setdefault(proto(event)["ID"], []).append(event)

    assert set(by_id) == {a.query.id for a in asked}
    for a in asked:
        where = (a.resolver.address, a.resolver.port)
        sent = [e for e in by_id[a.query.id] if proto(e)["QR"] == 0]
        got = [e for e in by_id[a.query.id] if proto(e)["QR"] == 1]
        # on loopback each packet is seen leaving and arriving: two events per message
        assert (len(sent), len(got)) == (2, 2), a
        for e in sent:
            assert (meta(e)["dst"], meta(e)["dstPort"]) == where
            check_message(proto(e), a.query, a.unknown_form)
        for e in got:
            assert (meta(e)["src"], meta(e)["srcPort"]) == where
            check_message(proto(e), a.response, a.unknown_form)

    # the cases the issue names, seen in the events themselves
    def answer_of(qname: str, qtype: str, resolver: Resolver) -> dict:
        for a in asked:
            question = a.response.sections["QUESTION"][0]
            if a.resolver is resolver and question[0] == qname and question[2] == qtype:
                return proto(next(e for e in by_id[a.query.id] if proto(e)["QR"] == 1))
        raise AssertionError((qname, qtype))

    for resolver in resolvers:
        assert answer_of("host.tc.test.", "AAAA", resolver)["answers"][0]["IP"] == "fd00::1:2"
        assert answer_of("txt.tc.test.", "TXT", resolver)["answers"][0]["TXTs"] == [
            "hello world", "v=spf1 -all"]  # fmt: skip
        mx = answer_of("tc.test.", "MX", resolver)["answers"][0]["MX"]
        assert mx == {"preference": 10, "name": "mail.tc.test"}
        assert answer_of("nope.tc.test.", "A", resolver)["responseCode"] == "non-existent domain"
        big = answer_of("big.tc.test.", "TXT", resolver)
        assert len(big["answers"]) == 100
        # ... and that answer did arrive split: several segments of one flow carried it
        assert max(data_segments(run.out_dir / "pcap" / "single.pcap", resolver)) > 1


def data_segments(pcap: Path, resolver: Resolver) -> list[int]:
    """Per TCP connection of the resolver's, how many segments left it with payload (each is in
    the pcap twice on loopback, leaving and arriving: counted once, by sequence number). The
    pcap holds every interface's packets, so others' IPv6 is passed over."""
    seqs: dict[int, set[int]] = {}
    with open(pcap, "rb") as f:
        for _ts, data in dpkt.pcapng.Reader(f):
            if data[:1] and data[0] >> 4 != 4:
                continue  # the host's other traffic: an IPv6 router solicitation came in CI
            ip = dpkt.ip.IP(data)
            seg = ip.data
            if (
                isinstance(seg, dpkt.tcp.TCP)
                and (socket.inet_ntoa(ip.src), seg.sport) == (resolver.address, resolver.port)
                and len(seg.data)
            ):
                seqs.setdefault(seg.dport, set()).add(seg.seq)
    return [len(s) for s in seqs.values()] or [0]


def http_server() -> tuple[http.server.ThreadingHTTPServer, int]:
    """A web server for curl (HTTP must not be taken for DNS), on a free port."""
    handler = http.server.SimpleHTTPRequestHandler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]
