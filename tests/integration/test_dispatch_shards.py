"""Three dispatch instances (leader + dispatch services, each with its own instance id) in one
process over three shards, against real NATS and Postgres: each leads one shard, every pool's
jobs run, and a stopped instance's shard moves to another within the lease TTL and the takeover
delay. Checked from the transition history: never two dispatchers per pool, and every claim made
under a term of its pool's shard. The same with processes, kill -9 and SIGSTOP:
tests/system/test_shard_failover.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.cli import main
from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.leadership import Leaderships
from orchestrator.settings import LeaderSettings, Settings
from orchestrator.store import Store
from schemas.events import JobSubmitted
from services.dispatch import Dispatch
from services.leader import Leader
from services.runner import Runner
from tests import factories, history
from tests.support import agent, call, eventually, record_history

SHARDS = 3
POOLS = {f"pool-{shard}": shard for shard in range(SHARDS)}  # one pool pinned to each shard
LEADER = LeaderSettings(lease_ttl_s=2, lease_renew_s=0.5, takeover_delay_s=0.5)


class Instance:
    """One dispatch instance: what `orchestrator serve dispatch` runs, minus the provisioner."""

    def __init__(self, name: str, settings: Settings, store: Store, bus: Bus) -> None:
        self.name = name
        self.leaderships = Leaderships(SHARDS, name)
        self.leader = Leader(LEADER, store, bus, self.leaderships)
        self.dispatch = Dispatch(settings.dispatch, settings.timings, store, bus, leaderships=self.leaderships)

    async def start(self) -> None:
        await self.leader.start()
        await self.dispatch.start()

    async def stop(self) -> None:
        await self.dispatch.stop()
        await self.leader.stop()

    @property
    def leading(self) -> list[str]:
        return self.leaderships.leading()


class Cluster:
    def __init__(self, runtime: Runtime, instances: list[Instance]) -> None:
        self.runtime = runtime
        self.instances = instances
        assert runtime.store is not None and runtime.bus is not None
        self.store: Store = runtime.store
        self.bus: Bus = runtime.bus
        self._submitted = 0

    def holders(self) -> dict[str, list[str]]:
        """Shard -> the instances that lead it now (by their own account)."""
        found: dict[str, list[str]] = {str(shard): [] for shard in range(SHARDS)}
        for instance in self.instances:
            for shard in instance.leading:
                found[shard].append(instance.name)
        return found

    async def submit(self, pool: str, n: int) -> list[str]:
        keys = []
        for _ in range(n):
            self._submitted += 1
            key = f"job-{self._submitted}"
            spec = JobSubmitted(pool=pool, key=key, payload={"command": ["true"]})
            result = await self.bus.request(self.bus.subjects.submit_request, spec, 10)
            assert result.outcome == "admitted", result
            keys.append(key)
        return keys

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.store.job_list(pool=None, state=None, key=None, limit=1000)

    async def all_succeeded(self) -> list[dict[str, Any]]:
        async def done() -> list[dict[str, Any]] | None:
            jobs = await self.jobs()
            return jobs if len(jobs) == self._submitted and all(j["state"] == "succeeded" for j in jobs) else None

        return await eventually(done, timeout=60, what=f"all {self._submitted} jobs to succeed")

    async def check_history(self) -> None:
        async with self.store.connection() as conn:
            transitions = await history.read(conn)
            terms = await history.read_terms(conn)
        assert history.claims(transitions), "nothing was claimed"
        assert history.interleaved_terms(transitions) == {}  # one dispatcher per pool at a time
        assert history.claims_outside_their_shard(transitions, terms) == []


async def fair_share(cluster: Cluster) -> dict[str, list[str]]:
    async def balanced() -> dict[str, list[str]] | None:
        holders = cluster.holders()
        one_each = all(len(i.leading) == 1 for i in cluster.instances if i.leader.running)
        return holders if one_each and all(len(h) == 1 for h in holders.values()) else None

    return await eventually(balanced, timeout=30, what="each instance to lead one shard")


@pytest.fixture
async def cluster(settings: Settings) -> AsyncIterator[Cluster]:
    runtime = Runtime(settings, ["capacity", "admission"])
    await runtime.start()
    assert runtime.store is not None and runtime.bus is not None
    store, bus = runtime.store, runtime.bus
    await record_history(store)
    instances = [Instance(name, settings, store, bus) for name in ("a", "b", "c")]
    runners: list[Runner] = []
    try:
        # The first instance sets the number of shards; the pools go where they are pinned.
        await instances[0].start()
        for pool, shard in POOLS.items():
            await factories.pool(store, pool, max_concurrent=4, max_active=-1, shard=shard)
        for pool in POOLS:
            runners.append(agent(settings, bus, runner_id=f"r-{pool}", pool=pool, labels=[], slots=4))
        for runner in runners:
            await runner.start()
        for instance in instances[1:]:
            await instance.start()
        yield Cluster(runtime, instances)
    finally:
        for instance in instances:
            await instance.stop()
        for runner in runners:
            await runner.stop()
        await runtime.stop()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Runtime]:
    """The api alone, with no ORCH_DISPATCH_SHARDS of its own: it reads the count from Postgres."""
    runtime = Runtime(settings, ["api"])
    await runtime.start()
    yield runtime
    await runtime.stop()


async def test_get_leader_and_status_list_every_shard_with_its_holder(
    cluster: Cluster, api: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    holders = await fair_share(cluster)
    async with aiohttp.ClientSession(base_url=api.http_url) as http:
        status, body = await call(http, "GET", "/v1/leader")
    assert status == 200, body
    assert [(s["shard"], s["lease"]["holder"], s["holder"], s["pools"]) for s in body["shards"]] == [
        (shard, holder, holder, 1) for shard, [holder] in holders.items()
    ]
    by_name = {i.name: i for i in cluster.instances}
    assert [s["epoch"] for s in body["shards"]] == [by_name[h].leaderships[s].epoch for s, [h] in holders.items()]
    first = body["shards"][0]
    assert {k: body[k] for k in first} == first  # the top level is shard 0's, as before shards

    monkeypatch.setenv("ORCH_URL", api.http_url or "")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["status"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith("dispatchers by shard: " + ", ".join(f"{s} {h}" for s, [h] in holders.items())), line


@pytest.mark.timeout(120)
async def test_three_instances_lead_a_shard_each_and_a_stopped_ones_shard_moves(cluster: Cluster) -> None:
    # The first instance took every shard alone; the others joined and it handed them over.
    holders = await fair_share(cluster)
    assert sorted(h for [h] in holders.values()) == ["a", "b", "c"]
    assert await cluster.store.pool_shards() == {pool: str(shard) for pool, shard in POOLS.items()}

    for pool in POOLS:
        await cluster.submit(pool, 8)
    jobs = await cluster.all_succeeded()
    # Each pool's jobs were claimed under its shard's holder's term.
    by_name = {i.name: i for i in cluster.instances}
    epochs = {shard: by_name[holder].leaderships[shard].epoch for shard, [holder] in holders.items()}
    assert {(j["pool"], j["claim_epoch"]) for j in jobs} == {(p, epochs[str(s)]) for p, s in POOLS.items()}

    # Stop the holder of shard 1: the shard moves to a survivor within the TTL and the delay.
    [gone] = holders["1"]
    stopped = time.monotonic()
    await by_name[gone].stop()

    async def moved() -> list[str] | None:
        return cluster.holders()["1"] or None

    [heir] = await eventually(moved, timeout=LEADER.lease_ttl_s + LEADER.takeover_delay_s + 2, what="shard 1 to move")
    assert heir != gone
    assert time.monotonic() - stopped < LEADER.lease_ttl_s + LEADER.takeover_delay_s
    for pool in POOLS:
        await cluster.submit(pool, 4)
    await cluster.all_succeeded()
    survivors = [i for i in cluster.instances if i.name != gone]
    assert sorted(len(i.leading) for i in survivors) == [1, 2]  # three shards over two instances
    await cluster.check_history()
