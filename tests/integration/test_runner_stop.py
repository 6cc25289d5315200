"""A runner that stops kills the jobs still running at its stop timeout, and tells capacity which
attempts it killed (`RunnerStopped`): they are released at once, as a loss (requeued while
attempts remain), not when the runner is found lost a `runner_ttl_s` later. Which attempts a late
notice may touch: test_reconcile.py."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import aiohttp

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from schemas.events import Reply, RunnerStopped
from tests.support import call, eventually, stubborn_job, submit


async def job_state(http: aiohttp.ClientSession, job_id: str, state: str) -> bool:
    return (await call(http, "GET", f"/v1/jobs/{job_id}"))[1]["state"] == state


async def test_jobs_killed_at_the_stop_timeout_are_released_when_their_runner_has_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    settings.stop_timeout_s = 0.5
    settings.kill_grace_s = 0.5
    # Found lost only long after this test: nothing but the runner's own notice can release the job.
    settings.runner_ttl_s = 120.0
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            job = await stubborn_job(http, tmp_path)  # it outlasts the stop timeout, and ignores SIGTERM
            runner = runtime.services["runner"]
            runner_id = runner.runner_id  # type: ignore[attr-defined]
            await runner.stop()
            _, after = await call(http, "GET", f"/v1/jobs/{job['id']}")
            assert (after["state"], after["runner_id"]) == ("queued", None), after
            [attempt] = after["attempts"]
            assert (attempt["runner_id"], attempt["outcome"], attempt["reason"]) == (runner_id, "lost", "runner_lost")
    finally:
        await runtime.stop()


async def test_the_notice_names_only_attempts_whose_ends_are_not_being_reported(
    settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    """Of the jobs a stop kills, the notice names those whose command was running: not one whose
    command has ended and whose end is still being reported (the report may have been recorded;
    named, a success could run again). Capacity is stopped, so that report stays in flight; the
    test answers the notice itself, and reads what it names."""
    settings.stop_timeout_s = 0.5
    settings.kill_grace_s = 0.5
    settings.runner_ttl_s = 120.0  # no fence while capacity is away
    notices: list[RunnerStopped] = []

    async def heard(event: RunnerStopped) -> Reply:
        notices.append(event)
        return Reply(ok=True)

    sub = await bus.subscribe(bus.subjects.runner_stopped, heard)
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            running = await stubborn_job(http, tmp_path)
            go = tmp_path / "go"
            reporting = await submit(http, payload={"command": ["sh", "-c", f"until [ -e {go} ]; do sleep 0.02; done"]})
            await eventually(lambda: job_state(http, reporting["id"], "running"), what="the second job to run")
            await runtime.services["capacity"].stop()
            go.touch()  # it ends now; its report has nobody to record it
            runner = runtime.services["runner"]
            held = runner._jobs  # type: ignore[attr-defined]

            async def reported() -> bool:
                return held[UUID(reporting["id"])].ended

            await eventually(reported, what="the second job's end to be on its way")
            await runner.stop()
        assert [[(k.job_id, k.attempt) for k in n.killed] for n in notices] == [[(UUID(running["id"]), 1)]]
    finally:
        await sub.unsubscribe()
        await runtime.stop()
