"""Hostile bytes at the two decoding boundaries: the ring buffer and the bus.

Whatever arrives, the decoders answer with their own error (which the collector and the
writers count) and never with another exception that would take a process down.
"""

from __future__ import annotations

import contextlib

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf import records
from tracecap import bus

DECODERS = [
    records.decode_file_event,
    records.decode_file_data,
    records.decode_file_cont,
    records.decode_file_xfer,
    records.decode_exec_event,
    records.decode_mem_event,
    records.decode_module_event,
    records.decode_bpf_event,
    records.decode_packet,
    records.decode_sock_owner,
]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=9000), kind=st.integers(0, 12))
def test_ring_buffer_decoders_raise_only_record_error(raw: bytes, kind: int) -> None:
    raw = kind.to_bytes(4, "little") + raw
    for decode in DECODERS:
        with contextlib.suppress(records.RecordError):
            decode(raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=0, max_size=200))
def test_record_kind_of_any_bytes(raw: bytes) -> None:
    try:
        assert records.record_kind(raw) == int.from_bytes(raw[:4], "little")
    except records.RecordError:
        assert len(raw) < 4


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=20)
    | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    topic=st.binary(max_size=20),
    env=st.dictionaries(st.text(max_size=12), _VALUES, max_size=12),
    payload=st.one_of(st.none(), st.binary(max_size=100)),
)
def test_bus_decode_of_arbitrary_envelopes_raises_only_bad_message(topic, env, payload) -> None:
    frames = [topic, msgpack.packb(env, use_bin_type=True)]
    if payload is not None:
        frames.append(payload)
    try:
        msg = bus.decode(frames)
    except bus.BadMessage:
        return
    assert msg.env["v"] == bus.VERSION and msg.topic.endswith(b".")


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.binary(max_size=200), max_size=5))
def test_bus_decode_of_arbitrary_frames_raises_only_bad_message(frames) -> None:
    with contextlib.suppress(bus.BadMessage):
        bus.decode(frames)


def test_a_well_formed_file_message_round_trips() -> None:
    env = {
        "v": 1, "epoch": 3, "seq": 0, "ts": 1, "pid": 2, "tid": 2, "ppid": 1, "uid": 0,
        "comm": b"\xffbad", "cgroup_id": 1, "container_id": "", "syscall": "write", "fd": 1,
        "path": b"/x\n", "dev": 1, "inode": 2, "mode": 0o100644, "io_id": 1, "io_len": 3,
        "io_off": 0, "off": 0, "append": False, "unknown_key_is_kept": [1],
    }  # fmt: skip
    msg = bus.decode(bus.encode(bus.TOPIC_FILE_WRITE, env, b"abc"))
    assert msg.env == env and msg.payload == b"abc"
