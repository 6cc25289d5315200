"""The claim step against real Postgres: the cap holds, matching skips what no free runner can
take without scanning it (seed 004), priority then round-robin across tenants, paused pools."""

from __future__ import annotations

from orchestrator.settings import Settings
from orchestrator.store import Store
from tests import factories
from tests.plans import claim_plans, claim_rows_read, relations_read, rows_made, rows_read


async def test_budget_is_the_lesser_of_cap_and_free_slots(store: Store) -> None:
    await factories.pool(store, max_concurrent=3)
    await factories.runner(store, "r1", slots=2)
    await factories.runner(store, "r2", slots=2)
    await factories.queue(store, 10)
    step = await store.transitions.claim("default", 100)
    assert step.status == "dispatched" and len(step.assignments) == 3
    assert (await store.transitions.claim("default", 100)).status == "at_capacity"
    await factories.finish(store, step.assignments[:1])
    again = await store.transitions.claim("default", 100)
    assert len(again.assignments) == 1
    per_runner: dict[str, int] = {}
    for a in step.assignments[1:] + again.assignments:  # what is held now
        per_runner[a["runner_id"]] = per_runner.get(a["runner_id"], 0) + 1
    assert all(n <= 2 for n in per_runner.values())


async def test_no_runner_no_job_paused_unknown(store: Store) -> None:
    await factories.pool(store)
    assert (await store.transitions.claim("default", 10)).status == "no_job"  # nothing queued, no runner
    await factories.queue(store, 1)
    assert (await store.transitions.claim("default", 10)).status == "no_runner"
    await factories.pool(store, paused=True)
    assert (await store.transitions.claim("default", 10)).status == "paused"
    assert (await store.transitions.claim("nowhere", 10)).status == "unknown_pool"


async def test_a_step_with_nothing_queued_reads_no_runner_or_shape(store: Store) -> None:
    """Most wakes under light load come after a job ended, with none waiting: such a step stops
    at the pool's row, before the runners' free slots, the lanes and the keys are read."""
    await factories.pool(store)
    for i in range(20):
        await factories.runner(store, f"r{i}")
    [job] = await factories.queue(store, 1)
    assert {"runners", "job_shapes"} <= relations_read(await claim_plans(store, "default"))
    await store.transitions.cancel(job)
    read = relations_read(await claim_plans(store, "default"))
    assert read.isdisjoint({"runners", "job_shapes"}), f"a step with nothing queued read {sorted(read)}"
    assert (await store.transitions.claim("default", 10)).status == "no_job"


async def test_runnable_job_is_found_without_scanning_unrunnable_ones(store: Store) -> None:
    await factories.pool(store, labels=["linux", "gpu"])
    await factories.runner(store, "cpu-only", labels=["linux"])
    # 2,000 jobs no free runner can take, queued ahead of the one it can.
    for _ in range(2):
        await factories.queue(store, 1000, labels=["gpu"], priority=5)
    (wanted,) = await factories.queue(store, 1, labels=["linux"])
    # The claim's statements touch only the matching shape's index range, whatever waits elsewhere.
    scanned = await claim_rows_read(store, "default")
    assert 1 <= scanned <= 10, f"the claim read {scanned} index rows"
    step = await store.transitions.claim("default", 10)
    assert [a["id"] for a in step.assignments] == [wanted]


async def test_the_shapes_a_claim_reads_do_not_grow_with_unrunnable_ones_beside_many_small_pools(
    store: Store,
) -> None:
    """Seed 004 among many pools: 5,000 more shapes of jobs no runner can take add nothing to what
    a step reads. A plan made without the pool's name (as a plan made once per session is) weighs
    `pool = $1` at the average pool's share of the shapes: beside 2,000 small pools, reading the
    pool's shapes then looked cheaper than looking its runners' labels up, and a step read them all."""
    for i in range(2000):
        await factories.pool(store, f"small-{i}")
        await factories.queue(store, 1, pool=f"small-{i}")
    await factories.pool(store, "big", labels=["sim", "gpu"])
    await factories.runner(store, "r1", "big", labels=["sim"])
    (wanted,) = await factories.queue(store, 1, pool="big", labels=["sim"])
    read = []
    for burst in range(2):
        tenants = [f"t{burst}-{i}" for i in range(5000)]
        await factories.bulk_queue(store, 5000, pool="big", labels=["gpu"], tenants=tenants)
        async with store.connection() as conn:
            await conn.execute("ANALYZE jobs, job_shapes")
        read.append(rows_read(await claim_plans(store, "big"), "job_shapes"))
    assert read[1] == read[0], f"the claim read {read[0]} shapes beside 5,000 unrunnable ones, {read[1]} beside 10,000"
    step = await store.transitions.claim("big", 10)
    assert [a["id"] for a in step.assignments] == [wanted]


async def test_priority_first_then_round_robin_across_tenants(store: Store) -> None:
    await factories.pool(store, max_concurrent=1)
    await factories.runner(store, "r1")
    flood = await factories.queue(store, 5, tenant="a")
    (other,) = await factories.queue(store, 1, tenant="b")
    (urgent,) = await factories.queue(store, 1, tenant="a", priority=10)
    order = []
    for _ in range(4):
        step = await store.transitions.claim("default", 10)
        order.append(step.assignments[0]["id"])
        await factories.finish(store, step.assignments)
    # urgent first; then tenant b gets its turn before tenant a's flood continues.
    assert order[0] == urgent
    assert order[1:].count(other) == 1
    assert order[1:3] in ([flood[0], other], [other, flood[0]])
    assert order[3] == flood[1]


async def test_a_step_numbers_no_more_slots_than_it_can_fill(settings: Settings) -> None:
    """200 runners of 10,000 free slots each: a step hands its jobs to the freest runners, and
    costs what its budget is, not what the fleet's 2,000,000 free slots are (numbering every one
    of them took a step 0.7-1 s for 1,000,000 slots; here under a 0.5 s statement timeout)."""
    store = Store(settings.database_url or "", max_size=2, statement_timeout_s=0.5)
    await store.connect()
    try:
        await factories.pool(store, "big", max_concurrent=-1)
        for i in range(200):
            await factories.runner(store, f"r{i:03}", "big", slots=10_000)
        await factories.queue(store, 300, pool="big")
        step = await store.transitions.claim("big", 256)
        assert (step.status, len(step.assignments)) == ("dispatched", 256)
        per_runner: dict[str, int] = {}
        for a in step.assignments:
            per_runner[a["runner_id"]] = per_runner.get(a["runner_id"], 0) + 1
        # Equally free: every runner took one before any took a second.
        assert len(per_runner) == 200 and set(per_runner.values()) == {1, 2}
    finally:
        await store.close()


async def test_a_step_numbers_no_more_slots_of_a_runner_than_the_jobs_it_planned(store: Store) -> None:
    """One job queued for 8 runners of 32 free slots: the step numbers one slot of each runner
    (its freest), not as many as its budget (a step of limit 10 numbered and sorted 80)."""
    await factories.pool(store)
    for i in range(8):
        await factories.runner(store, f"r{i}", slots=32)
    await factories.queue(store, 1)
    assert rows_made(await claim_plans(store, "default"), "generate_series") == 8
    step = await store.transitions.claim("default", 10)
    # Equally free: the runner ranked first (the oldest).
    assert [(a["runner_id"], step.status) for a in step.assignments] == [("r0", "dispatched")]
