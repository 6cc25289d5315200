"""Leadership and fleets: provisioned workers counted against the fleet cap
(`queries/workers.sql`), and the dispatch shards with their leaders' fencing epochs
(`queries/dispatch_epochs.sql`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q


@dataclass(frozen=True)
class ShardTerm:
    """A dispatch shard's newest term as Postgres recorded it (no epoch: nobody led it yet), and
    how many pools the shard holds."""

    shard: str
    epoch: int | None
    holder: str | None
    since: datetime | None
    pools: int


@dataclass(frozen=True)
class PoolMove:
    """A pool that changed dispatch shard with the number of shards."""

    pool: str
    before: str
    after: str


class FleetRows(Connected):
    async def worker_reserve(
        self, pool: str, runner_id: str, spawned_by: str, max_workers: int, start_timeout_s: float
    ) -> int | None:
        """Reserve a fleet slot for a worker about to be spawned: the pool's live workers with it
        counted, or None when the pool already has `max_workers` (0: no cap). Exact with any
        number of provisioner instances: counted and written under the pool's fleet lock."""
        async with self.transaction() as conn:
            await conn.execute(Q["worker_fleet_lock"], pool)
            live = int(await conn.fetchval(Q["worker_count_live"], pool, start_timeout_s))
            if 0 < max_workers <= live:
                return None
            await conn.execute(Q["worker_insert"], runner_id, pool, spawned_by)
        return live + 1

    async def worker_count_live(self, pool: str, start_timeout_s: float) -> int:
        async with self.connection() as conn:
            await conn.execute(Q["worker_prune"], pool, start_timeout_s)
            return int(await conn.fetchval(Q["worker_count_live"], pool, start_timeout_s))

    async def worker_forget(self, runner_id: str) -> None:
        async with self.connection() as conn:
            await conn.execute(Q["worker_delete"], runner_id)

    async def dispatch_epoch_issue(self, shard: str, holder: str) -> int:
        """A new term for `holder`, newer than every earlier one of `shard`: its fencing epoch."""
        async with self.connection() as conn:
            return int(await conn.fetchval(Q["dispatch_epoch_issue"], shard, holder))

    async def dispatch_epoch_get(self, shard: str) -> dict[str, Any] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["dispatch_epoch_get"], shard)
        return dict(row) if row else None

    async def dispatch_epoch_list(self, shards: Sequence[str]) -> list[ShardTerm]:
        """The newest term of each of `shards`, in their order."""
        async with self.connection() as conn:
            rows = await conn.fetch(Q["dispatch_epoch_list"], list(shards))
        return [ShardTerm(**dict(r)) for r in rows]

    async def dispatch_shards_get(self) -> int:
        """How many dispatch shards pools are spread over now."""
        async with self.connection() as conn:
            return int(await conn.fetchval(Q["dispatch_shards_get"]))

    async def dispatch_shards_set(self, shards: int) -> list[PoolMove]:
        """Spread pools over `shards` shards from now on: the pools that moved (none when the
        number did not change). A holder of a pool's former shard can no longer claim its jobs."""
        if shards < 1:
            raise ValueError(f"the number of dispatch shards is at least 1, got {shards}")
        async with self.connection() as conn:
            rows = await conn.fetch(Q["dispatch_shards_set"], shards)
        return [PoolMove(r["name"], r["before"], r["after"]) for r in rows]
