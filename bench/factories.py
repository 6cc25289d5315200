"""Row factories the benchmark seeds the store with, through the store's own admission: a job's
row, a pool, a large backlog. Here, not in tests/factories.py (which re-exports them and adds
the tests' own), because tests depend on bench and never the reverse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.store import NewJob, Store
from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from services.admission.rules import new_job


def job(pool: str = "default", **fields: Any) -> NewJob:
    spec = JobSpec(pool=pool, **fields)
    return new_job(spec.key, spec, "token", {})


async def pool(store: Store, name: str = "default", **config: Any) -> dict[str, Any]:
    async with store.transitions.pool_change(name) as tx:
        return await tx.upsert({**PoolConfig().model_dump(mode="json"), **config})


async def bulk_queue(
    store: Store,
    n: int,
    pool: str = "default",
    labels: Any = (),
    priority: int = 0,
    tenants: Sequence[str] = (),
    **fields: Any,
) -> None:
    """`n` queued no-op jobs, inserted in large batches: for backlogs too large to admit one by one.
    With `tenants`, job i is tenant `tenants[i % len(tenants)]`'s (a shape per tenant); `fields`:
    more of the job spec, the same for each."""
    for start in range(0, n, 10_000):
        jobs = [
            job(
                pool,
                labels=list(labels),
                priority=priority,
                tenant=tenants[i % len(tenants)] if tenants else None,
                payload={"command": ["true"]},
                **fields,
            )
            for i in range(start, min(start + 10_000, n))
        ]
        async with store.transitions.admission([pool], []) as tx:
            await tx.insert(jobs)
