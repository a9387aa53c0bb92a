"""HeldDrops: loss notices wait for the ring records reserved before them, within a bound."""

from bpf.records import DroppedIo
from collector.drop_notices import HeldDrops


def drop(inode: int) -> DroppedIo:
    return DroppedIo(inode, 1, 2, 0, 10, 0, 10, 1, False)


def test_batches_go_out_in_order_once_their_mark_is_reached():
    held = HeldDrops()
    held.add([drop(1), drop(2)], (100,))
    held.add([], (150,))  # nothing drained: nothing to wait for
    held.add([drop(3)], (200,))
    assert len(held) == 3
    assert held.release(lambda mark: mark[0] <= 50) == []
    assert held.release(lambda mark: mark[0] <= 199) == [drop(1), drop(2)]
    assert held.release(lambda mark: True) == [drop(3)]
    assert len(held) == 0 and held.early == 0


def test_a_later_batch_never_overtakes_an_earlier_one():
    held = HeldDrops()
    held.add([drop(1)], (100, 5))
    held.add([drop(2)], (100, 4))
    assert held.release(lambda mark: mark[1] <= 4) == []


def test_force_releases_everything_without_counting_it_early():
    held = HeldDrops()
    held.add([drop(1)], (100,))
    assert held.release(lambda mark: False, force=True) == [drop(1)]
    assert held.early == 0


def test_past_the_bound_the_oldest_go_out_early_and_are_counted():
    held = HeldDrops(limit=3)
    held.add([drop(1), drop(2)], (100,))
    held.add([drop(3), drop(4)], (200,))
    assert held.release(lambda mark: False) == [drop(1), drop(2)]
    assert (len(held), held.early) == (2, 2)
    assert held.release(lambda mark: False) == []
