"""Pool names from the bus are checked against the pools that exist (issue 21): anyone who can
publish on NATS can make up names, and none of them may become a metric series, a dispatch step
or an entry kept in memory. What is kept for a real pool goes when the pool is deleted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import BaseModel

from app.runtime import Runtime
from orchestrator.bus import Bus, Topic
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import CapacityUnknown, JobsQueued, PoolUpdated, SlotAvailable
from schemas.pools import PoolConfig
from services.dispatch import Dispatch
from tests import factories
from tests.support import call, eventually, submit

MADE_UP = [f"made-up-{i}" for i in range(1000)]
REAL = "real"


def label_values(metrics: Metrics) -> set[str]:
    return {value for family in metrics.registry.collect() for s in family.samples for value in s.labels.values()}


def steps(metrics: Metrics, pool: str) -> float:
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "orchestrator_dispatch_steps_total" and s.labels["pool"] == pool
    )


async def flood(bus: Bus, topic: Topic[Any], make: Callable[[str], BaseModel], pools: list[str]) -> None:
    for pool in pools:
        await bus.publish(topic.at(pool), make(pool))


async def test_wakes_for_made_up_pools_make_no_step_and_no_series(settings: Settings, store: Store, bus: Bus) -> None:
    await factories.pool(store, REAL)  # in Postgres only: the dispatcher learns of it on its first wake
    metrics = Metrics()
    dispatch = Dispatch(settings.dispatch, settings.timings, store, bus, metrics=metrics)
    await dispatch.start()
    try:
        s = bus.subjects
        wakes: list[tuple[Topic[Any], Callable[[str], BaseModel]]] = [
            (s.jobs_queued, lambda pool: JobsQueued(pool=pool, n=1)),
            (s.slot_available, lambda pool: SlotAvailable(pool=pool, free=1)),
            (s.pool_updated, lambda pool: PoolUpdated(pool=pool, config=PoolConfig())),
        ]
        for n, (topic, make) in enumerate(wakes, start=1):
            # The real pool's wake comes last on the same subscription, handled in order: once
            # its step is counted, every made-up wake before it has been handled.
            await flood(bus, topic, make, [*MADE_UP, REAL])

            async def real_stepped(n: int = n) -> bool:
                return steps(metrics, REAL) == n

            await eventually(real_stepped, timeout=60, what=f"the real pool's wake on {topic.relative}")
        assert not label_values(metrics) & set(MADE_UP)
    finally:
        await dispatch.stop()


async def test_capacity_news_of_made_up_pools_is_not_kept_and_a_deleted_pools_is_forgotten(
    front: Runtime, http: aiohttp.ClientSession, store: Store, bus: Bus
) -> None:
    await factories.pool(store, REAL)
    job = await submit(http, pool=REAL, payload={"command": ["true"]})
    why = front.services["api"].why  # type: ignore[attr-defined]
    topic = bus.subjects.capacity_unknown
    await flood(bus, topic, lambda pool: CapacityUnknown(pool=pool, reason="made up"), MADE_UP)
    await bus.publish(topic.at(REAL), CapacityUnknown(pool=REAL, reason="Postgres unreachable"))

    async def real_heard() -> dict[str, Any] | None:  # after every made-up one: the same subscription
        status, body = await call(http, "GET", f"/v1/jobs/{job['id']}")
        assert status == 200
        held = [c for c in body["blocked_by"]["constraints"] if c["reason"] == "capacity_unknown"]
        return held[0] if held else None

    held = await eventually(real_heard, what="the real pool's capacity news")
    assert held["numbers"] == {"why": "Postgres unreachable"}  # it still answers for a real pool
    assert [pool for pool in MADE_UP if why.capacity_unknown(pool) is not None] == []

    scraped = front.services["api"].metrics  # type: ignore[attr-defined]
    assert REAL in label_values(scraped)  # admitted{pool="real"}
    assert not label_values(scraped) & set(MADE_UP)

    # Deleted: its news and its series go, at the next read of the pools.
    assert (await call(http, "DELETE", f"/v1/jobs/{job['id']}"))[0] in (200, 202)
    async with http.delete(f"/v1/pools/{REAL}") as resp:
        assert resp.status == 200, await resp.text()
    assert front.known_pools is not None
    await front.known_pools.refresh()
    assert why.capacity_unknown(REAL) is None
    assert REAL not in label_values(scraped)
