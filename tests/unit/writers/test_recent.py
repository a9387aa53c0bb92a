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
