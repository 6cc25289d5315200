"""Planner statistics after a burst of admissions: analyzed at once by the admitting process
(orchestrator/store/statistics.py), not a minute later by autovacuum. Here autovacuum is off, so
only that can bring them up to date."""

from __future__ import annotations

from orchestrator.settings import Settings
from orchestrator.store import Store
from tests import factories
from tests.support import eventually


async def known_rows(store: Store, table: str) -> float:
    async with store.connection() as conn:
        return float(await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass", table))


async def test_a_burst_of_admissions_is_analyzed_by_the_process_that_admitted_it(settings: Settings) -> None:
    """12,000 jobs of 3,000 new tenants (a shape each) after statistics that knew 5,000 jobs of one
    shape: the statistics learn the burst without autovacuum, which would have taken up to a minute."""
    past = Store(settings.database_url or "", max_size=2, analyze_bursts=False)
    await past.connect()
    try:
        await factories.statistics_of_the_past(past)  # and autovacuum off for jobs and job_shapes
    finally:
        await past.close()
    store = Store(settings.database_url or "", max_size=2)
    await store.connect()
    try:
        assert await known_rows(store, "job_shapes") < 10
        await factories.pool(store, "burst", max_concurrent=-1)
        await factories.bulk_queue(store, 12_000, pool="burst", tenants=[f"t{i}" for i in range(3_000)])

        async def burst_known() -> bool:
            return await known_rows(store, "job_shapes") >= 3_000 and await known_rows(store, "jobs") >= 15_000

        await eventually(burst_known, timeout=30, what="the statistics to know the burst")
    finally:
        await store.close()
