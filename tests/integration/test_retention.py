"""Retention against real Postgres (orchestrator/retention.py): what the pruner deletes and when,
in batches, and what it never deletes: a live job however old, a pool's leader, a runner holding
a job, an active runner, and the shape of a job being admitted.

Ages are judged at a `now` the test passes (River's `coalesce($now, now())`), so a job that ended
a second ago is "older than the retention" without waiting for it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp

from app.runtime import Runtime
from orchestrator.metrics import Metrics
from orchestrator.retention import Pruner
from orchestrator.settings import CapacitySettings, Retention, Settings
from orchestrator.store import End, Rejection, Start, Store
from schemas.jobs import JobState
from tests import factories
from tests.support import call, eventually

RETENTION_S = 3600.0
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


def pruner(store: Store, batch: int = 500) -> Pruner:
    return Pruner(Retention(retention_s=RETENTION_S), store, batch=batch, metrics=Metrics())


def after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def rows(store: Store, sql: str, *args: Any) -> list[Any]:
    async with store.connection() as conn:
        return [r[0] for r in await conn.fetch(sql, *args)]


async def jobs_by_state(store: Store) -> dict[UUID, str]:
    async with store.connection() as conn:
        return {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM jobs")}


async def queue(store: Store, n: int, pool: str = "default", **fields: Any) -> list[UUID]:
    """Jobs that run a command (not reservations, which expire when nobody takes them)."""
    return await factories.queue(store, n, pool, payload={"command": ["true"]}, **fields)


async def run(store: Store, runner_id: str, assignment: dict[str, Any]) -> Start:
    start = Start(assignment["id"], runner_id, assignment["attempt"] + 1)
    assert await store.transitions.start_many([start])
    return start


async def test_jobs_that_ended_go_after_the_retention_and_live_ones_never(store: Store) -> None:
    await factories.pool(store, max_concurrent=-1)
    await factories.runner(store, "r1", slots=4)
    # Four claimed: one stays assigned, three start (one stays running, one succeeds, one fails).
    claimed_ids = await queue(store, 4)
    step = await store.transitions.claim("default", 4)
    assert {a["id"] for a in step.assignments} == set(claimed_ids)
    assigned, running, succeeded, failed = step.assignments
    for a, state in ((succeeded, JobState.succeeded), (failed, JobState.failed)):
        s = await run(store, "r1", a)
        assert await store.transitions.finish_many([End(*s, state, 0 if state == JobState.succeeded else 1)])
    await run(store, "r1", running)
    # Ended in the queue: cancelled, expired (its client stopped polling), and one timed out running.
    [cancelled] = await queue(store, 1)
    assert (await store.transitions.cancel(cancelled)).outcome == "cancelled"
    [abandoned] = await queue(store, 1, abandon_after_s=1)
    assert [j.id for j in await store.transitions.expire_abandoned(now=after(60))] == [abandoned]
    await factories.runner(store, "r2", slots=1)
    [slow] = await queue(store, 1, timeout_s=1)
    [slow_claim] = (await store.transitions.claim("default", 1)).assignments
    await run(store, slow_claim["runner_id"], slow_claim)
    assert [j.id for j in await store.transitions.time_out(0, now=after(60))] == [slow]
    queued = await queue(store, 2)
    before = await jobs_by_state(store)
    assert set(before.values()) == TERMINAL | {"queued", "assigned", "running"}

    # Within the retention (ended under an hour before `now`): nothing goes.
    assert (await pruner(store).prune(now=after(RETENTION_S / 2))).rows["jobs"] == 0
    assert await jobs_by_state(store) == before

    # Past it, in batches of 2: every job that ended, and no other, however old it is.
    p = pruner(store, batch=2)
    pruned = await p.prune(now=after(RETENTION_S + 120))
    left = await jobs_by_state(store)
    assert left == {assigned["id"]: "assigned", running["id"]: "running", queued[0]: "queued", queued[1]: "queued"}
    assert pruned.rows["jobs"] == 5 == len(before) - len(left)
    assert p.metrics.count("orchestrator_rows_pruned", table="jobs") == 5
    # The live jobs carry on: the running one ends as its runner reports.
    s = Start(running["id"], "r1", running["attempt"] + 1)
    assert await store.transitions.finish_many([End(*s, JobState.succeeded, 0)])


async def test_a_key_reused_after_the_retention_admits_a_new_job(store: Store, http: aiohttp.ClientSession) -> None:
    await call(http, "PUT", "/v1/pools/default", json={})
    spec = {"pool": "default", "key": "nightly-2026-11-30", "payload": {"command": ["true"]}}
    status, first = await call(http, "POST", "/v1/jobs", json=spec)
    assert status == 201
    assert (await call(http, "DELETE", f"/v1/jobs/{first['id']}"))[0] == 200
    status, again = await call(http, "POST", "/v1/jobs", json=spec)
    assert (status, again["id"]) == (200, first["id"])  # within the retention: the same job
    await pruner(store).prune(now=after(RETENTION_S + 60))
    assert (await call(http, "GET", f"/v1/jobs/{first['id']}"))[0] == 404
    status, new = await call(http, "POST", "/v1/jobs", json=spec)
    assert status == 201 and new["id"] != first["id"] and new["state"] == "queued"


async def test_rejections_go_after_the_retention_in_batches(store: Store) -> None:
    async with store.transitions.admission([], []) as tx:
        await tx.record([Rejection("malformed", f"bad {i}", body="{") for i in range(25)])
    p = pruner(store, batch=10)
    assert (await p.prune(now=after(RETENTION_S / 2))).rows["rejections"] == 0
    pruned = await p.prune(now=after(RETENTION_S + 60))
    assert pruned.rows["rejections"] == 25
    assert pruned.statements == 3 + 2  # 10 + 10 + 5 rejections; one each for workers and runners (no pool)
    assert await rows(store, "SELECT id FROM rejections") == []
    assert p.metrics.count("orchestrator_rows_pruned", table="rejections") == 25


async def test_runners_and_workers_gone_for_good_go_but_a_leader_a_busy_and_an_active_runner_stay(
    store: Store,
) -> None:
    await factories.pool(store)
    await factories.pool(store, "lead", mode="leader")
    # Lost: silent past the TTL (judged a second from now, so only this one is).
    await factories.runner(store, "lost")
    lost, _ = await store.transitions.mark_runners_lost(0, now=after(1))
    assert [r["id"] for r in lost] == ["lost"]
    # Draining and still running a job (the only active runner when it was claimed).
    await factories.runner(store, "busy")
    await queue(store, 1)
    [claimed] = (await store.transitions.claim("default", 1)).assignments
    await run(store, "busy", claimed)
    assert await store.runner_drain("busy") is not None
    # Drained and idle.
    await factories.runner(store, "drained")
    assert await store.runner_drain("drained") is not None
    # A leader-mode pool's leader, drained but not re-elected yet: the pool row still names it.
    await factories.runner(store, "leader", pool="lead")
    assert [c.leader for c in await store.pool_elect_leader("lead")] == ["leader"]
    assert await store.runner_drain("leader") is not None
    await factories.runner(store, "active")
    # Worker records: one never registered, one of the lost runner, one of an active runner.
    for worker in ("never-registered", "lost", "active"):
        assert await store.worker_reserve("default", worker, "prov-1", 0, 60) is not None

    p = pruner(store)
    young = await p.prune(now=after(RETENTION_S / 2))
    assert young.rows["runners"] == young.rows["workers"] == 0
    pruned = await p.prune(now=after(RETENTION_S + 60))
    assert sorted(await rows(store, "SELECT id FROM runners")) == ["active", "busy", "leader"]
    assert await rows(store, "SELECT id FROM workers") == ["active"]
    assert (pruned.rows["runners"], pruned.rows["workers"]) == (2, 2)
    # A pruned runner that comes back registers anew.
    await factories.runner(store, "lost")
    assert (await store.runner_get("lost")).state == "active"  # type: ignore[union-attr]


async def test_empty_shapes_go_at_the_next_pass_and_live_ones_stay(store: Store) -> None:
    """A shape per tenant: 10,000 tenants' jobs end, and their shapes go at the next pass (not a
    retention later: the claim visits shapes), while the jobs themselves stay for the retention."""
    await factories.pool(store, max_concurrent=-1, max_active=-1)
    await factories.bulk_queue(store, 10_000, tenants=[f"tenant-{i}" for i in range(10_000)])
    async with store.transitions.pool_change("default") as tx:
        assert len(await tx.fail_unsatisfiable([], None, "the test ended them")) == 10_000
    await factories.runner(store, "r1", slots=1)
    [held] = await queue(store, 1, tenant="running")
    [claimed] = (await store.transitions.claim("default", 1)).assignments
    assert claimed["id"] == held
    await run(store, "r1", claimed)
    [waiting] = await queue(store, 1, tenant="waiting")
    live_shapes = await rows(store, "SELECT shape_id FROM jobs WHERE id = ANY($1::uuid[])", [held, waiting])

    pruned = await pruner(store).prune()  # now: the jobs ended a moment ago
    assert pruned.rows["job_shapes"] == 10_000 and pruned.rows["jobs"] == 0
    assert sorted(await rows(store, "SELECT id FROM job_shapes")) == sorted(live_shapes)
    assert len(await jobs_by_state(store)) == 10_002
    # The waiting job is still found: it runs once the slot frees.
    assert await store.transitions.finish_many([End(held, "r1", 1, JobState.succeeded, 0)])
    [next_claim] = (await store.transitions.claim("default", 1)).assignments
    assert next_claim["id"] == waiting


async def test_a_job_admitted_after_its_shape_was_pruned_is_matched(store: Store) -> None:
    """Admission remembers shape ids; a pruning makes it look them up again (the pool's shape
    generation), or the next job of that shape would name a deleted shape and never be claimed."""
    await factories.pool(store)
    await factories.runner(store, "r1")
    [first] = await queue(store, 1, tenant="acme")
    [old_shape] = await rows(store, "SELECT shape_id FROM jobs WHERE id = $1", first)
    await store.transitions.cancel(first)
    assert (await pruner(store).prune()).rows["job_shapes"] == 1
    [second] = await queue(store, 1, tenant="acme")  # the same store: the same remembered ids
    [shape] = await rows(store, "SELECT shape_id FROM jobs WHERE id = $1", second)
    assert shape != old_shape
    assert await rows(store, "SELECT id FROM job_shapes") == [shape]
    assert [a["id"] for a in (await store.transitions.claim("default", 1)).assignments] == [second]


async def test_pruning_waits_for_an_admission_between_its_shape_and_its_insert(store: Store) -> None:
    """The race: admission has looked the shape up (it exists, empty) and not inserted its job yet
    when the pruner comes. The pruner waits on the pool's admission lock, and then finds the shape
    in use: it stays, and the job is matched."""
    await factories.pool(store)
    await factories.runner(store, "r1")
    [ended] = await queue(store, 1, tenant="acme")
    await store.transitions.cancel(ended)  # the shape is empty now
    [empty_shape] = await rows(store, "SELECT shape_id FROM jobs WHERE id = $1", ended)
    job = factories.job("default", tenant="acme", payload={"command": ["true"]})
    p = pruner(store)
    async with store.transitions.admission(["default"], [job.key]) as tx:
        assert await tx.shape_id(job) == empty_shape
        pruning = asyncio.create_task(p.prune())

        async def pruner_waits_for_the_lock() -> bool:
            waiting = await rows(
                store,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            )
            return waiting == [1]

        await eventually(pruner_waits_for_the_lock, what="the pruner to wait for the pool's admission lock")
        assert not pruning.done()
        await tx.insert([job])
    pruned = await pruning
    assert pruned.rows["job_shapes"] == 0
    assert await rows(store, "SELECT id FROM job_shapes") == [empty_shape]
    assert [a["id"] for a in (await store.transitions.claim("default", 1)).assignments] == [job.id]


async def test_capacity_runs_the_pruner_on_its_interval(settings: Settings, store: Store) -> None:
    settings.retention_s = 0.5
    settings.capacity = CapacitySettings(prune_interval_s=0.2)
    runtime = Runtime(settings, ["capacity"], migrate=True)
    await runtime.start()
    try:
        await factories.pool(store)
        [job] = await queue(store, 1)
        await store.transitions.cancel(job)

        async def gone() -> bool:
            return await store.job_get(job) is None

        await eventually(gone, what="capacity's pruner to delete the cancelled job")
        assert runtime.metrics.count("orchestrator_rows_pruned", table="jobs") == 1
        assert runtime.metrics.count("orchestrator_rows_pruned", table="job_shapes") == 1
    finally:
        await runtime.stop()


async def test_the_search_for_empty_shapes_probes_each_shape_on_statistics_older_than_a_burst(
    settings: Settings,
) -> None:
    """Postgres plans from the statistics of its last ANALYZE until autovacuum analyzes again (a
    minute or so after a burst). Planned from statistics that knew a few shapes, the search once
    read the whole queued-jobs index for every shape: a pass over 100,000 new shapes ran into the
    30 s statement timeout, both cores busy meanwhile. Here with 20,000 and a 2 s timeout."""
    store = Store(settings.database_url or "", max_size=2, statement_timeout_s=2.0, analyze_bursts=False)
    await store.connect()
    try:
        await factories.statistics_of_the_past(store)
        await factories.pool(store, "burst", max_concurrent=-1)
        n = 20_000
        await factories.bulk_queue(store, n, pool="burst", tenants=[f"t{i}" for i in range(n)])
        assert await store.prune_shapes("burst", 500) == 0  # every shape has a queued job: none goes
        assert await rows(store, "SELECT count(*) FROM job_shapes WHERE pool = 'burst'") == [n]
    finally:
        await store.close()
