"""Packet batches (``net.packets.``): the collector's PacketAssembler builds them, the contract
(tracecap/bus.py) splits them back into the ``net.packet.`` messages they stand for."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf import records
from collector import packets as pk
from collector.envelopes import Outgoing
from tests.support.envelopes import packet_batch_env
from tracecap import bus

BOOT = 1_700_000_000_000_000_000
UDP = bytes.fromhex("450000200001000040117ccb7f0000017f000001") + bytes.fromhex(
    "9c4000350000" + "0000"
)  # IPv4 UDP to port 53, no payload


def record(i: int, pid: int = 900, data: bytes = UDP, direction: str = "egress",
           cgroup: int = 7) -> records.Packet:  # fmt: skip
    return records.Packet(1000 + i, 50 + pid, cgroup, 333, len(data) + 10, 1, direction,
                          pid, pid + 1, 1, 0, b"comm%d" % pid, data)  # fmt: skip


def wire(out: list[Outgoing], epoch: int = 5) -> list[bus.Message]:
    """The messages as a subscriber gets them: stamped as the publisher does, encoded, decoded."""
    seqs: dict[bytes, int] = {}
    msgs = []
    for o in out:
        env = {**o.env, "v": bus.VERSION, "epoch": epoch, "seq": seqs.get(o.topic, 0)}
        seqs[o.topic] = env["seq"] + bus.seq_width(o.topic, env)
        msgs.append(bus.decode(bus.encode(o.topic, env, o.payload)))
    return msgs


def feed(asm: pk.PacketAssembler, recs: list[records.Packet]) -> list[Outgoing]:
    out: list[Outgoing] = []
    for i, rec in enumerate(recs):
        out += asm.on_packet(rec, i)
    return out + asm.flush()


def names(containers: dict[str, dict[str, str]]) -> Any:
    return lambda container_id: containers.get(container_id, {})


def test_batches_split_into_the_single_packet_messages_they_replace() -> None:
    """With ``legacy`` on, every packet goes out alone too: the batches' packets, split by the
    contract, are those messages, in the same order (keys, values and bytes)."""
    asm = pk.PacketAssembler(BOOT, container_of=lambda cg: "c" * 64 if cg == 8 else "",
                             enrich=names({"c" * 64: {"container_name": "web"}}),
                             legacy=lambda: True)  # fmt: skip
    recs = [record(i, pid=900 + i % 3, direction=("egress", "ingress")[i % 2], cgroup=7 + i % 2,
                   data=UDP + bytes([i % 251]) * (i % 40)) for i in range(700)]  # fmt: skip
    msgs = wire(feed(asm, recs))
    singles = [m for m in msgs if m.topic == bus.TOPIC_NET_PACKET]
    batches = [m for m in msgs if m.topic == bus.TOPIC_NET_PACKETS]
    assert len(singles) == 700 and len(batches) == 3  # 256 + 256 + 188
    split = [one for b in batches for one in bus.split_packets(b)]
    assert [m.payload for m in split] == [m.payload for m in singles] == [r.data for r in recs]
    # a batch's seq numbers its packets: split, each has the seq it had alone
    assert [one.env for one in split] == [single.env for single in singles]
    assert [b.env["seq"] for b in batches] == [0, 256, 512]
    web = [m for m in split if m.env["cgroup_id"] == 8]
    assert web and all(m.env["container_name"] == "web" for m in web)
    first = split[0].env
    assert (first["pid"], first["comm"], first["start_time"]) == (900, b"comm900", 333 + BOOT)
    assert (first["ts"], first["orig_len"], first["cookie"]) == (1000 + BOOT, len(UDP) + 10, 950)
    assert first["protocols"] == ["ipv4", "udp", "dns"] and asm.batched == 700


def test_without_a_subscriber_of_the_old_topic_only_batches_go_out() -> None:
    subscribed = [False]
    asm = pk.PacketAssembler(BOOT, legacy=lambda: subscribed[0])
    assert {o.topic for o in feed(asm, [record(i) for i in range(10)])} == {bus.TOPIC_NET_PACKETS}
    subscribed[0] = True  # a tap arrives: asked at the next flush, for what follows it
    assert asm.on_packet(record(0), 0) == []
    assert [o.topic for o in asm.flush()] == [bus.TOPIC_NET_PACKETS]
    out = feed(asm, [record(i) for i in range(3)])
    assert [o.topic for o in out] == [bus.TOPIC_NET_PACKET] * 3 + [bus.TOPIC_NET_PACKETS]


def test_one_context_per_owner_cgroup_and_direction() -> None:
    asm = pk.PacketAssembler(BOOT)
    recs = [record(i, pid=900 + i % 2, direction=("egress", "ingress")[i // 2 % 2])
            for i in range(40)]  # fmt: skip
    (batch,) = wire(feed(asm, recs))
    assert len(batch.env["contexts"]) == 4
    assert [row[bus.ROW_CONTEXT] for row in batch.env["packets"][:4]] == [0, 1, 2, 3]
    assert batch.env["ts"] == 1000 + BOOT and batch.env["pid"] == 0


def test_batches_stay_within_the_bus_limits() -> None:
    """Long container names on every packet's own owner, and big packets: each batch's
    envelope fits bus.MAX_ENVELOPE_BYTES and its payload stays under the zero-copy size."""
    long = {key: "\u00e9" * 512 for key in bus.CONTAINER_KEYS}
    asm = pk.PacketAssembler(BOOT, container_of=lambda cg: f"{cg:064x}", enrich=lambda c: long)
    recs = [record(i, pid=1000 + i, cgroup=i, data=UDP + b"x" * 1400) for i in range(600)]
    out = feed(asm, recs)
    for o in out:
        assert len(msgpack.packb(o.env, use_bin_type=True)) < bus.MAX_ENVELOPE_BYTES - 1024
        assert len(o.payload or b"") <= pk.MAX_BATCH_PAYLOAD
    assert sum(len(o.env["packets"]) for o in out) == 600
    assert [m.payload for b in wire(out) for m in bus.split_packets(b)] == [r.data for r in recs]
    small = feed(pk.PacketAssembler(BOOT), [record(i, data=UDP) for i in range(600)])
    assert [len(o.env["packets"]) for o in small] == [256, 256, 88]


def test_a_packet_larger_than_a_batch_goes_alone() -> None:
    big = UDP + b"y" * (pk.MAX_BATCH_PAYLOAD + 1)
    out = feed(pk.PacketAssembler(BOOT), [record(0), record(1, data=big), record(2)])
    assert [len(o.env["packets"]) for o in out] == [1, 1, 1]
    assert out[1].payload == big


def test_filters_and_scope_apply_before_batching() -> None:
    asm = pk.PacketAssembler(BOOT, filtered_protocols=frozenset({"tcp"}))
    assert feed(asm, [record(i) for i in range(5)]) == [] and asm.filtered_out == 5
    scoped = pk.PacketAssembler(BOOT, scoped=True)
    nobody = record(0)._replace(owner_pid=0, cookie=0)
    assert feed(scoped, [nobody]) == []


def test_expire_flushes_the_packets_that_waited() -> None:
    asm = pk.PacketAssembler(BOOT)
    unowned = record(0)._replace(owner_pid=0, cookie=77)
    assert asm.on_packet(unowned, 0) == []
    (batch,) = wire(asm.expire(pk.OWNER_WAIT_NS))
    (one,) = bus.split_packets(batch)
    assert (one.env["pid"], one.env["comm"], one.env["start_time"]) == (0, b"", 0)


# -- the contract's reader ------------------------------------------------------------------------


def batch(rows: list[Any], payload: bytes, **overrides: Any) -> bus.Message:
    return bus.decode(bus.encode(bus.TOPIC_NET_PACKETS,
                                 packet_batch_env(packets=rows, **overrides), payload))  # fmt: skip


def row(caplen: int, context: int = 0, **fields: Any) -> list[Any]:
    values = {"ts": 5, "context": context, "ifindex": 1, "orig_len": caplen, "cookie": 9,
              "caplen": caplen, "protocols": ["ipv4"], **fields}  # fmt: skip
    return [values[name] for name in bus.PACKET_ROW]


def test_packet_rows_cut_the_payload_by_caplen() -> None:
    got = bus.packet_rows(batch([row(3), row(0), row(2)], b"abcde"))
    assert [data for _, _, data in got] == [b"abc", b"", b"de"]
    assert all(ctx["comm"] == b"ping" for ctx, _, _ in got)


@pytest.mark.parametrize(
    ("rows", "payload", "overrides", "why"),
    [
        ([row(3, context=1)], b"abc", {}, "packet context 1 of 1"),
        ([row(3, context=-1)], b"abc", {}, "packet context -1 of 1"),
        ([row(4)], b"abc", {}, "packet of 4 bytes at 0"),
        ([row(2)], b"abc", {}, "1 payload bytes belong to no packet"),
        ([row(-1)], b"", {}, "packet of -1 bytes"),
        ([row(3)[:6]], b"abc", {}, "is not 7 fields"),
        ([{"ts": 1}], b"abc", {}, "is not 7 fields"),
        ([row(3, ts=True)], b"abc", {}, "field 'ts' is bool"),
        ([row(3, cookie="9")], b"abc", {}, "field 'cookie' is str"),
        ([row(3, protocols="ipv4")], b"abc", {}, "'protocols' is not a list"),
        ([row(3)], b"abc", {"contexts": [{"pid": 1}]}, "context key 'tid'"),
        ([row(3)], b"abc", {"contexts": [[1, 2]]}, "is a list, not a map"),
    ],
)
def test_a_batch_that_does_not_add_up_is_refused(
    rows: list[Any], payload: bytes, overrides: dict[str, Any], why: str
) -> None:
    with pytest.raises(bus.BadMessage, match=why.replace("(", r"\(")):
        bus.packet_rows(batch(rows, payload, **overrides))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(0, 3))
def test_any_batch_round_trips(datas: list[bytes], owners: int) -> None:
    asm = pk.PacketAssembler(BOOT)
    recs = [record(i, pid=900 + i % (owners + 1), data=d) for i, d in enumerate(datas)]
    split = [m for b in wire(feed(asm, recs)) for m in bus.split_packets(b)]
    assert [(m.payload, m.env["pid"]) for m in split] == [(r.data, r.owner_pid) for r in recs]
