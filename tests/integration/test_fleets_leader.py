"""Leader-mode pools and taints (seed 002), end to end on real NATS and Postgres: a local runner
joins cloud runners, tainting the cloud runners hands it the leadership, restarting it keeps
jobs off them (no healthy runner: no leader, jobs wait, and run once it is back); the leader is
in GET /v1/pools; a pool put into leader mode elects at once; a tainted runner takes only jobs
that tolerate its taints."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.store import Store
from schemas.jobs import JobSpec
from services.runner import Runner
from tests import factories
from tests.support import Listener, agent, eventually

POOL = "fleet"


@pytest.fixture
async def http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


async def run_job(system: Runtime, store: Store, **spec: Any) -> dict[str, Any]:
    """Submit a job to POOL and wait until it has succeeded; the job row."""
    outcome = await system.services["admission"].admit(  # type: ignore[attr-defined]
        JobSpec(pool=POOL, payload={"command": ["true"]}, **spec)
    )
    return await succeeded(store, outcome.job.id)


async def succeeded(store: Store, job_id: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        row = await store.job_get(job_id)
        return row if row and row["state"] == "succeeded" else None

    return await eventually(probe, timeout=15, what=f"job {job_id} to succeed")


async def test_tainting_cloud_runners_hands_leadership_to_the_local_runner_and_restarts_keep_jobs_off_them(
    system: Runtime, store: Store, bus: Bus, http: aiohttp.ClientSession
) -> None:
    await factories.pool(store, POOL, mode="leader", labels=["linux"])

    def runner(runner_id: str) -> Runner:
        return agent(system.settings, bus, runner_id=runner_id, pool=POOL, labels=["linux"], slots=2)

    cloud = [runner("cloud-1"), runner("cloud-2")]
    laptop = runner("laptop")
    async with Listener(bus, bus.subjects.pool_leader_changed.at(POOL)) as leaders:
        try:
            for r in [*cloud, laptop]:  # started in this order: cloud-1 is the oldest
                await r.start()
            await leaders.wait(lambda e: e.leader == "cloud-1")
            assert (await run_job(system, store))["runner_id"] == "cloud-1"  # only the leader takes work

            for r in cloud:
                async with http.put(f"/v1/runners/{r.runner_id}/taints", json={"taints": ["cloud"]}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["taints"] == ["cloud"]
            await leaders.wait(lambda e: e.leader == "laptop")
            async with http.get("/v1/pools") as resp:
                pools = {p["name"]: p for p in (await resp.json())["pools"]}
            assert pools[POOL]["leader_runner_id"] == "laptop"
            assert (await run_job(system, store))["runner_id"] == "laptop"

            # The laptop restarts: while it is away no runner is healthy and untainted, so there is
            # no leader and jobs wait rather than go to the cloud.
            await laptop.stop()
            await leaders.wait(lambda e: e.previous == "laptop" and e.leader is None)
            waiting = await system.services["admission"].admit(  # type: ignore[attr-defined]
                JobSpec(pool=POOL, payload={"command": ["true"]})
            )
            assert await system.services["dispatch"].step(POOL) == "no_runner"  # type: ignore[attr-defined]
            assert (await store.job_get(waiting.job.id))["state"] == "queued"  # type: ignore[index]

            laptop = runner("laptop")
            await laptop.start()  # the same id re-registers, is elected, and the waiting job runs
            assert (await succeeded(store, waiting.job.id))["runner_id"] == "laptop"
            # A cloud runner that re-registers keeps the operator's taint, so never leads again.
            await cloud[0].stop()
            cloud[0] = runner("cloud-1")
            await cloud[0].start()
            rows = {r["id"]: r for r in await store.runner_list()}
            assert rows["cloud-1"]["taints"] == ["cloud"]
            assert (await store.pool_get(POOL))["leader_runner_id"] == "laptop"  # type: ignore[index]
            await leaders.wait(lambda e: e.leader == "laptop" and e.previous is None)
            assert (await run_job(system, store))["runner_id"] == "laptop"
            # (cloud-2 may lead briefly between the two taints.)
            seen = [e.leader for e in leaders.events]
            # The news left in commit order: each change starts from the leader the one before named.
            for before, after in itertools.pairwise(leaders.events):
                assert after.previous == before.leader, leaders.events
            assert seen[0] == "cloud-1" and seen[-3:] == ["laptop", None, "laptop"], seen
            # Every job since the taints ran on the laptop: none went to the cloud, not even while it was away.
            ran = [j["runner_id"] for j in reversed(await store.job_list(pool=POOL, state=None, key=None, limit=10))]
            assert ran == ["cloud-1", "laptop", "laptop", "laptop"], ran
        finally:
            for r in [*cloud, laptop]:
                await r.stop()


async def test_an_election_that_waited_for_another_chooses_from_the_runners_that_one_left(store: Store) -> None:
    """Two elections of one pool at once (two taints heard together): the one that waits for the
    other must choose from the runners as the other left them, never from before (it would write
    the leader it saw untainted: a tainted runner)."""
    await factories.pool(store, POOL, mode="leader", labels=["linux"])
    for runner_id in ("cloud-1", "cloud-2", "laptop"):  # registered in this order: cloud-1 is the oldest
        await factories.runner(store, runner_id, POOL, labels=["linux"])
    assert [c.leader for c in await store.pool_elect_leader(POOL)] == ["cloud-1"]
    await store.runner_set_taints("cloud-1", ["cloud"])

    async def waiting_for_a_lock() -> bool:
        async with store.connection() as conn:
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1"
            return await conn.fetchval(waiting, await conn.fetchval("SELECT current_database()")) > 0

    async with store.transaction() as other:  # the other election, not committed yet: cloud-2 tainted too
        await other.execute("UPDATE runners SET taints = '{cloud}' WHERE id = 'cloud-2'")
        await other.execute("UPDATE pools SET leader_runner_id = 'laptop' WHERE name = $1", POOL)
        racing = asyncio.create_task(store.pool_elect_leader(POOL))
        await eventually(waiting_for_a_lock, timeout=10, what="the second election to wait for the first")
    assert await racing == []  # nothing to change: the laptop, the one untainted runner, leads
    assert (await store.pool_get(POOL))["leader_runner_id"] == "laptop"  # type: ignore[index]


async def test_a_tainted_runner_takes_only_jobs_tolerating_its_taints(
    system: Runtime, store: Store, bus: Bus, http: aiohttp.ClientSession
) -> None:
    await factories.pool(store, POOL, labels=["linux"])
    gpu = agent(system.settings, bus, runner_id="gpu", pool=POOL, labels=["linux"], slots=2, taints=["dedicated"])
    await gpu.start()
    try:
        plain = await system.services["admission"].admit(  # type: ignore[attr-defined]
            JobSpec(pool=POOL, payload={"command": ["true"]})
        )
        tolerant = await run_job(system, store, tolerations=["dedicated"])
        assert tolerant["runner_id"] == "gpu" and tolerant["tolerations"] == ["dedicated"]
        assert await system.services["dispatch"].step(POOL) == "no_job"  # type: ignore[attr-defined]
        assert (await store.job_get(plain.job.id))["state"] == "queued"  # type: ignore[index]
        # Untainted, it takes any job again.
        async with http.put("/v1/runners/gpu/taints", json={"taints": []}) as resp:
            assert resp.status == 200
        assert (await succeeded(store, plain.job.id))["runner_id"] == "gpu"
    finally:
        await gpu.stop()


async def test_a_pool_put_into_leader_mode_elects_at_once_and_forgets_its_leader_when_shared_again(
    system: Runtime, store: Store, bus: Bus, http: aiohttp.ClientSession
) -> None:
    await factories.pool(store, POOL, labels=["linux"])
    first = agent(system.settings, bus, runner_id="first", pool=POOL, labels=["linux"], slots=1)
    second = agent(system.settings, bus, runner_id="second", pool=POOL, labels=["linux"], slots=1)
    async with Listener(bus, bus.subjects.pool_leader_changed.at(POOL)) as leaders:
        try:
            for r in (first, second):
                await r.start()
            assert leaders.events == []  # a shared pool has no leader
            async with http.patch(f"/v1/pools/{POOL}", json={"mode": "leader"}) as resp:
                assert resp.status == 200, await resp.text()
            await leaders.wait(lambda e: e.leader == "first")
            async with http.get(f"/v1/pools/{POOL}") as resp:
                assert (await resp.json())["leader_runner_id"] == "first"
            async with http.patch(f"/v1/pools/{POOL}", json={"mode": "shared"}) as resp:
                assert resp.status == 200
            await leaders.wait(lambda e: e.previous == "first" and e.leader is None)
        finally:
            for r in (first, second):
                await r.stop()


async def test_taints_endpoint_refuses_unknown_runners_and_bad_bodies(http: aiohttp.ClientSession) -> None:
    async with http.put("/v1/runners/nobody/taints", json={"taints": ["x"]}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["field"] == "id"
    async with http.put("/v1/runners/nobody/taints", json={"taints": ["no spaces"]}) as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["field"] == "taints.0"
    async with http.put("/v1/runners/nobody/taints", json={"taint": []}) as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["field"] in ("taints", "taint")
    async with http.put("/v1/runners/nobody/taints", data=b"{") as resp:
        assert resp.status == 400
