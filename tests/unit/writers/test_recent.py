"""The bounded memory of recent keys."""

from __future__ import annotations

from writers.recent import RecentKeys


def test_the_oldest_key_is_forgotten_past_the_limit() -> None:
    keys: RecentKeys[int] = RecentKeys(3)
    for key in (1, 2, 3):
        keys.add(key)
    keys.add(1)  # seen again: now the newest
    keys.add(4)
    assert 2 not in keys and {1, 3, 4} == {k for k in range(5) if k in keys}
    assert len(keys) == 3


def test_a_key_keeps_its_value_until_given_another() -> None:
    keys: RecentKeys[str] = RecentKeys(2)
    keys.add("a", "first")
    keys.add("a")
    assert keys.get("a") == "first"
    keys.add("a", "second")
    assert (keys.get("a"), keys.get("b")) == ("second", None)
