"""Issue 22: the system on a NATS cluster of three (tests/nats_cluster.py), every stream and the
lease bucket replicated on all three (`ORCH_NATS_REPLICAS=3`), every service its own process (two
dispatch instances over three dispatch shards). Under a steady load of jobs through the JetStream
intake: kill -9 of the node leading the lease bucket, then of the node leading the intake stream,
each with a backlog queued, each restarted once dispatch has resumed; then kill -9 of the dispatch
instance leading the pool's shard. From the transition history and the jobs' own execution
log (the chaos run's checker): every submitted job admitted and finished exactly once, the cap
never exceeded, no job on two runners at once, no attempt counted twice, never two dispatchers
of the pool at once nor a claim outside its shard; and dispatch resumed within 10 s of each kill:
no job waited with a slot free under the cap for longer than that."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.procs import ServiceProcess, running
from orchestrator.bus import Bus, Subjects
from orchestrator.store import Store
from tests import history
from tests.nats_cluster import NatsCluster
from tests.support import FAST_FAILURE_ENV, eventually, record_history
from tests.system.chaos import check as chaos_check
from tests.system.chaos.run import JOB

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240)]

POOL = "cluster"
CAP = 3  # below the runners' 4 slots: the cap binds
RATE = 4.0  # jobs submitted per second, a little under what the cap drains
BACKLOG = 20  # jobs queued before each kill: dispatch has work however long the intake is away
RESUME_S = 10.0


class Load:
    """Jobs through the JetStream intake, each sent until JetStream has it (through elections)."""

    def __init__(self, bus: Bus, exec_log: Path) -> None:
        self.bus, self.exec_log = bus, exec_log
        self.submitted: set[str] = set()
        self.stop = asyncio.Event()
        self._rng = random.Random(22)

    async def submit(self) -> None:
        key = f"job-{len(self.submitted)}"
        command = [sys.executable, "-I", "-S", str(JOB), str(self.exec_log), POOL, "sleep"]
        command.append(f"{self._rng.uniform(0.3, 0.9):.2f}")
        spec = {"pool": POOL, "labels": ["cluster"], "key": key, "max_attempts": 10, "payload": {"command": command}}
        self.submitted.add(key)  # first: a submit that failed is a job lost, for the checker to say
        await self.bus.submit(json.dumps(spec).encode(), key)

    async def run(self) -> None:
        """At a steady rate until stopped."""
        next_at = time.monotonic()
        while not self.stop.is_set():
            await self.submit()
            next_at += 1 / RATE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, next_at - time.monotonic()))


async def _count(store: Store, state: str) -> int:
    async with store.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE state = $1", state))


async def _assigned_since(store: Store, since: datetime) -> datetime | None:
    async with store.connection() as conn:
        return await conn.fetchval(
            "SELECT min(at) FROM transition_history WHERE new_state = 'assigned' AND at > $1", since
        )


async def _all_final(store: Store, keys: set[str]) -> bool:
    async with store.connection() as conn:
        final = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE key = ANY($1::text[]) AND state = ANY($2::text[])",
            sorted(keys),
            sorted(chaos_check.FINAL),
        )
    return final == len(keys)


async def kill_and_restart(cluster: NatsCluster, store: Store, load: Load, node: str) -> datetime:
    """With a backlog queued, kill -9 `node`; once jobs are assigned again (after any term that
    outlived the kill), start it again. When it was killed."""
    for _ in range(BACKLOG):
        await load.submit()

    async def backlog() -> bool:
        return await _count(store, "queued") >= BACKLOG // 2

    await eventually(backlog, timeout=30, what="a backlog")
    killed_at = datetime.now(UTC)
    await cluster.kill(node)
    for _ in range(2):  # the second: after a lease that outlived the kill has run out
        since = datetime.now(UTC) + timedelta(seconds=3)
        await eventually(lambda s=since: _assigned_since(store, s), timeout=45, what=f"dispatch after killing {node}")
    await cluster.restart(node)
    return killed_at


async def kill_leading_dispatcher(store: Store, load: Load, dispatchers: list[ServiceProcess]) -> datetime:
    """With a backlog queued, kill -9 the dispatch instance holding the pool's shard (the newest
    term's holder); once jobs are assigned again by the other, when it was killed."""
    for _ in range(BACKLOG):
        await load.submit()

    async def backlog() -> bool:
        return await _count(store, "queued") >= BACKLOG // 2

    await eventually(backlog, timeout=30, what="a backlog")
    async with store.connection() as conn:
        holder = await conn.fetchval(
            "SELECT e.holder FROM dispatch_epochs e JOIN pools p ON p.dispatch_shard = e.shard WHERE p.name = $1",
            POOL,
        )
    [leader] = [d for d in dispatchers if d.instance_id == holder]
    killed_at = datetime.now(UTC)
    os.kill(leader.pid, signal.SIGKILL)
    since = datetime.now(UTC) + timedelta(seconds=1)
    await eventually(lambda: _assigned_since(store, since), timeout=45, what=f"dispatch after killing {holder}")
    return killed_at


