"""A mapping that keeps at most `max_size` entries, dropping the least recently used: a cache
keyed by what senders choose (issue 21), where a miss costs a lookup, never a wrong answer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"an LRU cache holds at least one entry, not {max_size}")
        self.max_size = max_size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def update(self, items: Iterable[tuple[K, V]]) -> None:
        for key, value in items:
            self[key] = value
