"""Row factories: put the store in a given state quickly, through the store's own admission."""

from __future__ import annotations

from typing import Any

from orchestrator.store import NewJob, Store
from schemas.ids import uuid7
from schemas.jobs import JobSpec


def new_job(pool: str = "default", **fields: Any) -> NewJob:
    spec = JobSpec(pool=pool, **fields)
    job_id = uuid7()
    return NewJob(
        id=job_id,
        key=spec.key or str(job_id),
        spec=spec.canonical(),
        pool=spec.pool,
        labels=sorted(set(spec.labels)),
        plan=spec.plan,
        tenant=spec.tenant,
        priority=spec.priority,
        payload=spec.payload,
        timeout_s=spec.timeout_s,
        max_attempts=spec.max_attempts,
        abandon_after_s=spec.abandon_after_s,
        token_hash=None,
        trace_context={},
        tolerations=sorted(set(spec.tolerations)),
    )


async def queue(store: Store, n: int = 1, pool: str = "default", **fields: Any) -> list[Any]:
    ids = []
    for _ in range(n):
        outcome = await store.job_admit(new_job(pool, **fields), max_active=-1)
        assert outcome.outcome == "admitted", outcome
        ids.append(outcome.job["id"])  # type: ignore[index]
    return ids


async def pool(store: Store, name: str = "default", **config: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "max_concurrent": 20,
        "max_active": 1024,
        "labels": [],
        "allowed_plans": [],
        "mode": "shared",
        "paused": False,
    }
    return await store.pool_put(name, **{**defaults, **config})


async def runner(store: Store, runner_id: str, pool: str = "default", slots: int = 1, labels: Any = ()) -> None:
    await store.runner_register(runner_id, pool, list(labels), slots, [], {}, [])


async def bulk_queue(store: Store, n: int, pool: str = "default", labels: Any = (), priority: int = 0) -> None:
    """`n` queued jobs in one statement: for backlogs too large to admit one by one in a test."""
    labels = sorted(set(labels))
    shape_id = await store._shape_id(pool, labels, None)
    async with store._conn() as conn:
        await conn.execute(
            """INSERT INTO jobs (id, key, spec, pool, shape_id, labels, priority, payload)
               SELECT gen_random_uuid(), 'bulk-' || gen_random_uuid(), '{}', $1, $2, $3, $4,
                      '{"command": ["true"]}'
               FROM generate_series(1, $5)""",
            pool,
            shape_id,
            labels,
            priority,
            n,
        )
