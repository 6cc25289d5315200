"""The take protocol's reads and what holds a queued job back (`queries/take.sql`)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from orchestrator.store.connected import Connected
from orchestrator.store.flow import FlowWait
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job


class TakeReads(Connected):
    async def job_poll(self, job_id: UUID, wait_s: float = 0.0, taking: str | None = None) -> Job | None:
        """A take client polls: heard from now (and until the end of a `wait_s` long poll); with
        `taking` (a runner id) it takes that runner. The job, or None if it is no longer live (or
        no longer held by `taking`)."""
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["job_poll"], job_id, wait_s, taking)
        return Job.from_record(row) if row else None

    async def job_list_servo_live(self, unique_id: str) -> list[Job]:
        async with self.connection() as conn:
            return [Job.from_record(r) for r in await conn.fetch(Q["job_list_servo_live"], unique_id)]

    async def job_waiting(self, job: dict[str, Any]) -> dict[str, Any]:
        """The numbers behind a queued job's wait, read together: its pool's configuration, jobs in
        flight, the runners it could use, its position among the jobs competing for the same slots,
        its retry backoff left, how many jobs the pool finished in the last minute, and what
        holds it back by flow control (`flow`: its concurrency key, rate limit, max_starts_per_s)."""
        async with self.transaction() as conn:
            pool = await conn.fetchrow(Q["pool_get"], job["pool"])
            in_flight = await conn.fetchval(Q["pool_in_flight"], job["pool"])
            runners = await conn.fetchrow(Q["runner_capacity_for_labels"], job["pool"], list(job["labels"]))
            position = await conn.fetchrow(Q["job_queue_position"], job["id"])
            drained = await conn.fetchval(Q["pool_drained_last_minute"], job["pool"], None)
            flow = await conn.fetchrow(Q["job_flow_waiting"], job["id"])
        return {
            "pool": dict(pool) if pool else None,
            "in_flight": int(in_flight),
            **{k: int(v) for k, v in runners.items()},
            "competing": int(position["competing"]),
            "ahead": int(position["ahead"]),
            "backoff_s": position["backoff_s"] or 0.0,
            "drained_last_minute": int(drained),
            "flow": FlowWait(**dict(flow)) if flow else None,
        }
