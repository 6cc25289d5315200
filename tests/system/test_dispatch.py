"""Capacity and dispatch end to end, on real NATS and Postgres: a backlog drains under a hard cap,
a runnable job overtakes 10,000 that cannot run, a killed runner's job finishes elsewhere, a lost
ack is undone, and an unreachable store stops dispatching instead of guessing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import RunnerRegistered
from services.dispatch import Dispatch
from tests import factories
from tests.support import Listener, agent, eventually, in_flight_peak, record_history


async def count(store: Store, sql: str, *args: object) -> int:
    async with store.connection() as conn:
        return await conn.fetchval(sql, *args)


async def test_backlog_drains_under_the_cap_and_all_succeed(system: Runtime, bus: Bus, store: Store) -> None:
    await record_history(store)
    await factories.pool(store, max_concurrent=5, labels=["linux", "x86_64"])
    extra = [
        agent(system.settings, bus, runner_id=f"extra-{i}", pool="default", labels=["linux"], slots=4) for i in range(2)
    ]
    for r in extra:
        await r.start()
    try:
        for i in range(1000):
            await bus.submit(json.dumps({"pool": "default", "payload": {"command": ["true"]}}).encode(), f"b{i}")

        async def all_succeeded() -> bool:
            return await count(store, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 1000

        await eventually(all_succeeded, timeout=180, what="1,000 jobs to succeed")
    finally:
        for r in extra:
            await r.stop()
    # From every transition: the cap was reached (12 slots wanted the jobs) and never passed.
    assert await in_flight_peak(store, "default") == 5
    assert await count(store, "SELECT count(*) FROM jobs WHERE attempt <> 1") == 0


async def test_runnable_job_overtakes_ten_thousand_that_cannot_run(system: Runtime, store: Store, bus: Bus) -> None:
    await factories.pool(store, labels=["linux", "x86_64", "gpu"], max_active=-1)
    await factories.bulk_queue(store, 10_000, labels=["gpu"], priority=100)
    outcome = await system.services["admission"].admit(  # type: ignore[attr-defined]
        factories.JobSpec(pool="default", labels=["linux"], payload={"command": ["true"]})
    )
    job_id = outcome.job.id

    async def succeeded() -> bool:
        return (await store.job_get(job_id))["state"] == "succeeded"  # type: ignore[index]

    await eventually(succeeded, timeout=30, what="the runnable job to run")
    assert await count(store, "SELECT count(*) FROM jobs WHERE state = 'queued'") == 10_000


async def test_killed_runner_job_is_requeued_and_finishes_elsewhere(
    system: Runtime, settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    await factories.pool(store, labels=["linux", "x86_64", "remote"])
    env = {
        **os.environ,
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_NAMESPACE": settings.namespace,
        "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
    }
    doomed = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "orchestrator"),
        *("runner", "--id", "doomed", "--labels", "linux,remote"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = tmp_path / "first-attempt.pid"
    script = f"test -f {marker} && exit 0; echo $$ > {marker}; sleep 60"
    orphan = None
    try:

        async def registered() -> bool:
            return any(r["id"] == "doomed" for r in await store.runner_list())

        await eventually(registered, what="the doomed runner to register")
        # Only the doomed runner offers `remote`, so the first attempt runs there.
        job = await system.services["admission"].admit(  # type: ignore[attr-defined]
            factories.JobSpec(pool="default", labels=["remote"], payload={"command": ["sh", "-c", script]})
        )
        await eventually(lambda: asyncio.to_thread(marker.exists), what="the first attempt to start")
        orphan = int(marker.read_text())
        survivor = agent(settings, bus, runner_id="survivor", pool="default", labels=["linux", "remote"], slots=1)
        await survivor.start()
        doomed.kill()  # kill -9: no goodbye, no report

        async def finished() -> dict | None:
            row = await store.job_get(job.job.id)
            return row if row and row["state"] == "succeeded" else None

        row = await eventually(finished, timeout=30, what="the job to finish on the survivor")
        assert (row["runner_id"], row["attempt"]) == ("survivor", 2)
        await survivor.stop()

        async def group_gone() -> bool:  # the killed agent's watchdog killed its job's whole group
            try:
                os.killpg(orphan, 0)
            except ProcessLookupError:
                return True
            return False

        await eventually(group_gone, timeout=5, what="the first attempt's processes to be gone")
    finally:
        if doomed.returncode is None:
            doomed.kill()
        await doomed.wait()
        if orphan:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan, signal.SIGKILL)


@pytest.fixture
def slow_loss(settings: Settings) -> Settings:
    """Runners are lost after a minute of silence, not 3 s: a runner that never heartbeats stays
    suspect for the whole test, instead of turning lost while its job is still on its way."""
    settings.runner_ttl_s = 60.0
    return settings


async def test_unacked_assignment_is_undone_and_goes_elsewhere(
    slow_loss: Settings, system: Runtime, store: Store, bus: Bus
) -> None:
    # A runner that registers but never answers assignments (it hangs, or its link is gone).
    silent = await bus.subscribe(bus.subjects.assign.at("silent"), lambda e: asyncio.sleep(30))
    reply = await bus.request(
        bus.subjects.runner_register,
        RunnerRegistered(runner_id="silent", pool="default", labels=["linux", "x86_64"], slots=50),
        5,
    )
    assert reply.ok
    outcome = await system.services["admission"].admit(  # type: ignore[attr-defined]
        factories.JobSpec(pool="default", payload={"command": ["true"]})
    )

    async def succeeded() -> dict | None:
        row = await store.job_get(outcome.job.id)
        return row if row and row["state"] == "succeeded" else None

    row = await eventually(succeeded, timeout=30, what="the job to run on a runner that acks")
    assert row["runner_id"] != "silent"
    assert row["attempt"] == 1  # a failed hand-off is not an attempt
    runners = {r["id"]: r for r in await store.runner_list()}
    assert runners["silent"]["state"] == "suspect"
    await silent.unsubscribe()


async def test_unreachable_store_means_capacity_unknown_and_no_dispatch(
    settings: Settings, store: Store, bus: Bus, pg_dsn: str
) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=2)
    await factories.queue(store, 3)
    dispatch_store = Store(settings.database_url or "", max_size=2)
    await dispatch_store.connect()
    dispatch = Dispatch(settings.dispatch, settings.timings, dispatch_store, bus)
    database = (settings.database_url or "").split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        async with Listener(bus, bus.subjects.capacity_unknown.any()) as unknown:
            # Steps driven by hand (never started: no subscriptions, no sweep).
            assert await dispatch.step("default") == "capacity_unknown"
            assert (await unknown.wait()).pool == "default"
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")

        async def recovered() -> bool:  # a pooled connection the outage killed fails once
            return await dispatch.step("default") == "dispatched"

        await eventually(recovered, what="dispatch to resume once Postgres is back")
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await admin.close()
        await dispatch_store.close()
