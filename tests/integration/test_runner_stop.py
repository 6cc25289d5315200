"""A runner that stops kills the jobs still running at its stop timeout, and tells capacity which
attempts it killed (`RunnerStopped`): they are released at once, as a loss (requeued while
attempts remain), not when the runner is found lost a `runner_ttl_s` later. Which attempts a late
notice may touch: test_reconcile.py."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from app.runtime import Runtime
from orchestrator.settings import Settings
from tests.support import call, stubborn_job


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
