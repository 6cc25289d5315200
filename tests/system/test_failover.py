"""Three dispatch instances as separate OS processes (`orchestrator serve dispatch`) against one
NATS and one Postgres; capacity, admission and two runners in this process. Each test drains a
queue through a capped pool and breaks the leader mid-drain: kill -9, SIGSTOP past its TTL, or a
graceful stop. Whatever happens: only one leader dispatches at a time, every job runs exactly
once, none is lost, and the pool's cap is never exceeded."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator.settings import Settings
from schemas.events import JobSubmitted, LeaderElected
from tests import factories
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

CAP = 3
JOBS = 30


class Cluster:
    def __init__(self, settings: Settings, runtime: Runtime, procs: list[ServiceProcess], ran_log: Path) -> None:
        self.settings = settings
        self.runtime = runtime
        self.procs = {p.instance_id: p for p in procs}
        self.ran_log = ran_log
        self.elected: Listener
        self.lost: Listener

    @property
    def store(self) -> Any:
        return self.runtime.store

    @property
    def bus(self) -> Any:
        return self.runtime.bus

    async def leader(self, other_than: str | None = None) -> tuple[ServiceProcess, LeaderElected]:
        event = await self.elected.wait(lambda e: e.holder != other_than, timeout=30)
        return self.procs[event.holder], event

    async def submit(self, n: int) -> None:
        for i in range(n):
            spec = JobSubmitted(
                pool="p",
                key=f"job-{i}",
                payload={"command": ["sh", "-c", f'echo "$JOB" >> {self.ran_log}; sleep 0.1'], "env": {"JOB": str(i)}},
            )
            result = await self.bus.request(self.bus.subjects.submit_request, spec, 10)
            assert result.outcome == "admitted", result

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.store.job_list(pool="p", state=None, key=None, limit=1000)

    async def finished(self, at_least: int) -> bool:
        return sum(1 for j in await self.jobs() if j["state"] == "succeeded") >= at_least

    async def all_done(self) -> list[dict[str, Any]]:
        await eventually(lambda: self.finished(JOBS), timeout=60, what=f"all {JOBS} jobs to succeed")
        return await self.jobs()

    async def check(self, jobs: list[dict[str, Any]]) -> None:
        assert len(jobs) == JOBS
        assert all(j["state"] == "succeeded" and j["attempt"] == 1 for j in jobs)  # none lost, none retried
        ran = self.ran_log.read_text().split()
        assert sorted(ran, key=int) == [str(i) for i in range(JOBS)]  # each ran exactly once
        assert await in_flight_peak(self.store, "p") <= CAP  # from every transition, across the terms
        # One leader at a time: each election is a new, higher epoch, and every claim was made
        # under one of those terms.
        epochs = [e.epoch for e in self.elected.events]
        assert epochs == sorted(set(epochs))
        assert {j["claim_epoch"] for j in jobs} <= set(epochs)


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path) -> AsyncIterator[Cluster]:
    runtime = Runtime(settings, ["capacity", "admission"])
    await runtime.start()
    assert runtime.store is not None and runtime.bus is not None
    await record_history(runtime.store)
    await factories.pool(runtime.store, "p", max_concurrent=CAP, max_active=-1)
    runners = [agent(settings, runtime.bus, runner_id=f"r{i}", pool="p", labels=[], slots=2) for i in range(2)]
    env = process_env(settings, **DISPATCH_FAILOVER_ENV)
    procs = [ServiceProcess(f"d{i}", ["dispatch"], env, tmp_path / "logs") for i in range(3)]
    cluster = Cluster(settings, runtime, procs, tmp_path / "ran.log")
    s = runtime.bus.subjects
    try:
        for runner in runners:
            await runner.start()
        async with (
            Listener(runtime.bus, s.leader_elected.any()) as cluster.elected,
            Listener(runtime.bus, s.leader_lost.any()) as cluster.lost,
        ):
            for proc in procs:
                proc.start()
            await asyncio.gather(*(proc.ready() for proc in procs))
            yield cluster
    finally:
        await asyncio.gather(*(proc.close() for proc in procs))
        for runner in runners:
            await runner.stop()
        await runtime.stop()


async def drain_then(cluster: Cluster, sig: signal.Signals) -> tuple[ServiceProcess, LeaderElected]:
    """Start the drain under the first leader, and signal it once a few jobs are done."""
    leader, term = await cluster.leader()
    await cluster.submit(JOBS)
    await eventually(lambda: cluster.finished(6), timeout=30, what="the drain to be under way")
    jobs = await cluster.jobs()
    assert {j["claim_epoch"] for j in jobs if j["claim_epoch"] is not None} == {term.epoch}  # only one dispatches
    assert len(cluster.elected.events) == 1
    leader.signal(sig)
    return leader, term


async def test_kill_9_of_the_leader_mid_drain(cluster: Cluster) -> None:
    old, old_term = await drain_then(cluster, signal.SIGKILL)
    _, new_term = await cluster.leader(other_than=old.instance_id)
    assert new_term.epoch > old_term.epoch
    await cluster.check(await cluster.all_done())
    assert await old.wait_exit() == -signal.SIGKILL


async def test_a_paused_leader_is_replaced_and_fenced_when_it_resumes(cluster: Cluster) -> None:
    old, old_term = await drain_then(cluster, signal.SIGSTOP)
    _, new_term = await cluster.leader(other_than=old.instance_id)

    async def new_term_claimed() -> bool:
        return any(j["claim_epoch"] == new_term.epoch for j in await cluster.jobs())

    await eventually(new_term_claimed, timeout=30, what="the new leader to dispatch")
    claimed_by_old = {j["id"] for j in await cluster.jobs() if j["claim_epoch"] == old_term.epoch}
    old.signal(signal.SIGCONT)
    # It notices on its own (its renewal is refused, or its deadline has passed) and steps down.
    await cluster.lost.wait(lambda e: e.holder == old.instance_id and e.epoch == old_term.epoch, timeout=30)
    jobs = await cluster.all_done()
    await cluster.check(jobs)
    # Nothing was claimed under the old term after the new one began.
    assert {j["id"] for j in jobs if j["claim_epoch"] == old_term.epoch} <= claimed_by_old
    assert old.proc is not None and old.proc.poll() is None  # still running, as a standby


async def test_graceful_stop_hands_over_at_once(cluster: Cluster) -> None:
    old, old_term = await drain_then(cluster, signal.SIGTERM)
    await cluster.lost.wait(lambda e: e.holder == old.instance_id and e.reason == "released", timeout=30)
    _, new_term = await cluster.leader(other_than=old.instance_id)
    assert new_term.epoch > old_term.epoch
    await cluster.check(await cluster.all_done())
    assert await old.wait_exit() == 0
