"""No job stays stuck (issue 16), tried the way users meet it: each test makes the other side
slower than a timeout of the system (a paused process, a silent runner, a missing capacity) and
checks what a user would: every job ends, its process is gone, its slot is free."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess, start_all
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import (
    HeartbeatReply,
    JobAssigned,
    JobStarted,
    JobSubmitted,
    Reply,
    RunnerHeartbeat,
    RunnerRegistered,
)
from services.runner import Outcome
from services.runner.agent import DRAIN_TIMEOUT_S
from tests import factories
from tests.support import agent, alive, eventually, process_env, stubborn_command, until_exists

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return process_env(settings, ORCH_DB_POOL_SIZE="4", **extra)


async def submit(bus: Bus, **spec: Any) -> UUID:
    result = await bus.request(bus.subjects.submit_request, JobSubmitted(pool="default", **spec), 5)
    assert result.job is not None, result
    return result.job.id


async def states(store: Store, ids: list[UUID]) -> dict[UUID, str]:
    found = {}
    for job_id in ids:
        job = await store.job_get(job_id)
        assert job is not None
        found[job_id] = job["state"]
    return found


async def test_capacity_paused_longer_than_a_start_request_leaves_no_job_running(
    settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """The issue's own report: capacity in its own process, paused (SIGSTOP) for 8 s while six
    jobs ask to start (the runner's start request times out after 5 s), then resumed. Every job
    ends; none stays `running` with nothing running it."""
    await factories.pool(store)
    env = env_of(settings, ORCH_HEARTBEAT_INTERVAL_S="1", ORCH_RUNNER_TTL_S="10", ORCH_SWEEP_INTERVAL_S="1")
    logs = tmp_path / "logs"
    capacity = ServiceProcess("capacity", ["capacity"], env, logs)
    front = ServiceProcess("front", ["admission", "dispatch"], env, logs)
    runner = ServiceProcess(
        "r1", [], env, logs, args=["runner", "--pool", "default", "--slots", "6", "--id", "r1"],
        ready_text="runner r1 serving",
    )  # fmt: skip
    procs = [capacity, front, runner]
    try:
        await start_all([capacity, front])
        await start_all([runner])
        capacity.signal(signal.SIGSTOP)
        ids = [await submit(bus, payload={"command": ["true"]}) for _ in range(6)]

        async def acked() -> bool:
            jobs = [await store.job_get(i) for i in ids]
            return all(job is not None and job["acked_at"] is not None for job in jobs)

        await eventually(acked, timeout=15, what="the runner to ack all six")
        await asyncio.sleep(8)  # the fault: capacity stays paused past the 5 s start request
        capacity.signal(signal.SIGCONT)

        async def all_final() -> bool:
            return set((await states(store, ids)).values()) <= FINAL

        await eventually(all_final, timeout=40, what="every job to end")
        assert set((await states(store, ids)).values()) == {"succeeded"}
    finally:
        await asyncio.gather(*(p.close() for p in procs))


async def test_a_runner_stops_when_capacity_hears_its_stop_later_than_the_runner_waits(
    settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """A stopping runner asks capacity to hear two notices (it drains; the attempts it killed),
    waiting DRAIN_TIMEOUT_S for each. Capacity, in its own process, paused (SIGSTOP) past both: the
    stop is not held up by it, and once resumed capacity hears the late notice and releases the
    attempt the stop killed. Nothing else could release it within the test: runner_ttl_s is 120 s."""
    await factories.pool(store)
    settings.stop_timeout_s = settings.kill_grace_s = 0.5
    settings.runner_ttl_s = 120.0
    env = env_of(settings, ORCH_RUNNER_TTL_S="120")
    logs = tmp_path / "logs"
    capacity = ServiceProcess("capacity", ["capacity"], env, logs)
    front = ServiceProcess("front", ["admission", "dispatch"], env, logs)
    runner = agent(settings, bus, "r-stopping", pool="default", labels=[], slots=1)
    try:
        await start_all([capacity, front])
        await runner.start()
        ready = tmp_path / "ignoring-sigterm"
        job_id = await submit(bus, payload={"command": stubborn_command(ready)})
        await until_exists(ready, "the job to ignore SIGTERM")
        capacity.signal(signal.SIGSTOP)
        try:
            # The stop's own waits (its jobs' stop timeout and kill grace), each notice's, and slack.
            within = settings.stop_timeout_s + settings.kill_grace_s + 2 * DRAIN_TIMEOUT_S + 5
            async with asyncio.timeout(within):
                await runner.stop()
            assert (await states(store, [job_id]))[job_id] == "running"  # capacity has heard nothing yet
        finally:
            capacity.signal(signal.SIGCONT)

        async def released() -> bool:
            return (await states(store, [job_id]))[job_id] == "queued"

        await eventually(released, timeout=20, what="the late notice to release the killed attempt")
        job = await store.job_get(job_id)
        assert job is not None and job["runner_id"] is None
    finally:
        await runner.stop()
        await asyncio.gather(capacity.close(), front.close())


@pytest.fixture
async def quick_kill(settings: Settings) -> AsyncIterator[Runtime]:
    settings.kill_grace_s = 1.0
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def test_a_cancelled_job_gets_sigterm_its_trap_runs_and_no_grandchild_survives(
    quick_kill: Runtime, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """DELETE on a running job: its process group gets SIGTERM (the job's cleanup trap runs),
    then SIGKILL once the grace is over (a grandchild ignoring SIGTERM dies too); the job ends
    `cancelled` when the runner confirms, and stays `running` (its slot taken) until then."""
    script = (
        "trap 'echo cleaned > trapped; exit 143' TERM\n"
        f"{sys.executable} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)' &\n"
        "echo $! > grandchild\n"
        "echo started > started\n"
        "wait\n"
    )
    job_id = await submit(bus, payload={"command": ["bash", "-c", script], "cwd": str(tmp_path)})
    await until_exists(tmp_path / "grandchild", "the job to start its grandchild")
    await until_exists(tmp_path / "started", "the job to be running")
    grandchild = int((tmp_path / "grandchild").read_text())
    async with aiohttp.ClientSession(base_url=quick_kill.http_url) as http, http.delete(f"/v1/jobs/{job_id}") as resp:
        assert resp.status == 202  # recorded; it ends when the runner confirms
        assert (await resp.json())["state"] == "running"

    async def ended() -> str | None:
        state = (await states(store, [job_id]))[job_id]
        return state if state in FINAL else None

    assert await eventually(ended, what="the cancel to be confirmed") == "cancelled"
    assert (tmp_path / "trapped").read_text().strip() == "cleaned"
    await eventually(lambda: _true(not alive(grandchild)), timeout=5, what="the grandchild to be killed")


async def _true(value: bool) -> bool:
    return value


async def test_a_runner_fences_itself_when_no_capacity_answers(settings: Settings, store: Store, bus: Bus) -> None:
    """No answer to its heartbeats (here: no capacity at all, `NoResponders`) is not an
    acknowledgement: the runner drops its jobs at half the TTL after the last answered one,
    before capacity (when it comes back) could give them to another runner. Its jobs here are
    not processes, so no watchdog is involved: this is the runner's own fence."""
    runtime = Runtime(settings, ["capacity", "admission", "dispatch"], migrate=True)
    await runtime.start()
    started, dropped = asyncio.Event(), asyncio.Event()

    async def hold(event: JobAssigned) -> Outcome:
        started.set()
        try:
            await asyncio.Event().wait()  # runs until it is dropped
        finally:
            dropped.set()
        raise AssertionError("unreachable")

    await factories.pool(store)
    runner = agent(settings, bus, runner_id="r1", pool="default", labels=[], slots=1, execute=hold)
    await runner.start()
    try:
        await submit(bus, payload={"command": ["true"]})
        await asyncio.wait_for(started.wait(), 10)
        await runtime.services["capacity"].stop()
        await asyncio.wait_for(dropped.wait(), settings.runner_ttl_s)
    finally:
        await runner.stop()
        await runtime.stop()


async def test_the_server_ends_a_job_whose_runner_never_reports_past_its_timeout(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A runner that heartbeats but never reports (hung, or broken) does not hold a job for
    ever: past `timeout_s` and the kill grace the server ends it `timed_out`, frees the slot,
    and the runner's heartbeat reply tells it to kill the job."""
    settings.kill_grace_s = 0.5
    runtime = Runtime(settings, ["capacity", "admission", "dispatch"], migrate=True)
    await runtime.start()
    try:
        await factories.pool(store)
        registered = await bus.request(
            bus.subjects.runner_register, RunnerRegistered(runner_id="mute", pool="default", slots=1), 5
        )
        assert registered.ok

        held: list[UUID] = []
        requests: set[asyncio.Task[Reply]] = set()

        async def on_assign(event: JobAssigned) -> Reply:
            held.append(event.job_id)  # held from the ack, like any runner
            started = JobStarted(job_id=event.job_id, pool=event.pool, runner_id="mute", attempt=event.attempt)
            task = asyncio.get_running_loop().create_task(bus.request(bus.subjects.runner_start, started, 5))
            requests.add(task)  # kept until done
            task.add_done_callback(requests.discard)
            return Reply(ok=True)  # and never a report

        sub = await bus.subscribe(bus.subjects.assign.at("mute"), on_assign)
        replies: list[HeartbeatReply] = []

        async def heartbeats() -> None:  # alive, and holding the job once it has it
            seq = 0
            while True:
                seq += 1
                beat = RunnerHeartbeat(runner_id="mute", pool="default", running=held, seq=seq, acked_seq=seq - 1)
                replies.append(await bus.request(bus.subjects.runner_heartbeat, beat, 5))
                await asyncio.sleep(settings.heartbeat_interval_s)

        beating = asyncio.create_task(heartbeats())
        try:
            job_id = await submit(bus, payload={"command": ["true"]}, timeout_s=1)

            async def told() -> HeartbeatReply | None:
                return next((r for r in reversed(replies) if r.stop), None)

            reply = await eventually(told, timeout=15, what="a heartbeat reply to name the job")
        finally:
            beating.cancel()
        assert all(r.ok for r in replies)  # never declared lost: its job was ended by the timeout
        assert [(s.job_id, s.why) for s in reply.stop] == [(job_id, "not_yours")]
        job = await store.job_get(job_id)
        assert job is not None and job["state"] == "timed_out"
        await sub.unsubscribe()
    finally:
        await runtime.stop()


async def test_a_runner_started_before_capacity_waits_for_it(settings: Settings, store: Store) -> None:
    """Services start in any order: a runner whose registration nobody answers yet keeps
    asking (and says so), and serves once capacity is up."""
    await factories.pool(store, settings.runner_pool)
    runner = Runtime(settings, ["runner"])
    starting = asyncio.create_task(runner.start())
    capacity = Runtime(settings, ["capacity"])
    try:
        await asyncio.sleep(0.5)  # the fault: no capacity at all for a while
        assert not starting.done()
        await capacity.start()
        await asyncio.wait_for(starting, 15)
        assert [r["id"] for r in await store.runner_list()] == [runner.services["runner"].runner_id]  # type: ignore[attr-defined]
    finally:
        starting.cancel()
        await runner.stop()
        await capacity.stop()


async def test_a_stopped_runners_jobs_are_killed_by_its_watchdog(
    settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """A runner stopped (SIGSTOP: hung, a debugger, a stalled VM) cannot fence its jobs, which
    run in process groups of their own and keep running while capacity declares it lost and
    gives them to another runner. Its watchdog, a process of its own, kills them at half the
    TTL; the job runs again, once, elsewhere or on the runner once it is back."""
    runtime = Runtime(settings, ["capacity", "admission", "dispatch"], migrate=True)
    await runtime.start()
    env = env_of(settings, ORCH_HEARTBEAT_INTERVAL_S="0.5", ORCH_RUNNER_TTL_S="3", ORCH_SWEEP_INTERVAL_S="0.5")
    runner = ServiceProcess(
        "r1", [], env, tmp_path / "logs", args=["runner", "--pool", "default", "--slots", "1", "--id", "r1"],
        ready_text="runner r1 serving",
    )  # fmt: skip
    try:
        await factories.pool(store)
        await start_all([runner])
        script = "if [ -e ran ]; then exit 0; fi; touch ran; echo $$ > pid; exec sleep 300"
        job_id = await submit(bus, payload={"command": ["bash", "-c", script], "cwd": str(tmp_path)})
        await until_exists(tmp_path / "pid", "the job to run")
        pid = int((tmp_path / "pid").read_text())
        runner.signal(signal.SIGSTOP)
        await eventually(lambda: _true(not alive(pid)), timeout=3, what="the watchdog to kill the job")
        assert runner.proc is not None and runner.proc.poll() is None  # the runner is still stopped
        runner.signal(signal.SIGCONT)

        async def ended() -> dict[str, Any] | None:
            job = await store.job_get(job_id)
            return job if job is not None and job["state"] in FINAL else None

        job = await eventually(ended, timeout=30, what="the job to run again and end")
        assert (job["state"], job["attempt"]) == ("succeeded", 2)
    finally:
        await runner.close()
        await runtime.stop()
