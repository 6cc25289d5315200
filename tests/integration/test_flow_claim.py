"""Flow control in the claim, against real Postgres: a concurrency key's limit within one claim,
across runner groups and pools, and between two claims racing for the key (the second waits for
the first's lock, then counts what it claimed); a lane held back passed over without reading its
jobs (seed 004); rate limits' starts (GCRA, evenly spread, with a burst) and a pool's
max_starts_per_s, each step saying when the pool is due again."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.queries import Q
from tests import factories
from tests.plans import claim_rows_read
from tests.support import eventually


def ids(step: Any) -> list[Any]:
    return [a["id"] for a in step.assignments]


async def test_a_key_s_limit_holds_within_a_claim_and_across_pools(store: Store) -> None:
    for pool in ("a", "b"):
        await factories.pool(store, pool)
        await factories.runner(store, f"r-{pool}", pool, slots=10)
    in_a = await factories.queue(store, 5, "a", concurrency_key="deploy/prod", concurrency_limit=2)
    in_b = await factories.queue(store, 3, "b", concurrency_key="deploy/prod", concurrency_limit=2)
    first = await store.transitions.claim("a", 100)
    assert ids(first) == in_a[:2]  # two at once, oldest first, in one statement
    held = await store.transitions.claim("b", 100)
    assert (held.status, ids(held), held.held_by_key) == ("no_job", [], 1)  # the key is the same in every pool
    await factories.finish(store, first.assignments[:1])
    assert ids(await store.transitions.claim("b", 100)) == in_b[:1]
    assert ids(await store.transitions.claim("a", 100)) == []


async def test_two_runner_groups_of_one_step_count_against_each_other(store: Store) -> None:
    await factories.pool(store, labels=["x", "y"])
    await factories.runner(store, "rx", slots=2, labels=["x"])
    await factories.runner(store, "ry", slots=2, labels=["y"])
    await factories.queue(store, 2, labels=["x"], concurrency_key="k")
    await factories.queue(store, 2, labels=["y"], concurrency_key="k")
    step = await store.transitions.claim("default", 100)
    assert len(step.assignments) == 1 and step.held_by_key == 2  # each group's lane, one job in all


async def test_a_step_claims_a_keyed_group_then_a_plain_one_each_by_its_own_rules(store: Store) -> None:
    """Of one step's runner groups, the first takes a key's lanes, the next lanes of no key: the
    key holds the first to its limit, and the next takes all it has slots for, as a plain claim."""
    await factories.pool(store, labels=["x", "y"])
    await factories.runner(store, "rx", slots=3, labels=["x"])
    await factories.runner(store, "ry", slots=3, labels=["y"])
    keyed = await factories.queue(store, 3, labels=["x"], concurrency_key="k", concurrency_limit=1)
    plain = await factories.queue(store, 3, labels=["y"])
    step = await store.transitions.claim("default", 100)
    taken = {a["id"]: a["runner_id"] for a in step.assignments}
    assert taken == {keyed[0]: "rx", **dict.fromkeys(plain, "ry")}
    assert (step.status, step.held_by_key) == ("dispatched", 1)


async def test_the_least_limit_of_a_key_s_live_jobs_binds(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=10)
    await factories.queue(store, 3, concurrency_key="k", concurrency_limit=3)
    await factories.queue(store, 1, concurrency_key="k", concurrency_limit=1)
    # The job that allows one at a time is live: none runs beside another of its key.
    assert len((await store.transitions.claim("default", 100)).assignments) == 1


async def test_a_claim_of_a_key_waits_for_the_claim_holding_it_then_counts_its_job(store: Store) -> None:
    for pool in ("a", "b"):
        await factories.pool(store, pool)
        await factories.runner(store, f"r-{pool}", pool, slots=4)
        await factories.queue(store, 2, pool, concurrency_key="k")
    async with store.connection() as first:
        tx = first.transaction()
        await tx.start()
        rows = await first.fetch(Q["job_claim_step"], "a", 10, None, None)
        assert [r["status"] for r in rows] == ["dispatched", "dispatched"]  # one job, then the summary
        # Pool b's claim is not held up by pool a's row: only by the key, until the first commits.
        second = asyncio.create_task(store.transitions.claim("b", 10))

        async def waits_for_the_key() -> bool:
            if second.done():  # it did not wait: it claimed what it counted, without pool a's claim
                return True
            async with store.connection() as conn:
                return bool(
                    await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                )

        await eventually(waits_for_the_key, what="pool b's claim to wait for the key's lock")
        assert not second.done(), f"pool b claimed {ids(second.result())} beside pool a's uncommitted claim of the key"
        await tx.commit()
    step = await second
    # It counted the job pool a claimed (committed before its count began): a second would exceed 1.
    assert (step.status, ids(step), step.held_by_key) == ("no_job", [], 1)


async def test_a_lane_held_back_is_passed_over_without_reading_its_jobs(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=3)
    await store.rate_limit_put("hourly", 1, 3600, 1)
    for fields in ({"concurrency_key": "k"}, {"rate_limit_key": "hourly"}):
        await factories.queue(store, 1, **fields)
        assert len((await store.transitions.claim("default", 10)).assignments) == 1  # the key's room, the hour's start
        await factories.queue(store, 1000, **fields)  # then 2,000 jobs held back, ahead of...
    (wanted,) = await factories.queue(store, 1)  # ... a job with the same labels and tenant, under neither
    scanned = await claim_rows_read(store, "default")
    # The plan reads the free lane's one job; the step's summary looks once into each lane held back.
    assert 1 <= scanned <= 10, f"the claim read {scanned} index rows"
    step = await store.transitions.claim("default", 10)
    assert (ids(step), step.held_by_key, step.held_by_rate) == ([wanted], 1, 1)


async def test_a_rate_limit_spreads_starts_and_says_when_the_next_is_due(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=10)
    await store.rate_limit_put("api", 2, 1.0, 1)  # one start per 0.5 s
    await factories.queue(store, 3, rate_limit_key="api")
    first = await store.transitions.claim("default", 100)
    assert len(first.assignments) == 1 and first.held_by_rate == 1
    assert first.due_in_s is not None and 0.4 < first.due_in_s <= 0.5
    again = await store.transitions.claim("default", 100)
    assert (again.status, ids(again)) == ("no_job", []) and again.due_in_s is not None and again.due_in_s <= 0.5
    limit = await store.rate_limit_get("api")
    assert limit is not None and limit.starts_left == 0 and limit.next_start_at is not None


async def test_a_burst_starts_at_once_then_one_per_interval(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=10)
    await store.rate_limit_put("bursty", 3, 3.0, 3)  # three at once, then one a second
    await factories.queue(store, 5, rate_limit_key="bursty")
    step = await store.transitions.claim("default", 100)
    assert len(step.assignments) == 3
    assert step.due_in_s is not None and 0.9 < step.due_in_s <= 1.0


async def test_a_pool_s_max_starts_per_s_throttles_its_steps(store: Store) -> None:
    await factories.pool(store, max_starts_per_s=2.0)
    await factories.runner(store, "r1", slots=10)
    await factories.queue(store, 3)
    step = await store.transitions.claim("default", 100)
    assert len(step.assignments) == 1 and step.due_in_s is not None and 0.4 < step.due_in_s <= 0.5
    throttled = await store.transitions.claim("default", 100)
    assert (throttled.status, ids(throttled)) == ("throttled", [])
    assert throttled.due_in_s is not None and 0 < throttled.due_in_s <= 0.5


async def test_a_changed_rate_limit_keeps_the_starts_made_rescaled(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=10)
    await store.rate_limit_put("k", 1, 3600.0, 1)
    await factories.queue(store, 2, rate_limit_key="k")
    assert len((await store.transitions.claim("default", 10)).assignments) == 1  # the next in an hour
    changed = await store.rate_limit_put("k", 1, 60.0, 1)
    assert not changed.created and changed.next_start_at is not None
    # The hour owed is a minute owed now: the start made still counts, at the new rate.
    step = await store.transitions.claim("default", 10)
    assert step.assignments == [] and step.due_in_s is not None and 59 < step.due_in_s <= 60


async def test_a_step_over_a_burst_of_rate_limited_shapes_probes_each_on_statistics_older_than_it(
    settings: Settings,
) -> None:
    """20,000 tenants' jobs under one rate limit: a lane each. Planned from statistics of before
    the burst (autovacuum analyzes a minute or so later), the step's summary of the lanes held
    back once read the whole queued-jobs index for every lane, and each step of the pool ran into
    the statement timeout (30 s; more than 20 s for 30,000 lanes). Here under a 5 s timeout."""
    store = Store(settings.database_url or "", max_size=2, statement_timeout_s=5.0, analyze_bursts=False)
    await store.connect()
    try:
        await factories.statistics_of_the_past(store)
        await store.rate_limit_put("api", 1_000_000, 1.0, 1000)  # room for both slots at once
        await factories.pool(store, "burst", max_concurrent=-1)
        await factories.runner(store, "r1", "burst", slots=2)
        n = 20_000
        await factories.bulk_queue(store, n, pool="burst", tenants=[f"t{i}" for i in range(n)], rate_limit_key="api")
        step = await store.transitions.claim("burst", 100)
        assert (step.status, len(step.assignments)) == ("dispatched", 2)
    finally:
        await store.close()
