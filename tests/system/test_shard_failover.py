"""Three dispatch instances as OS processes (`orchestrator serve dispatch`, ORCH_DISPATCH_SHARDS=3)
against one NATS and one Postgres; capacity, admission and a runner per pool in this process.
They share the shards one each; then one is paused (SIGSTOP) past its lease TTL: its shard moves
to another instance within the TTL and the takeover delay, and once resumed it dispatches
nothing under its old term; then another is killed (kill -9) and its shard moves too. Checked
from the transition history: every job ran exactly once, never two dispatchers per pool, every
claim under a term of its pool's shard, no cap exceeded."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator.bus.lease import read_lease
from orchestrator.settings import Settings
from orchestrator.shards import shard_names
from schemas.events import JobSubmitted
from tests import factories, history
from tests.support import (
    DISPATCH_FAILOVER_ENV,
    Listener,
    agent,
    eventually,
    in_flight_peak,
    process_env,
    record_history,
)

pytestmark = pytest.mark.slow

SHARDS = 3
CAP = 2
TTL_S = 2
TAKEOVER_DELAY_S = 0.5
# A loaded 2-core machine schedules three orchestrator processes, NATS and Postgres late by this much.
SLACK_S = 1.5


class Cluster:
    def __init__(self, runtime: Runtime, procs: list[ServiceProcess], ran_log: Path) -> None:
        self.runtime = runtime
        self.procs = {p.instance_id: p for p in procs}
        self.ran_log = ran_log
        self.store: Any = runtime.store
        self.bus: Any = runtime.bus
        self.lost: Listener
        self.submitted = 0

    async def holders(self) -> dict[str, str | None]:
        """Shard -> the instance holding its lease now (None: vacant)."""
        leases = await asyncio.gather(*(read_lease(self.bus, s) for s in shard_names(SHARDS)))
        return {s: lease.holder if lease else None for s, lease in zip(shard_names(SHARDS), leases, strict=True)}

    async def fair_share(self) -> dict[str, str]:
        async def one_each() -> dict[str, str] | None:
            held = await self.holders()
            owners = [h for h in held.values() if h is not None]
            return held if len(owners) == SHARDS and len(set(owners)) == SHARDS else None  # type: ignore[return-value]

        return await eventually(one_each, timeout=30, what="each instance to lead one shard")

    async def moved(self, shard: str, away_from: str, since: float) -> str:
        """The new holder of `shard`, once it has one; within the TTL and the takeover delay."""

        async def taken() -> str | None:
            holder = (await self.holders())[shard]
            return holder if holder not in (None, away_from) else None

        holder = await eventually(taken, timeout=30, what=f"shard {shard} to move away from {away_from}")
        assert time.monotonic() - since < TTL_S + TAKEOVER_DELAY_S + SLACK_S
        return holder

    async def submit(self, pool: str, n: int) -> None:
        for _ in range(n):
            i = self.submitted
            self.submitted += 1
            spec = JobSubmitted(
                pool=pool,
                key=f"job-{i}",
                payload={"command": ["sh", "-c", f'echo "$JOB" >> {self.ran_log}; sleep 0.05'], "env": {"JOB": str(i)}},
            )
            result = await self.bus.request(self.bus.subjects.submit_request, spec, 10)
            assert result.outcome == "admitted", result

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.store.job_list(pool=None, state=None, key=None, limit=1000)

    async def succeeded(self, at_least: int | None = None) -> bool:
        n = self.submitted if at_least is None else at_least
        return sum(1 for j in await self.jobs() if j["state"] == "succeeded") >= n

    async def all_done(self) -> list[dict[str, Any]]:
        await eventually(self.succeeded, timeout=60, what=f"all {self.submitted} jobs to succeed")
        return await self.jobs()

    async def check(self) -> None:
        jobs = await self.all_done()
        assert all(j["state"] == "succeeded" and j["attempt"] == 1 for j in jobs)  # none lost, none retried
        ran = self.ran_log.read_text().split()
        assert sorted(ran, key=int) == [str(i) for i in range(self.submitted)]  # each ran exactly once
        async with self.store.connection() as conn:
            transitions = await history.read(conn)
            terms = await history.read_terms(conn)
        assert history.interleaved_terms(transitions) == {}  # one dispatcher per pool at a time
        assert history.claims_outside_their_shard(transitions, terms) == []
        for shard in range(SHARDS):
            assert await in_flight_peak(self.store, f"pool-{shard}") <= CAP


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path) -> AsyncIterator[Cluster]:
    runtime = Runtime(settings, ["capacity", "admission"])
    await runtime.start()
    assert runtime.store is not None and runtime.bus is not None
    await record_history(runtime.store)
    await runtime.store.dispatch_shards_set(SHARDS)
    for shard in range(SHARDS):
        await factories.pool(runtime.store, f"pool-{shard}", max_concurrent=CAP, max_active=-1, shard=shard)
    runners = [
        agent(settings, runtime.bus, runner_id=f"r{shard}", pool=f"pool-{shard}", labels=[], slots=CAP)
        for shard in range(SHARDS)
    ]
    env = process_env(
        settings,
        ORCH_DISPATCH_SHARDS=str(SHARDS),
        ORCH_LEADER__LEASE_TTL_S=str(TTL_S),
        ORCH_LEADER__TAKEOVER_DELAY_S=str(TAKEOVER_DELAY_S),
        **DISPATCH_FAILOVER_ENV,
    )
    procs = [ServiceProcess(f"d{i}", ["dispatch"], env, tmp_path / "logs") for i in range(3)]
    cluster = Cluster(runtime, procs, tmp_path / "ran.log")
    try:
        for runner in runners:
            await runner.start()
        async with Listener(runtime.bus, runtime.bus.subjects.leader_lost.any()) as cluster.lost:
            for proc in procs:
                proc.start()
            await asyncio.gather(*(proc.ready() for proc in procs))
            yield cluster
    finally:
        await asyncio.gather(*(proc.close() for proc in procs))
        for runner in runners:
            await runner.stop()
        await runtime.stop()


@pytest.mark.timeout(240)
async def test_shards_move_off_a_paused_and_a_killed_instance(cluster: Cluster) -> None:
    held = await cluster.fair_share()
    for shard in range(SHARDS):
        await cluster.submit(f"pool-{shard}", 6)
    await eventually(lambda: cluster.succeeded(6), timeout=30, what="the drain to be under way")

    # SIGSTOP the holder of shard 1, past its TTL: the shard moves, and its pool is dispatched.
    paused = cluster.procs[held["1"]]
    since = time.monotonic()
    paused.signal(signal.SIGSTOP)
    await cluster.moved("1", away_from=paused.instance_id, since=since)
    await cluster.submit("pool-1", 6)
    await eventually(cluster.succeeded, timeout=30, what="pool-1's jobs to run while its old holder is paused")
    paused.signal(signal.SIGCONT)
    # It notices on its own (its renewal is refused, or its term ran out) and stops dispatching.
    await cluster.lost.wait(lambda e: e.holder == paused.instance_id and e.shard == "1", timeout=30)

    # kill -9 the holder of shard 0 (whoever it is now).
    killed = cluster.procs[(await cluster.fair_share())["0"]]
    since = time.monotonic()
    killed.signal(signal.SIGKILL)
    await cluster.moved("0", away_from=killed.instance_id, since=since)
    for shard in range(SHARDS):
        await cluster.submit(f"pool-{shard}", 4)
    await cluster.check()
    assert await killed.wait_exit() == -signal.SIGKILL
    assert paused.proc is not None and paused.proc.poll() is None  # resumed, and still serving