def resumed_after(stalls: list[tuple[Any, float]], killed: datetime) -> float:
    """The longest wait of queued work for dispatch that began around a kill (0: none)."""
    window = [s for at, s in stalls if killed - timedelta(seconds=1) <= at <= killed + timedelta(seconds=30)]
    return max(window, default=0.0)


async def test_a_nats_cluster_loses_a_node_and_its_stream_leaders_without_losing_or_repeating_a_job(
    nats_cluster: NatsCluster, database_url: str, tmp_path: Path
) -> None:
    namespace = "clu"
    store = Store(database_url, max_size=2)
    await store.connect()
    await record_history(store)
    pools = tmp_path / "pools.toml"
    pools.write_text(f'[pools.{POOL}]\nlabels = ["cluster"]\nmax_concurrent = {CAP}\n')
    env = {
        **FAST_FAILURE_ENV,
        # A runner whose node is killed reconnects within a second: that is no runner loss.
        "ORCH_RUNNER_TTL_S": "6",
        "ORCH_NATS_URL": nats_cluster.url,
        "ORCH_NATS_REPLICAS": "3",
        "ORCH_DISPATCH_SHARDS": "3",
        "ORCH_DATABASE_URL": database_url,
        "ORCH_NAMESPACE": namespace,
        "ORCH_POOLS_FILE": str(pools),
        "ORCH_HTTP_PORT": "0",
    }
    logs, exec_log = tmp_path / "logs", tmp_path / "executions.log"
    services = [
        ServiceProcess(name, [service], env, logs)
        for name, service in [
            ("capacity", "capacity"),
            ("admission", "admission"),
            ("dispatch-0", "dispatch"),
            ("dispatch-1", "dispatch"),
        ]
    ]
    runners = [
        ServiceProcess(
            rid,
            [],
            env,
            logs,
            args=["runner", "--pool", POOL, "--labels", "cluster", "--slots", "2", "--id", rid],
            ready_text=f"runner {rid} serving",
        )
        for rid in ("runner-0", "runner-1")
    ]
    bus = Bus(nats_cluster.url, Subjects(namespace), name="cluster-producer")
    subjects = bus.subjects
    lease_stream = f"KV_{subjects.lease_bucket}"
    try:
        async with running(services), running(runners):
            await bus.connect()
            for stream in (subjects.intake_stream, subjects.job_events_stream, subjects.job_logs_stream, lease_stream):
                replicas = await eventually(lambda s=stream: nats_cluster.stream_replicas(s), what=f"stream {stream}")
                assert replicas == 3, stream
            load = Load(bus, exec_log)
            loading = asyncio.create_task(load.run())
            try:

                async def running_jobs() -> bool:
                    return await _count(store, "succeeded") >= 5

                await eventually(running_jobs, timeout=30, what="the load to run")
                lease_leader = await eventually(lambda: nats_cluster.stream_leader(lease_stream), what="a lease leader")
                kills = [await kill_and_restart(nats_cluster, store, load, lease_leader)]
                intake_leader = await eventually(
                    lambda: nats_cluster.stream_leader(subjects.intake_stream), what="an intake leader"
                )
                kills.append(await kill_and_restart(nats_cluster, store, load, intake_leader))
                dispatchers = [svc for svc in services if svc.services == ["dispatch"]]
                kills.append(await kill_leading_dispatcher(store, load, dispatchers))
            finally:
                load.stop.set()
                await loading
            await eventually(lambda: _all_final(store, load.submitted), timeout=90, what="every job to end")
            async with store.connection() as conn:
                jobs = [
                    dict(r) for r in await conn.fetch("SELECT id, key, pool, state, attempt, max_attempts FROM jobs")
                ]
                transitions = await history.read(conn)
        violations = chaos_check.check(
            submitted=load.submitted,
            jobs=jobs,
            transitions=transitions,
            executions=chaos_check.parse_log(exec_log.read_text().splitlines()),
            caps={POOL: CAP},
        )
        assert not any(violations.values()), {k: v[:10] for k, v in violations.items() if v}
        async with store.connection() as conn:
            terms = await history.read_terms(conn)
        assert history.interleaved_terms(transitions) == {}  # one dispatcher of the pool at a time
        assert history.claims_outside_their_shard(transitions, terms) == []
        assert {j["state"] for j in jobs} == {"succeeded"}
        stalls = history.dispatch_stalls(transitions, {POOL: CAP})
        resumed = [resumed_after(stalls, killed) for killed in kills]
        print(f"\ncluster: {len(jobs)} jobs; dispatch resumed {[round(s, 1) for s in resumed]} s after each kill")
        assert all(s <= RESUME_S for s in resumed), resumed
        assert max(s for _, s in stalls) <= RESUME_S, sorted(stalls, key=lambda s: -s[1])[:3]
    finally:
        await bus.close()
        await store.close()
