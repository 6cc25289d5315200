"""Retention's statements (`queries/retention.sql`): each deletes one batch and is its own short
transaction; the pruner (orchestrator/retention.py) repeats them until a batch comes back short."""

from __future__ import annotations

from datetime import datetime

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q


def _count(status: str) -> int:
    """Rows a DELETE deleted, from its status (`DELETE 500`)."""
    return int(status.rsplit(" ", 1)[-1])


class RetentionRows(Connected):
    async def _prune(self, query: str, retention_s: float, batch: int, now: datetime | None, *more: object) -> int:
        async with self.connection() as conn:
            return _count(await conn.execute(Q[query], retention_s, now, batch, *more))

    async def prune_finished_jobs(self, pool: str, retention_s: float, batch: int, now: datetime | None = None) -> int:
        """Delete up to `batch` jobs of `pool` that ended over `retention_s` ago; how many were."""
        return await self._prune("job_prune_finished", retention_s, batch, now, pool)

    async def prune_rejections(self, retention_s: float, batch: int, now: datetime | None = None) -> int:
        return await self._prune("rejection_prune", retention_s, batch, now)

    async def prune_runners(self, retention_s: float, batch: int, now: datetime | None = None) -> int:
        """Runners lost or drained, silent for `retention_s`, no leader and holding no job."""
        return await self._prune("runner_prune", retention_s, batch, now)

    async def prune_workers(self, retention_s: float, batch: int, now: datetime | None = None) -> int:
        return await self._prune("worker_prune_gone", retention_s, batch, now)

    async def prune_shapes(self, pool: str, batch: int) -> int:
        """Delete up to `batch` of `pool`'s shapes no live job uses: found without a lock, then
        deleted if still empty under the pool's admission lock (a statement of its own, before
        the delete: see `job_shape_prune`), which is held only for those. How many it deleted."""
        async with self.connection() as conn:
            candidates = [r["id"] for r in await conn.fetch(Q["job_shape_prune_candidates"], pool, batch)]
        if not candidates:
            return 0
        async with self.transaction() as conn:
            await conn.execute(Q["pool_admission_lock"], pool)
            return int(await conn.fetchval(Q["job_shape_prune"], pool, candidates))
