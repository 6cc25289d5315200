"""Leadership and fleets: provisioned workers counted against the fleet cap
(`queries/workers.sql`), and the dispatch leaders' fencing epochs
(`queries/dispatch_epochs.sql`)."""

from __future__ import annotations

from typing import Any

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q


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
