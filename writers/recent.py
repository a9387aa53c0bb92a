"""A bounded memory of keys seen recently: duplicates are recognised, memory stays flat."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentKeys(Generic[K]):
    """The last ``limit`` keys added, each with an optional value; past that the oldest is
    forgotten.

    Used where a forgotten key only costs a repeat (a duplicate chunk accepted again, an object
    captured twice), never a loss, so a stream of distinct keys cannot grow memory.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._keys: OrderedDict[K, Any] = OrderedDict()

    def add(self, key: K, value: Any = None) -> None:
        """Remember ``key`` (with ``value``, or keeping the one it had) as the newest."""
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            if value is not None:
                keys[key] = value
            return
        keys[key] = value
        if len(keys) > self._limit:
            keys.popitem(last=False)

    def get(self, key: K) -> Any:
        """The value ``key`` was added with, or None."""
        return self._keys.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
