"""Row factories: put the store in a given state quickly, through the store's own admission. A
job's row, a pool and a backlog come from bench/factories.py (the benchmark seeds with them too,
and bench never imports tests); queued jobs and registered runners are the tests' own."""

from __future__ import annotations

from typing import Any

from bench.factories import bulk_queue, job, pool
from orchestrator.store import End, RunnerSpec, Start, Store
from schemas.jobs import JobSpec, JobState

__all__ = ["JobSpec", "bulk_queue", "finish", "job", "pool", "queue", "runner"]


async def queue(store: Store, n: int = 1, pool: str = "default", **fields: Any) -> list[Any]:
    """`n` queued jobs with the given spec fields; their ids, in order."""
    jobs = [job(pool, **fields) for _ in range(n)]
    async with store.transitions.admission([pool], []) as tx:
        rows = await tx.insert(jobs)
    assert len(rows) == n
    return [j.id for j in jobs]


async def runner(store: Store, runner_id: str, pool: str = "default", slots: int = 1, labels: Any = ()) -> None:
    await store.transitions.register_runner(RunnerSpec(runner_id, pool, list(labels), slots), [])


async def finish(store: Store, assignments: list[dict[str, Any]]) -> None:
    """Start and succeed these claimed assignments, as their runners would report."""
    runs = [Start(a["id"], a["runner_id"], a["attempt"] + 1) for a in assignments]
    assert len(await store.transitions.start_many(runs)) == len(runs)
    ends = [End(*run, JobState.succeeded, 0) for run in runs]
    assert len(await store.transitions.finish_many(ends)) == len(runs)


async def statistics_of_the_past(store: Store) -> None:
    """Postgres's statistics as they stand before a burst: a history of 5,000 ended jobs in one
    shape, analyzed, and autovacuum off for jobs and job_shapes so what the test adds next stays
    unanalyzed (as it is for a minute or so after a real burst), on a store that does not analyze
    bursts itself (`analyze_bursts=False`): a burst smaller than its threshold, or admitted by
    another process, leaves the statistics as old."""
    if store.statistics.enabled:
        raise ValueError("statistics_of_the_past needs a store made with analyze_bursts=False")
    await pool(store, "history", max_concurrent=-1)
    await bulk_queue(store, 5000, pool="history")
    async with store.connection() as conn:
        await conn.execute("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE pool = 'history'")
        for table in ("jobs", "job_shapes"):
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        await conn.execute("ANALYZE jobs, job_shapes")
