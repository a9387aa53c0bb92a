"""Messages stored out of seq order are put back in order; a real hole is released late."""

from __future__ import annotations

from writers.seqorder import SeqOrder

K = ("alpha", 7, b"file.write.")


class Consumer:
    """Processes what it is handed, as the gap tracker would see it."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def expected(self, key) -> int | None:
        return self.seen[-1] + 1 if self.seen else None

    def take(self, items: list[int]) -> None:
        self.seen.extend(items)


def test_a_message_ahead_waits_for_those_before_it() -> None:
    c = Consumer()
    order = SeqOrder(c.expected)
    for seq in (0, 1, 4, 5, 2, 3, 6):
        c.take(order.offer(K, seq, seq, now=0.0))
    assert c.seen == [0, 1, 2, 3, 4, 5, 6]
    assert order.reordered == 2 and order.count == 0


def test_a_real_hole_is_released_after_the_wait_and_held_seqs_are_not_acknowledged() -> None:
    c = Consumer()
    order = SeqOrder(c.expected, hold_s=3.0)
    c.take(order.offer(K, 0, 0, now=0.0))
    c.take(order.offer(K, 5, 5, now=1.0))
    c.take(order.offer(K, 6, 6, now=1.5))
    assert order.floors("alpha") == {"7:file.write.": 5} and order.floors("beta") == {}
    assert order.release(3.9) == []
    c.take(order.release(4.0))
    assert c.seen == [0, 5, 6] and order.count == 0


def test_the_bound_releases_everything_held() -> None:
    c = Consumer()
    order = SeqOrder(c.expected, max_held=2)
    c.take(order.offer(K, 0, 0, now=0.0))
    for seq in (3, 4):
        c.take(order.offer(K, seq, seq, now=0.0))
    c.take(order.offer(K, 5, 5, now=0.0))
    assert c.seen == [0, 3, 4, 5]


def test_regressions_and_first_messages_pass_at_once() -> None:
    c = Consumer()
    order = SeqOrder(c.expected)
    c.take(order.offer(K, 9, 9, now=0.0))  # the first of its stream: whatever its seq
    c.take(order.offer(K, 3, 3, now=0.0))  # a redelivery: the gap tracker counts it
    assert c.seen == [9, 3]
