"""tap_line: one valid JSON line per bus message, whatever bytes the kernel strings hold."""

import json

from hypothesis import given
from hypothesis import strategies as st

from tracecap import bus
from tracecap.tools.tap import jsonable, tap_line


def test_tap_line_fields_and_payload_len():
    message = bus.Message(
        bus.TOPIC_FILE_WRITE,
        {"v": 1, "seq": 3, "comm": b"dd", "path": b"/tmp/a", "lost": [[0, 10]], "io_off": 0},
        b"\x00" * 1234,
    )
    line = tap_line(message)
    assert "\n" not in line
    assert json.loads(line) == {
        "topic": "file.write.",
        "v": 1,
        "seq": 3,
        "comm": "dd",
        "path": "/tmp/a",
        "lost": [[0, 10]],
        "io_off": 0,
        "payload_len": 1234,
    }


def test_tap_line_without_payload_has_len_0():
    line = tap_line(bus.Message(bus.TOPIC_STATS, {"state": "ready"}, b""))
    assert json.loads(line) == {"topic": "stats.", "state": "ready", "payload_len": 0}


def test_tap_line_is_sorted_and_escapes_hostile_bytes():
    comm = b'a"b\\c\n\r\x00\x1b[31m\xff\xfe'
    path = b"/tmp/\xe2\x80\xa8line\xc3(\n{}"
    line = tap_line(bus.Message(bus.TOPIC_FILE_READ, {"path": path, "comm": comm}, b"abc"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    line.encode("utf-8")
    record = json.loads(line)
    assert list(record) == sorted(record)
    assert record["comm"] == 'a"b\\c\n\r\x00\x1b[31m\\xff\\xfe'
    assert record["path"] == "/tmp/\u2028line\\xc3(\n{}"
    assert record["payload_len"] == 3


def test_jsonable_nested():
    assert jsonable({b"k": [b"\xff", (1, b"x")], 2: {"n": None}}) == {
        "b'k'": ["\\xff", [1, "x"]],
        "2": {"n": None},
    }


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(
    topic=st.binary(min_size=1, max_size=20),
    env=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("topic", "payload_len")),
        _VALUES,
        max_size=6,
    ),
    payload=st.binary(max_size=64),
)
def test_tap_line_is_always_one_json_line(topic, env, payload):
    line = tap_line(bus.Message(topic, env, payload))
    assert "\n" not in line
    record = json.loads(line)
    assert record["payload_len"] == len(payload)
    assert isinstance(record["topic"], str)
    line.encode("utf-8")
