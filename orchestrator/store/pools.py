"""Pool reads: configuration, free capacity, leader election, fleet demand, queue depth and the
metrics snapshot (`queries/pools.sql`, `operator.sql`, `metrics.sql`); and a pool's deletion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.bus.subjects import Subjects
from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q
from orchestrator.store.transitions import news
from orchestrator.store.transitions.news import Outgoing
from schemas.events import PoolLeaderChanged


@dataclass(frozen=True)
class PoolUsage:
    """What keeps a pool from being deleted: its live jobs, and its runners that are not lost."""

    queued: int
    assigned: int
    running: int
    runners: list[str]

    @property
    def jobs(self) -> int:
        return self.queued + self.assigned + self.running


class PoolReads(Connected):
    async def pool_get(self, name: str) -> dict[str, Any] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["pool_get"], name)
        return dict(row) if row else None

    async def pool_list(self) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_list"])]

    async def pool_names(self) -> frozenset[str]:
        async with self.connection() as conn:
            return frozenset(r["name"] for r in await conn.fetch(Q["pool_names"]))

    async def pool_create_if_absent(self, name: str, labels: Sequence[str]) -> None:
        async with self.connection() as conn:
            await conn.execute(Q["pool_create_if_absent"], name, list(labels))

    async def pool_free(self, name: str) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval(Q["pool_free"], name) or 0)

    async def pools_with_queued(self) -> dict[str, str]:
        """Every pool with queued jobs, with its dispatch shard."""
        async with self.connection() as conn:
            return {r["name"]: r["dispatch_shard"] for r in await conn.fetch(Q["pool_list_with_queued"])}

    async def pool_shards(self, pool: str | None = None) -> dict[str, str]:
        """Each pool's dispatch shard (only `pool`'s when given; empty if it does not exist)."""
        async with self.connection() as conn:
            return {r["name"]: r["dispatch_shard"] for r in await conn.fetch(Q["pool_list_shards"], pool)}

    async def pool_elect_leader(self, pool: str | None = None) -> list[PoolLeaderChanged]:
        """Elect leader-mode pools' leaders (`pool`, or all); the changes, whose news goes to the
        outbox in the same transaction: it leaves in commit order, so a watcher's last event
        names the leader Postgres has."""
        async with self.transaction() as conn:
            await conn.execute(Q["pool_lock_for_election"], pool)
            changes = [PoolLeaderChanged(**r) for r in await conn.fetch(Q["pool_elect_leader"], pool)]
            await news.write(conn, [Outgoing(Subjects.pool_leader_changed.at(c.pool), c, False) for c in changes])
        return changes

    async def pools_provisioned(self) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_list_provisioned"])]

    async def pool_fleet_demand(self, pool: str, max_queued: int) -> dict[str, Any] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["pool_fleet_demand"], pool, max_queued)
        return dict(row) if row else None

    async def pool_depth_list(self) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_depth_list"])]

    async def metrics_snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every pool's queue state, and runners counted by pool and state (metrics, dashboard)."""
        async with self.connection() as conn:
            pools = await conn.fetch(Q["metrics_pools"])
            runners = await conn.fetch(Q["metrics_runners"])
        return [dict(r) for r in pools], [dict(r) for r in runners]

    async def pool_delete(self, name: str) -> dict[str, Any] | PoolUsage | None:
        """Delete the pool with its ended jobs (the deleted row, with `deleted_jobs`), unless it has
        live jobs or live runners (what it has: nothing changed). None: no such pool. Admissions
        into it wait on its admission lock meanwhile, as for a pool change."""
        async with self.transaction() as conn:
            await conn.execute(Q["pool_admission_lock"], name)
            if await conn.fetchval(Q["pool_lock_for_delete"], name) is None:
                return None
            usage = PoolUsage(**dict(await conn.fetchrow(Q["pool_usage"], name)))
            if usage.jobs or usage.runners:
                return usage
            return dict(await conn.fetchrow(Q["pool_delete"], name))
