"""A bound on the handler calls of one subscription at once (issue 21).

Without it a subscription handled in concurrent tasks started one task per message, however
fast messages came: anyone who can publish on NATS could make a process hold any number of
them. With it, the subscription's reader waits for a free slot before it takes the next
message, so what has not been taken waits in the client's pending buffer (bounded: see
`PENDING_*` in bus.py), and past that buffer NATS drops and reports it as a slow consumer,
which the bus counts (`Bus.dropped`), never silently.

A batch message (`Orch-Batch`) is handled in the slot its message took, and its events run
together in as many more slots as are free at that moment, never waiting for one while it
holds one: so no batch can starve another into a deadlock, and under no load a batch still
runs all at once (the handlers' own batching, one transaction for many reports, sees them
together), while under load it shrinks to what the bound leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

E = TypeVar("E")
R = TypeVar("R")

# At most this many handler calls of one subscription at once. The handlers that run concurrent
# (capacity's runner reports) mostly wait on a Batcher flush of up to 500 reports: 1024 lets one
# full batch commit while the next one forms, so the bound never shrinks a batch that Postgres
# could take; a waiting handler task costs a few KB, so the bound holds a subscription to a few MB.
MAX_HANDLERS = 1024


class HandlerSlots:
    """The free handler slots of one subscription."""

    def __init__(self, limit: int = MAX_HANDLERS) -> None:
        if limit < 1:
            raise ValueError(f"a subscription needs at least one handler slot, not {limit}")
        self.limit = limit
        self._free = asyncio.Semaphore(limit)

    async def take(self) -> None:
        """One slot, waiting for it: the reader's backpressure (a semaphore's fast path when free)."""
        await self._free.acquire()

    def give_back(self, n: int = 1) -> None:
        for _ in range(n):
            self._free.release()

    async def _free_now(self, wanted: int) -> int:
        """Up to `wanted` more slots, only those free now: `acquire` does not suspend while the
        semaphore is not locked, so this never waits (and never jumps a waiting reader)."""
        got = 0
        while got < wanted and not self._free.locked():
            await self._free.acquire()
            got += 1
        return got

    async def run(self, handler: Callable[[E], Awaitable[R]], events: Sequence[E]) -> list[R]:
        """`handler` on each event, in the slot the caller holds and as many more as are free:
        the results in order; the first error, raised once every call has ended."""
        if len(events) == 1:
            return [await handler(events[0])]
        extra = await self._free_now(min(len(events), self.limit) - 1)
        try:
            return await _each(handler, events, 1 + extra)
        finally:
            self.give_back(extra)


async def _each(handler: Callable[[E], Awaitable[R]], events: Sequence[E], width: int) -> list[R]:
    """`handler` on each event, at most `width` at once."""
    results: list[R | None] = [None] * len(events)
    errors: list[Exception] = []
    todo = iter(range(len(events)))

    async def worker() -> None:
        for i in todo:
            try:
                results[i] = await handler(events[i])
            except Exception as exc:  # the others still run: their slots are held until they end
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(min(width, len(events)))))
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
