"""Job reads (`queries/jobs.sql`) and the JetStream door's refusals (`queries/rejections.sql`)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job


class JobReads(Connected):
    async def job_get(self, job_id: UUID) -> Job | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["job_get"], job_id)
        return Job.from_record(row) if row else None

    async def job_list(
        self, *, pool: str | None, state: str | None, key: str | None, limit: int, tenant: str | None = None
    ) -> list[Job]:
        async with self.connection() as conn:
            return [Job.from_record(r) for r in await conn.fetch(Q["job_list"], pool, state, key, limit, tenant)]

    async def job_count(self, pool: str) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval(Q["job_count_by_pool"], pool))

    async def rejection_list(
        self, *, reason: str | None, limit: int, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Rejections newest first, those older than id `before`, at most `limit`."""
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["rejection_list"], reason, limit, before)]
