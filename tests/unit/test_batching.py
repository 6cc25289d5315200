"""The batcher: calls that arrive while a flush runs go together in the next one; each caller
gets its own result, or the failure of its batch."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.batching import Batcher


async def test_concurrent_calls_share_a_flush_and_get_their_own_results() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await gate.wait()
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the first flush is running, held at the gate
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]


async def test_a_failed_flush_fails_its_callers_only() -> None:
    async def flush(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("boom")
        return items

    batcher: Batcher[int, int] = Batcher(flush)
    with pytest.raises(ValueError, match="boom"):
        await batcher.submit(0)
    assert await batcher.submit(5) == 5
