"""The LRU cache behind caches keyed by what senders choose: it never holds more than its size,
and what is used stays while what is not goes first."""

from __future__ import annotations

import pytest

from orchestrator.lru import Lru


def test_it_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache: Lru[str, int] = Lru(3)
    cache.update((f"k{i}", i) for i in range(3))
    assert cache.get("k0") == 0  # used: now the most recent
    cache["k3"] = 3  # k1 was the least recently used
    assert len(cache) == 3
    assert cache.get("k1") is None
    assert [cache.get(k) for k in ("k0", "k2", "k3")] == [0, 2, 3]
    for i in range(10_000):
        cache[f"flood{i}"] = i
    assert len(cache) == 3


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry, not 0"):
        Lru(0)
