"""What a remote writer may acknowledge: the durable front of its deliveries."""

from __future__ import annotations

import pytest

from writers.acks import AckLedger, Delivery


def d(stream_seq: int, seq: int, host: str = "a", key: str | None = "1:file.write.") -> Delivery:
    return Delivery(stream_seq, host, key, seq, f"reply.{stream_seq}")


def test_the_front_below_what_the_writer_holds_is_acknowledged() -> None:
    ledger = AckLedger()
    for n in range(1, 6):
        ledger.delivered(d(n * 2, n))  # stream seqs 2..10, bus seqs 1..5
    held = {"a": {"1:file.write.": 3}}
    last = ledger.advance(lambda host: held[host])
    assert last is not None and last.stream_seq == 4 and last.reply == "reply.4"
    assert ledger.acked == {"a": {"1:file.write.": 2}}
    assert len(ledger) == 3
    assert ledger.advance(lambda host: held[host]) is None  # nothing more is durable
    held["a"] = {}
    assert ledger.advance(lambda host: held[host]).stream_seq == 10
    assert ledger.acked == {"a": {"1:file.write.": 5}} and len(ledger) == 0


def test_deliveries_the_writer_holds_nothing_of_pass_and_other_hosts_are_separate() -> None:
    ledger = AckLedger({"b": {"9:exec.": 4}})
    ledger.delivered(d(1, 0, key=None))
    ledger.delivered(d(2, 7, host="b", key="1:file.write."))
    ledger.delivered(d(3, 1, host="a"))
    last = ledger.advance(lambda host: {"a": {"1:file.write.": 1}, "b": {}}[host])
    assert last.stream_seq == 2
    assert ledger.acked == {"b": {"9:exec.": 4, "1:file.write.": 7}}


def test_a_redelivery_is_recognised_and_its_new_reply_subject_kept() -> None:
    ledger = AckLedger()
    ledger.delivered(d(5, 0))
    ledger.delivered(d(6, 1))
    assert not ledger.seen(7, "new.7")
    assert ledger.seen(6, "new.6") and ledger.seen(3, "new.3")
    assert ledger.advance(lambda _h: {}).reply == "new.6"
    with pytest.raises(ValueError):
        ledger.delivered(d(6, 2))
