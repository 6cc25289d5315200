"""The shape ids admission remembers are bounded (issue 21: a producer chooses shapes, a tenant
being any name): past the bound, a shape forgotten is looked up again, never created twice."""

from __future__ import annotations

import pytest

from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store import transitions as transitions_module
from tests import factories

TENANTS = [f"t{i}" for i in range(10)]


async def test_shapes_past_the_bound_are_looked_up_and_reused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transitions_module, "SHAPES_REMEMBERED", 2)
    store = Store(settings.database_url or "", max_size=2)
    await store.connect()
    try:
        await factories.pool(store)
        for _ in range(2):  # the second round finds each shape forgotten (only 2 remembered)
            for tenant in TENANTS:
                await factories.queue(store, 1, tenant=tenant)
        async with store.connection() as conn:
            rows = await conn.fetch(
                "SELECT s.tenant, count(DISTINCT j.shape_id) AS ids, count(*) AS jobs"
                " FROM jobs j JOIN job_shapes s ON s.id = j.shape_id GROUP BY s.tenant"
            )
            shapes = await conn.fetchval("SELECT count(*) FROM job_shapes")
        assert shapes == len(TENANTS)
        assert sorted((r["tenant"], r["ids"], r["jobs"]) for r in rows) == sorted((t, 1, 2) for t in TENANTS)
    finally:
        await store.close()
