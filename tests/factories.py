"""Row factories: put the store in a given state quickly, through the store's own admission."""

from __future__ import annotations

from typing import Any

from orchestrator.store import NewJob, RunnerSpec, Store
from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from services.admission.rules import new_job


def job(pool: str = "default", **fields: Any) -> NewJob:
    spec = JobSpec(pool=pool, **fields)
    return new_job(spec.key, spec, "token", {})


async def queue(store: Store, n: int = 1, pool: str = "default", **fields: Any) -> list[Any]:
    """`n` queued jobs with the given spec fields; their ids, in order."""
    jobs = [job(pool, **fields) for _ in range(n)]
    async with store.transitions.admission([pool], []) as tx:
        rows = await tx.insert(jobs)
    assert len(rows) == n
    return [j.id for j in jobs]


async def pool(store: Store, name: str = "default", **config: Any) -> dict[str, Any]:
    async with store.transitions.pool_change(name) as tx:
        return await tx.upsert({**PoolConfig().model_dump(mode="json"), **config})


async def runner(store: Store, runner_id: str, pool: str = "default", slots: int = 1, labels: Any = ()) -> None:
    await store.transitions.register_runner(RunnerSpec(runner_id, pool, list(labels), slots), [])


async def bulk_queue(store: Store, n: int, pool: str = "default", labels: Any = (), priority: int = 0) -> None:
    """`n` queued no-op jobs, inserted in large batches: for backlogs too large to admit one by one."""
    for start in range(0, n, 10_000):
        jobs = [
            job(pool, labels=list(labels), priority=priority, payload={"command": ["true"]})
            for _ in range(min(10_000, n - start))
        ]
        async with store.transitions.admission([pool], []) as tx:
            await tx.insert(jobs)
