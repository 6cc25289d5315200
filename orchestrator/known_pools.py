"""The pools that exist, as this process knows them: a cached set of names read from Postgres.

A pool name in a bus message is whatever its sender wrote, and anyone who can publish on NATS
can make names up (issue 21). Before such a name becomes a metric label, a key of a per-pool
map or a dispatch step, it is checked here: a set lookup, no store read on the hot path.

The set is read at start, again on a miss (`knows`: a pool created a moment ago whose news has
not come yet is found; the read began after the miss, so it sees any pool committed before the
message was sent), on `PoolUpdated` of a pool it does not know yet (the same miss), and every
`refresh_s`. A deleted pool has no event: it is found gone by the next read, and whoever keeps
state per pool is told (`on_gone`) and drops it. Reads coalesce: however many misses arrive
while one read runs, one more read serves them all, so a flood of made-up names costs one read
at a time, never a map entry, a label or a claim per name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from orchestrator.bus import Bus
from orchestrator.errors import OrchestratorError
from orchestrator.lifecycle import Service, every
from orchestrator.store import Store
from schemas.events import PoolUpdated

# How soon a deleted pool is forgotten (it has no event; any miss reads sooner).
REFRESH_S = 10.0


class KnownPools(Service):
    name = "pools"

    def __init__(self, store: Store, bus: Bus, *, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.store = store
        self.bus = bus
        self.refresh_s = refresh_s
        self.names: frozenset[str] = frozenset()
        self._gone: list[Callable[[str], None]] = []
        self._reading: asyncio.Task[None] | None = None  # the read in flight
        self._next: asyncio.Task[None] | None = None  # the read after it, for callers who came since

    async def on_start(self) -> None:
        try:
            await self.refresh()
        except OrchestratorError as exc:  # Postgres not there yet: the next miss or tick reads again
            self.log.warning("cannot read the pools yet: %s", exc)
        sub = await self.bus.subscribe(self.bus.subjects.pool_updated.any(), self._on_updated)
        self.on_cleanup(sub.unsubscribe)
        self.spawn(every(self.refresh_s, self.refresh, self.log, "reading the pools"), "refresh")

    async def on_stop(self) -> None:
        for task in (self._reading, self._next):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def __contains__(self, pool: str) -> bool:
        return pool in self.names

    def on_gone(self, forget: Callable[[str], None]) -> None:
        """Call `forget(pool)` when a pool is found deleted."""
        self._gone.append(forget)

    async def knows(self, pool: str) -> bool:
        """Whether `pool` exists: from the set, or on a miss from a read begun after this call."""
        if pool in self.names:
            return True
        await self.refresh()
        return pool in self.names

    async def _on_updated(self, event: PoolUpdated) -> None:
        await self.knows(event.pool)

    async def refresh(self) -> None:
        """Read the names, in a read begun after this call (the one in flight may have begun
        before it): callers arriving while one read runs share the next."""
        if self._next is None:
            self._next = asyncio.create_task(self._read(after=self._reading), name="pools.read")
        await asyncio.shield(self._next)

    async def _read(self, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            with contextlib.suppress(Exception):  # its callers heard how it failed
                await asyncio.shield(after)
        self._reading, self._next = self._next, None
        try:
            names = await self.store.pool_names()
        finally:
            self._reading = None
        gone = self.names - names
        self.names = names
        for pool in sorted(gone):
            for forget in self._gone:
                forget(pool)
