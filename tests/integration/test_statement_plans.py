"""The admission and the finish keep one plan per connection (issue 19): planned again for each
batch, as Postgres did for them, a batch of one cost 0.6 and 0.9 ms of planning for 0.25 ms of
work (see queries/transitions.sql)."""

from __future__ import annotations

from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.queries import Q
from tests import factories

EDGES = ("job_insert_many", "job_finish_many")


async def test_the_admission_and_the_finish_are_planned_once_per_connection(settings: Settings) -> None:
    store = Store(settings.database_url or "", max_size=1)  # one connection: every edge's statements
    await store.connect()
    try:
        await factories.pool(store, "p")
        await factories.runner(store, "r1", pool="p")
        for _ in range(8):  # one job at a time, as an idle system admits and ends them
            await factories.queue(store, 1, pool="p", payload={"command": ["true"]})
            claim = await store.transitions.claim("p", 1)
            await factories.finish(store, claim.assignments)
        async with store.connection() as conn:
            rows = await conn.fetch("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    finally:
        await store.close()
    plans = {name: (r["generic_plans"], r["custom_plans"]) for r in rows for name in EDGES if r["statement"] == Q[name]}
    # With plan_cache_mode = auto, Postgres plans for the values five times before it compares;
    # from then on it runs the plan it made once. Before: (0, 8) each.
    assert plans == {name: (3, 5) for name in EDGES}
