"""Issue 22: a Postgres that goes away mid-run. Every service and a runner (the runtime of `up`) on a
PostgreSQL of the test's own, under a steady load through the JetStream intake: an immediate
(crash) stop and a start of the server on the same data dir, then every connection terminated
(pg_terminate_backend), as a failover does. From the transition history and the jobs' own
execution log (the chaos run's checker): nothing lost (every submitted job admitted), nothing
applied twice (each job finished exactly once, no attempt counted twice, never on two runners at
once), the cap never exceeded, and every job succeeded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus, Subjects
from orchestrator.embedded import EmbeddedPostgres
from orchestrator.settings import Settings
from orchestrator.store import Start, Store
from tests import factories, history
from tests.support import eventually, record_history, wal_held_back, wal_unwritten
from tests.system.chaos import check as chaos_check
from tests.system.chaos.run import JOB

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(180)]

POOL = "pg"
CAP = 3
RATE = 4.0


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone (it is stopped and started). Outside pytest's temp root:
    the server runs as another user, who must traverse the parents."""
    root = Path(tempfile.mkdtemp(prefix="orch-pg-restart-"))
    server = EmbeddedPostgres(root / "pg")
    await server.start()
    yield server
    await server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _while_up(probe: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    """`probe`, False while Postgres is away."""

    async def tolerant() -> bool:
        try:
            return await probe()
        except Exception:
            return False

    return tolerant


async def test_a_postgres_restart_and_terminated_connections_lose_and_repeat_nothing(
    own_postgres: EmbeddedPostgres, nats_url: str, tmp_path: Path
) -> None:
    dsn = own_postgres.dsn
    store = Store(dsn, max_size=2)
    await store.connect()
    await store.migrate()
    await record_history(store)
    pools = tmp_path / "pools.toml"
    pools.write_text(f'[pools.{POOL}]\nlabels = ["pg"]\nmax_concurrent = {CAP}\n')
    settings = Settings(
        nats_url=nats_url,
        database_url=dsn,
        namespace="pgrestart",
        data_dir=tmp_path / "data",
        pools_file=pools,
        http_port=0,
        heartbeat_interval_s=0.5,
        runner_ttl_s=6.0,
        sweep_interval_s=0.5,
        stop_timeout_s=2.0,
        runner_pool=POOL,
        runner_labels="pg",
        runner_slots=4,
    )
    exec_log = tmp_path / "executions.log"
    submitted: set[str] = set()
    stop = asyncio.Event()
    bus = Bus(nats_url, Subjects(settings.namespace), name="pg-producer")
    await bus.connect()

    async def load() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            key = f"job-{len(submitted)}"
            command = [sys.executable, "-I", "-S", str(JOB), str(exec_log), POOL, "sleep", "0.3"]
            submitted.add(key)
            body = {"pool": POOL, "labels": ["pg"], "key": key, "max_attempts": 10, "payload": {"command": command}}
            await bus.submit(json.dumps(body).encode(), key)
            next_at += 1 / RATE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def succeeded() -> int:
        async with store.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'succeeded'"))

    async def more_succeed(n: int) -> None:
        """Until `n` more jobs than at the first look Postgres answers have succeeded."""
        first: list[int] = []

        async def reached() -> bool:
            count = await succeeded()
            first[:] = first or [count]
            return count >= first[0] + n

        await eventually(_while_up(reached), timeout=40, what=f"{n} more jobs to succeed")

    runtime = Runtime(settings, migrate=True)  # every service and a runner, as `up`
    await runtime.start()
    loading = asyncio.create_task(load())
    try:
        await more_succeed(5)
        await own_postgres.crash()  # immediate: no checkpoint, recovery from the WAL
        await asyncio.sleep(1.0)  # the outage itself
        await own_postgres.restart()  # the same data dir and socket
        await more_succeed(10)
        admin = await asyncpg.connect(dsn)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert ended > 0
        await more_succeed(10)
    finally:
        stop.set()
        await loading

    async def all_final() -> bool:
        async with store.connection() as conn:
            final = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE state = ANY($1::text[])", sorted(chaos_check.FINAL)
            )
        return final == len(submitted)

    try:
        await eventually(_while_up(all_final), timeout=60, what="every job to end")
    finally:
        await runtime.stop()
        await bus.close()
    async with store.connection() as conn:
        jobs = [dict(r) for r in await conn.fetch("SELECT id, key, pool, state, attempt, max_attempts FROM jobs")]
        transitions = await history.read(conn)
    await store.close()
    violations = chaos_check.check(
        submitted=submitted,
        jobs=jobs,
        transitions=transitions,
        executions=chaos_check.parse_log(exec_log.read_text().splitlines()),
        caps={POOL: CAP},
    )
    assert not any(violations.values()), {k: v[:10] for k, v in violations.items() if v}
    assert {j["state"] for j in jobs} == {"succeeded"}, [j for j in jobs if j["state"] != "succeeded"][:5]


async def test_a_claim_lost_in_a_crash_cannot_start_and_is_claimed_afresh(own_postgres: EmbeddedPostgres) -> None:
    """A claim commits without waiting for its WAL to reach the disk: until its runner's start,
    whose commit waits and so flushes the claim with it, an assignment is only a plan. Postgres
    crashed before the claim was written out: the claim is gone and the job queued, the lost
    hand-off's start is refused, and the job is claimed and started afresh, as its first attempt."""
    dsn = own_postgres.dsn
    await wal_held_back(dsn)
    store = Store(dsn, max_size=2)
    await store.connect()
    try:
        await store.migrate()
        await factories.pool(store)
        await factories.runner(store, "r1")
        for _ in range(5):
            [job_id] = await factories.queue(store)  # a commit that waits: all before it is written
            [lost] = (await store.transitions.claim("default", 1)).assignments
            if await wal_unwritten(dsn):
                break
            await factories.finish(store, [lost])  # written out already (a checkpoint?): another
        else:
            raise AssertionError("every claim was written out at once")
        await own_postgres.crash()
        await own_postgres.restart()
        job = await eventually(_while_up(lambda: store.job_get(job_id)), what="Postgres to be back")
        assert (job["state"], job["runner_id"]) == ("queued", None)  # the claim did not outlive the crash
        assert await store.transitions.start_many([Start(job_id, "r1", lost["attempt"] + 1)]) == []
        [again] = (await store.transitions.claim("default", 1)).assignments
        [started] = await store.transitions.start_many([Start(job_id, again["runner_id"], again["attempt"] + 1)])
        assert (started.state, started.attempt) == ("running", 1)
    finally:
        await store.close()
