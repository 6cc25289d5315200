"""Hand-offs are pipelined (issue 19): a runner slow to acknowledge its assignment holds back only
its own jobs. The pool's other runners keep taking work while that hand-off waits for its answer,
where a drain used to wait for every runner of its step (up to the ack timeout) before the next.

An ack costs a write of its own only when the runner does not start the job at once: its start
records the ack (issue 19: a write and a row version a job fewer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import JobAssigned, Reply
from services.dispatch import handoff
from tests import factories
from tests.support import agent, eventually, stream_events

POOL = "p"


async def test_a_runner_that_does_not_answer_its_hand_off_holds_back_only_its_own_job(
    settings: Settings, store: Store, bus: Bus
) -> None:
    # An ack timeout longer than the test's patience: a drain that waited for it would fail here.
    settings = settings.model_copy(update={"assign_ack_timeout_s": 60.0})
    await factories.pool(store, POOL)
    answer = asyncio.Event()
    asked = asyncio.Event()

    async def mute(event: JobAssigned) -> Reply:  # a runner stuck before it could answer
        asked.set()
        await answer.wait()
        return Reply(ok=False)

    await factories.runner(store, "mute", pool=POOL)
    muted = await bus.subscribe(bus.subjects.assign.at("mute"), mute)
    runtime = Runtime(settings, ["capacity", "dispatch"])
    good = agent(settings, bus, runner_id="good", pool=POOL, labels=[], slots=1)
    try:
        await runtime.start()
        await good.start()  # registers with capacity
        await factories.queue(store, 4, pool=POOL, payload={"command": ["true"]})
        await asyncio.wait_for(asked.wait(), timeout=30)

        async def good_ran_three() -> bool:
            jobs = await store.job_list(pool=POOL, state="succeeded", key=None, limit=10)
            return len([j for j in jobs if j["runner_id"] == "good"]) >= 3

        # One slot, one job at a time: each of the three after the first needs a step of its own
        # while the mute runner's hand-off is still waiting.
        await eventually(good_ran_three, timeout=30, what="the answering runner to run the other jobs")
        assert not answer.is_set()
    finally:
        answer.set()
        await runtime.stop()
        await good.stop()
        await muted.unsubscribe()


# Every version of a job row that changed its state or its ack, in the order written: what a
# state history (tests/history.py) does not show.
ROW_VERSIONS = """
CREATE TABLE job_versions (seq bigint GENERATED ALWAYS AS IDENTITY, id uuid, state text, acked boolean);
CREATE FUNCTION record_job_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_versions (id, state, acked) VALUES (NEW.id, NEW.state, NEW.acked_at IS NOT NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER record_job_version AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.acked_at IS DISTINCT FROM NEW.acked_at)
    EXECUTE FUNCTION record_job_version();
"""


async def test_a_job_its_runner_starts_at_once_is_acknowledged_by_its_start_alone(
    settings: Settings, store: Store, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed, started (with the ack), ended: three versions of the row. Recording each ack in a
    transaction of its own, as the hand-off was answered, wrote a fourth (`assigned`, acked) for
    nearly every job, and raced the start for the row."""
    monkeypatch.setattr(handoff, "ACK_RECORD_DELAY_S", 60.0)  # however slow the machine is
    await factories.pool(store, POOL)
    async with store.connection() as conn:
        await conn.execute(ROW_VERSIONS)
    runtime = Runtime(settings, ["capacity", "dispatch"])
    runner = agent(settings, bus, runner_id="r1", pool=POOL, labels=[], slots=4)
    try:
        await runtime.start()
        await runner.start()
        ids = await factories.queue(store, 20, pool=POOL, payload={"command": ["true"]})

        async def all_succeeded() -> bool:
            return len(await store.job_list(pool=POOL, state="succeeded", key=None, limit=50)) == len(ids)

        await eventually(all_succeeded, timeout=30, what="every job to run")
        await runtime.stop()  # the acks still waiting look for their jobs: all started
        async with store.connection() as conn:
            rows = await conn.fetch("SELECT id, state, acked FROM job_versions ORDER BY seq")
    finally:
        await runtime.stop()
        await runner.stop()
    versions: dict[object, list[tuple[str, bool]]] = {}
    for r in rows:
        versions.setdefault(r["id"], []).append((r["state"], r["acked"]))
    expected = [("assigned", False), ("running", True), ("succeeded", True)]
    assert {str(i): v for i, v in versions.items() if v != expected} == {}
    assert len(versions) == len(ids)


@contextlib.asynccontextmanager
async def _one_job_held_unstarted(settings: Settings, store: Store, bus: Bus) -> AsyncIterator[tuple[Runtime, Any]]:
    """Dispatch running, and one job handed to runner `holder`, which acked it and never asks
    to start it; the runtime and the job's id."""
    await factories.pool(store, POOL)
    acked = asyncio.Event()

    async def holds(event: JobAssigned) -> Reply:
        acked.set()
        return Reply(ok=True)

    await factories.runner(store, "holder", pool=POOL)
    holding = await bus.subscribe(bus.subjects.assign.at("holder"), holds)
    runtime = Runtime(settings, ["dispatch"])
    try:
        await runtime.start()
        [job_id] = await factories.queue(store, 1, pool=POOL, payload={"command": ["true"]})
        await asyncio.wait_for(acked.wait(), timeout=30)
        yield runtime, job_id
    finally:
        await runtime.stop()
        await holding.unsubscribe()


async def test_an_ack_its_runner_does_not_follow_with_a_start_is_recorded_by_the_dispatcher(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A runner may hold a job before it asks to start it: its ack is recorded all the same, a
    moment later (`ACK_RECORD_DELAY_S`), with the `assigned` news a take waits for."""
    async with _one_job_held_unstarted(settings, store, bus) as (_, job_id):

        async def recorded() -> dict[str, object] | None:
            job = await store.job_get(job_id)
            return job if job is not None and job["acked_at"] is not None else None

        job = await eventually(recorded, timeout=10 + handoff.ACK_RECORD_DELAY_S, what="the ack to be recorded")
        assert (job["state"], job["runner_id"]) == ("assigned", "holder")

        async def announced() -> list[dict[str, object]]:
            return [e for e in await stream_events(bus, "assigned") if e.get("job_id") == str(job_id)]

        assert len(await eventually(announced, timeout=10, what="its `assigned` news")) == 1


async def test_a_stop_records_the_acks_still_waiting_out_their_delay(
    settings: Settings, store: Store, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher stops (its lease is released after) without waiting out an ack's delay:
    the acks waiting are recorded at once. Waited for, they would have been cut off by the stop
    timeout (2 s here) and lost: the job unacknowledged until the unstarted sweep requeued it."""
    monkeypatch.setattr(handoff, "ACK_RECORD_DELAY_S", 60.0)
    async with _one_job_held_unstarted(settings, store, bus) as (runtime, job_id):
        await runtime.stop()
        job = await store.job_get(job_id)
        assert job is not None and (job["state"], job["acked_at"] is not None) == ("assigned", True)
