"""The declared schemas, the strict decoder (tests/support/tracee_decode.py) and the golden
events of Tracee's published examples (tests/support/tracee_golden.jsonl: every event of the
seed pages tracecap was specified from, in page order; the first four from Tracee's older
documentation, the rest from v0.17's)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import dpkt
import pytest

from tests.support import dnsmsg, tracee_decode
from tests.support.envelopes import (
    bpf_env,
    exit_env,
    fork_env,
    mem_env,
    module_env,
    packet_env,
    proc_env,
)
from tests.support.tracee_decode import DecodeError
from tracecap import bus, schemas
from tracecap.frontend import tracee_json
from tracecap.kinds import EVENT_NAMES
from tracecap.protocols import classify

_GOLDEN_FILE = Path(__file__).parents[2] / "support" / "tracee_golden.jsonl"
GOLDEN = [json.loads(line) for line in _GOLDEN_FILE.read_text().split("\n") if line]


def test_every_event_tracecap_prints_has_a_schema_and_every_schema_an_event():
    assert schemas.check_registry() == []
    assert set(EVENT_NAMES) == set(schemas.SCHEMAS)


def test_event_ids_are_tracee_v017s():
    # pkg/events/events.go of v0.17.0: iota + 700 (kernel), + 2000 (network); amd64 syscalls
    ids = {name: s.id for name, s in schemas.SCHEMAS.items()}
    assert ids == {
        "vfs_write": 718, "vfs_writev": 719, "vfs_read": 720, "vfs_readv": 721,
        "sched_process_fork": 712, "sched_process_exec": 713, "sched_process_exit": 714,
        "mem_prot_alert": 722, "init_module": 175,
        "finit_module": 313, "security_bpf_prog": 776, "net_packet_ipv4": 2000,
        "net_packet_ipv6": 2001, "net_packet_tcp": 2002, "net_packet_udp": 2003,
        "net_packet_icmp": 2004, "net_packet_icmpv6": 2005, "net_packet_dns": 2006,
        "net_packet_http": 2009,
    }  # fmt: skip


#: The seed's v0.17 page was printed on 2023-05-28, the day before Tracee put ``containerId``
#: back into trace.Event (commit c134a2b, in v0.17.0): its events lack only that field.
_BEFORE_CONTAINER_ID = ("containerId",)


def test_the_seeds_v017_vfs_read_events_decode_strictly_and_follow_the_schema():
    reads = [e for e in GOLDEN if e["eventName"] == "vfs_read"]
    assert len(reads) == 2
    for event in reads:
        tracee_decode.decode(json.dumps(event), optional=_BEFORE_CONTAINER_ID)


@pytest.mark.parametrize("index", range(len(GOLDEN)))
def test_every_golden_event_decodes_as_go_decodes_it(index):
    tracee_decode.decode_envelope(GOLDEN[index], strict=False)


def test_golden_events_of_v017_have_every_envelope_field():
    newer = [e for e in GOLDEN if "contextFlags" in e and "container" in e]
    assert newer
    for event in newer:
        tracee_decode.decode_envelope(event, strict=True, optional=_BEFORE_CONTAINER_ID)


def _printed() -> list[dict]:
    """One event of every kind the printer builds, from bus envelopes."""
    printer = tracee_json.EventPrinter()
    from tests.support.envelopes import file_env

    out = []
    for syscall in ("write", "writev", "read", "readv"):
        topic = bus.TOPIC_FILE_READ if syscall.startswith("read") else bus.TOPIC_FILE_WRITE
        env = file_env(syscall=syscall, io_len=10)
        out += printer.events_for(bus.Message(topic, env, b"x" * 10), ())
    out += printer.events_for(bus.Message(bus.TOPIC_PROC, proc_env(), b""), ())
    for env in (fork_env(), exit_env()):  # printed only when named
        out += printer.events_for(bus.Message(bus.TOPIC_PROC, env, b""), EVENT_NAMES)
    out += printer.events_for(bus.Message(bus.TOPIC_MEM, mem_env(), b""), ())
    # obj_id is unique per epoch across object kinds
    out += printer.events_for(bus.Message(bus.TOPIC_MODULE, module_env(obj_id=3), b""), ())
    env = module_env(syscall="finit_module", fd=3, obj_id=4)
    out += printer.events_for(bus.Message(bus.TOPIC_MODULE, env, b""), ())
    out += printer.events_for(bus.Message(bus.TOPIC_BPF, bpf_env(obj_id=5), b""), ())
    http = dnsmsg.tcp(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", dport=80)
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=b"x"))
    echo6 = dpkt.icmp6.ICMP6(type=128, data=dpkt.icmp6.ICMP6.Echo(id=7, seq=1, data=b"x"))
    for data in (dnsmsg.udp(dnsmsg.query()), dnsmsg.udp(b"x", dport=9, v6=True), http,
                 dnsmsg.ipv4(echo, 1), dnsmsg.ipv6(echo6, 58)):  # fmt: skip
        env = packet_env(protocols=classify(data), orig_len=len(data), start_time=5)
        out += printer.events_for(bus.Message(bus.TOPIC_NET_PACKET, env, data), EVENT_NAMES)
    return out


def test_built_events_of_every_kind_follow_their_schema():
    events = _printed()
    assert {e["eventName"] for e in events} == set(EVENT_NAMES)
    for event in events:
        tracee_decode.decode(json.dumps(event))
    packets = [e for e in events if e["eventName"].startswith("net_packet_")]
    assert {e["threadStartTime"] for e in packets} == {5}
    icmp = next(e for e in events if e["eventName"] == "net_packet_icmp")["args"][2]["value"]
    assert (icmp["typeCode"], icmp["id"], icmp["seq"]) == ("EchoRequest", 7, 1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e["args"][0].update(name="path"), "arguments"),
        (lambda e: e["args"].append({"name": "syscalls", "type": "unsigned int", "value": 1}),
         "argsNum"),
        (lambda e: e["args"][1].update(value="2049"), "is no dev_t"),
        (lambda e: e["args"][1].update(value=2**32), "overflows"),
        (lambda e: e["args"][1].update(type="u8"), "overflows"),
        (lambda e: e["args"][0].update(type="unknown_t", value=5), "unrecognized argument type"),
        (lambda e: e.pop("processorId"), "missing"),
        (lambda e: e.update(eventId=718), "not an int as a JSON string"),
        (lambda e: e.update(eventId="0"), "Tracee's is 718"),
        (lambda e: e.update(containerImage=""), "unknown envelope field"),
        (lambda e: e.update(cgroupId=-1), "overflows"),
        (lambda e: e["container"].update(labels={}), "unknown member"),
        (lambda e: e["args"][0].update(extra=1), "members"),
    ],
)  # fmt: skip
def test_the_strict_decoder_rejects(change, reason):
    event = copy.deepcopy(next(e for e in _printed() if e["eventName"] == "vfs_write"))
    tracee_decode.decode(json.dumps(event))
    change(event)
    with pytest.raises(DecodeError, match=reason):
        tracee_decode.decode(json.dumps(event))


def test_a_proto_value_missing_a_member_is_rejected_as_go_rejects_it():
    arg = {"name": "proto_udp", "type": "trace.ProtoUDP", "value": {"srcPort": 1, "dstPort": 2,
                                                                     "length": 8}}  # fmt: skip
    with pytest.raises(DecodeError, match="key not found in argMap checksum"):
        tracee_decode.decode_argument(arg, "args[4]")
    arg["value"]["checksum"] = 0
    tracee_decode.decode_argument(arg, "args[4]")
