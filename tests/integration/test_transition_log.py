"""A log line per job transition, for operators (issue 20, point 7): the whole system in one
process runs a job, and its log tells the job's life, one INFO line per transition, with the
job, its pool, its runner and the outcome; with ORCH_LOG_TRANSITIONS=debug the lines are DEBUG."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import RunnerSpec, Store
from orchestrator.store.transitions import Start
from tests import factories
from tests.support import submit
from tests.system.processes import ended

LOGGER = "orchestrator.transitions"


@pytest.fixture
async def http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


async def run_one(http: aiohttp.ClientSession) -> str:
    job = await submit(http, payload={"command": ["sh", "-c", "exit 3"]})
    done = await ended(http, job["id"], timeout=30)
    assert (done["state"], done["exit_code"]) == ("failed", 3), done
    return job["id"]


def lines_of(caplog: pytest.LogCaptureFixture, job_id: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER and job_id in r.getMessage()]


async def test_a_jobs_life_is_one_info_line_per_transition(
    system: Runtime, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    runner = system.services["runner"].runner_id  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        job_id = await run_one(http)
    first, *middle, last = lines_of(caplog, job_id)
    assert first == (logging.INFO, f"job {job_id} admitted: pool=default")
    # The runner's ack and its start request are recorded by two edges at once (dispatch's and
    # capacity's), each logging after its own commit: their lines may come in either order (the
    # events of the job-events stream do not: their order is the commits').
    assert sorted(middle) == [
        (logging.INFO, f"job {job_id} assigned: pool=default runner={runner} attempt=1"),
        (logging.INFO, f"job {job_id} started: pool=default runner={runner} attempt=1"),
    ]
    assert last == (logging.INFO, f"job {job_id} finished: pool=default runner={runner} state=failed exit_code=3")
    record = next(r for r in caplog.records if r.name == LOGGER and "finished" in r.getMessage())
    assert (record.job_id, record.pool, record.runner_id, record.action) == (job_id, "default", runner, "finished")  # type: ignore[attr-defined]


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    settings.log_transitions = "debug"  # before `system` builds on it
    return settings


async def test_at_the_debug_setting_they_are_debug_lines(
    quiet: Settings, system: Runtime, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        job_id = await run_one(http)
    assert lines_of(caplog, job_id) == []
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        job_id = await run_one(http)
    levels = [level for level, _ in lines_of(caplog, job_id)]
    assert levels == [logging.DEBUG] * 4


async def test_requeues_say_why_and_cancels_and_ends_say_so(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await factories.pool(store, "default")
    await factories.runner(store, "r1", slots=1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        [job_id] = await factories.queue(store, 1)
        claim = await store.transitions.claim("default", 10)
        assert claim.status == "dispatched"
        await store.transitions.start_many([Start(job_id, "r1", 1)])
        # r1 restarts holding nothing: its job goes back to the queue.
        await store.transitions.register_runner(RunnerSpec("r1", "default", [], 1), [])
        await store.transitions.cancel(job_id)
    j = job_id
    assert [message for _, message in lines_of(caplog, str(job_id))] == [
        f"job {j} admitted: pool=default",
        f"job {j} assigned: pool=default runner=r1 attempt=1",  # told by its start: never acknowledged
        f"job {j} started: pool=default runner=r1 attempt=1",
        f"job {j} requeued: pool=default runner=r1 why=runner_restarted",
        f"job {j} cancelled: pool=default state=cancelled reason=cancelled",
    ]
