"""Subjects, message ids, bodies and consumer names of the bus on JetStream."""

from __future__ import annotations

import msgpack
import pytest

from tests.support.envelopes import file_env
from tracecap import bus, fleet


def test_a_topic_becomes_a_subject_without_its_trailing_dot_and_back() -> None:
    for topic in bus.TOPICS:
        name = fleet.subject("web-1", topic)
        assert not name.endswith(".")
        assert fleet.parse_subject(name) == ("web-1", topic)
    assert fleet.subject("web1", b"file.write.") == "tracecap.web1.file.write"
    assert fleet.subject("web1", b"net.packet.") == "tracecap.web1.net.packet"


@pytest.mark.parametrize(
    "name", ["tracecap.web1", "other.web1.exec", "tracecap.a.b.", "tracecap.*.exec", "tracecap..x"]
)
def test_subjects_that_are_not_ours_are_refused(name: str) -> None:
    with pytest.raises(fleet.BadSubject):
        fleet.parse_subject(name)


@pytest.mark.parametrize("host", ["web.example.com", "a b", "*", ">", "", "x" * 65, "é"])
def test_a_host_must_be_one_subject_token(host: str) -> None:
    with pytest.raises(ValueError, match="one NATS subject token"):
        fleet.check_host(host)


def test_the_default_host_is_the_short_name_made_a_token() -> None:
    assert fleet.default_host("web1.example.com") == "web1"
    assert fleet.default_host("we b+1") == "we_b_1"
    assert fleet.check_host(fleet.default_host("")) == "localhost"


def test_the_message_id_names_host_epoch_topic_and_seq() -> None:
    assert fleet.msg_id("web1", 42, b"file.write.", 7) == "web1:42:file.write.:7"


def test_body_and_frames_round_trip_with_and_without_payload() -> None:
    env = msgpack.packb(file_env(io_len=3))
    headers, data = fleet.body(env, b"abc")
    assert fleet.frames(b"file.write.", headers, data) == [b"file.write.", env, b"abc"]
    bus.decode(fleet.frames(b"file.write.", headers, data))
    headers, data = fleet.body(env, b"")
    assert fleet.frames(b"file.write.", headers, data) == [b"file.write.", env]


@pytest.mark.parametrize(
    "header", [None, {}, {"Tracecap-Envelope": "x"}, {"Tracecap-Envelope": "99"}]
)
def test_a_body_whose_header_does_not_fit_is_refused(header) -> None:
    with pytest.raises(fleet.BadSubject):
        fleet.frames(b"exec.", header, b"short")


def test_the_filter_subject_of_a_kind() -> None:
    assert fleet.filter_subject([b"exec."]) == "tracecap.*.exec"
    assert fleet.filter_subject([b"file.write.", b"file.read."]) == "tracecap.*.file.>"
    assert fleet.filter_subject([b"net.packet."], "web1") == "tracecap.web1.net.packet"
    assert fleet.filter_subject([b"mem.", b"exec."]) == "tracecap.*.>"


def test_durable_names_differ_per_kind_box_and_output() -> None:
    a = fleet.durable_name("file", "box2", "/var/lib/tracecap/out")
    assert a == fleet.durable_name("file", "box2", "/var/lib/tracecap/out")
    others = {
        fleet.durable_name("exec", "box2", "/var/lib/tracecap/out"),
        fleet.durable_name("file", "box3", "/var/lib/tracecap/out"),
        fleet.durable_name("file", "box2", "/srv/out"),
    }
    assert a not in others and len(others) == 3
    assert all(c.isalnum() or c == "_" for c in a)
