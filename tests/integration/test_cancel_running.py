"""A cancel of a running job whose command takes its time to stop (it ignores SIGTERM, as a job
whose cleanup runs long does): pending until its runner stops it, which the answer and the job
view say (`cancel_requested_at`), and the runner says once that it stops the job, however many
heartbeats repeat the order while the kill grace runs."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from tests.support import Listener, call, eventually, stubborn_job

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
# The job ignores SIGTERM, so its runner kills it after the kill grace: that long, heartbeats
# repeat the stop order.
KILL_GRACE_S = 5.0


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """The whole system, its runner's kill grace short enough to wait for (heartbeats 0.5 s)."""
    settings.kill_grace_s = KILL_GRACE_S
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as session:
            yield session
    finally:
        await runtime.stop()


async def ended(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        _, job = await call(http, "GET", f"/v1/jobs/{job_id}")
        return job if job["finished_at"] is not None else None

    return await eventually(probe, timeout=KILL_GRACE_S + 10, what=f"job {job_id} to end")


async def test_a_pending_cancel_shows_in_the_answer_and_the_job_view(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The 202 answered a job showing plain `running`: nothing said the cancel was pending."""
    job = await stubborn_job(http, tmp_path)
    assert job["cancel_requested_at"] is None
    status, answer = await call(http, "DELETE", f"/v1/jobs/{job['id']}")
    assert status == 202, answer
    requested = answer["cancel_requested_at"]
    assert answer["state"] == "running" and ISO_UTC.fullmatch(requested), answer
    _, got = await call(http, "GET", f"/v1/jobs/{job['id']}")
    assert (got["state"], got["cancel_requested_at"]) == ("running", requested)
    _, listed = await call(http, "GET", "/v1/jobs")
    assert [(j["id"], j["cancel_requested_at"]) for j in listed["jobs"]] == [(job["id"], requested)]
    done = await ended(http, job["id"])
    assert (done["state"], done["cancel_requested_at"]) == ("cancelled", requested)


async def test_the_runner_says_once_that_it_stops_a_cancelled_job(
    http: aiohttp.ClientSession, bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It logged "stopping <job>: ... was cancelled" on every heartbeat until the job was gone."""
    job = await stubborn_job(http, tmp_path)
    job_id = job["id"]

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"stopping {job_id}")]

    async with Listener(bus, bus.subjects.runner_heartbeat) as beats:
        with caplog.at_level(logging.INFO, logger="orchestrator.runner"):
            assert (await call(http, "DELETE", f"/v1/jobs/{job_id}"))[0] == 202
            before = len(beats.events)  # those while it ran: only the beats since count

            async def four_beats_while_it_stops() -> bool:
                return sum(str(j) == job_id for e in beats.events[before:] for j in e.running) >= 4

            # Each heartbeat is sent once the last one's reply (and its stop order) was handled.
            await eventually(four_beats_while_it_stops, timeout=KILL_GRACE_S, what="four heartbeats while it stops")
            assert said() == [f"stopping {job_id}: job {job_id} was cancelled"]
            assert (await ended(http, job_id))["state"] == "cancelled"
    assert len(said()) == 1
