"""The api follows job news only while a long poll (or a log follower) waits: an api nobody polls
parses no job's news, and a wait still hears its job's news, the first and every later one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.bus import Bus
from orchestrator.bus.subjects import Subjects
from orchestrator.embedded import EmbeddedNats, free_port
from schemas.events import JobFinished
from schemas.ids import uuid7
from schemas.jobs import JobState
from services.api.take import Waiters


@pytest.fixture
async def monitored(tmp_path: Path) -> AsyncIterator[tuple[Bus, str]]:
    """A bus on a nats-server of its own with its monitoring port: what the server holds for
    the api's connection is seen from outside it."""
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", args=["-m", str(port)])
    bus = Bus(await server.start(), Subjects("news"), name="api")
    await bus.connect()
    try:
        yield bus, f"http://127.0.0.1:{port}/connz?subs=1"
    finally:
        await bus.close()
        await server.stop()


async def followed(connz: str) -> list[str]:
    """The job-news subjects the server delivers to any connection."""
    async with aiohttp.ClientSession() as http, http.get(connz) as resp:
        body = await resp.json()
    subjects = [s for c in body["connections"] for s in c.get("subscriptions_list", [])]
    return sorted(s for s in subjects if ".jobs." in s)


async def test_job_news_is_followed_only_while_someone_waits(monitored: tuple[Bus, str]) -> None:
    bus, connz = monitored
    waiters = Waiters(bus)
    s = bus.subjects
    news_subjects = sorted(t.any().subject for t in (s.job_assigned, s.job_started, s.job_expired, s.job_finished))
    assert await followed(connz) == []
    for _ in range(2):  # the second wait subscribes again, after the first dropped it
        job, other = uuid7(), uuid7()
        async with waiters.watch(job) as news, waiters.watch(other):
            assert await followed(connz) == news_subjects  # once, however many wait
            finished = JobFinished(job_id=job, pool="p", runner_id=None, state=JobState.succeeded, attempt=1)
            await bus.publish(s.job_finished.at("p"), finished)
            heard = await news.get()
            assert heard is not None and heard.job_id == job
        await bus.flush()  # the server has read the unsubscribes
        assert await followed(connz) == []
