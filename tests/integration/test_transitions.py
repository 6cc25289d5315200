"""The transitions against real Postgres: each edge checks it is legal, writes its events to the
outbox in the same transaction, and a refused one changes nothing and says why."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from orchestrator.store import End, Handoff, Start, Store
from schemas.jobs import JobState
from tests import factories
from tests.support import eventually


async def outbox(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT subject, body, durable FROM outbox ORDER BY seq")
    return [{"subject": r["subject"], "durable": r["durable"], **json.loads(r["body"])} for r in rows]


async def test_each_edge_writes_its_news_with_the_row_and_a_repeat_writes_none(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1")
    (job_id,) = await factories.queue(store, 1)
    (claimed,) = (await store.transitions.claim("default", 1)).assignments
    start = Start(job_id, "r1", claimed["attempt"] + 1)
    assert [j.id for j in await store.transitions.start_many([start])] == [job_id]
    end = End(job_id, "r1", start.attempt, JobState.failed, 3)
    assert len(await store.transitions.finish_many([end])) == 1
    # The same reports again: nothing changes, no news, and each is named a duplicate.
    assert await store.transitions.start_many([start]) == []
    assert await store.transitions.finish_many([end]) == []
    news = await outbox(store)
    assert [(n["subject"], n["type"]) for n in news] == [
        ("jobs.admitted.default", "JobAdmitted"),
        ("jobs.assigned.default", "JobAssigned"),  # asking to start acknowledged the hand-off
        ("jobs.started.default", "JobStarted"),
        ("jobs.finished.default", "JobFinished"),
    ]
    assert news[-1]["state"] == "failed" and news[-1]["exit_code"] == 3 and news[-1]["job_id"] == str(job_id)
    assert (await store.transitions.refusals("finish", [end]))[job_id][0] == "duplicate"
    assert (await store.transitions.refusals("start", [start]))[job_id][0] == "stale"  # it has ended


async def test_cancel_ends_an_unstarted_job_records_a_running_ones_and_refuses_an_ended_one(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=2)
    queued, assigned, running = await factories.queue(store, 3)
    first = await store.transitions.cancel(queued)
    assert (first.outcome, first.job.state) == ("cancelled", "cancelled")
    claimed = {a["id"]: a for a in (await store.transitions.claim("default", 2)).assignments}
    assert set(claimed) == {assigned, running}
    await store.transitions.start_many([Start(running, "r1", claimed[running]["attempt"] + 1)])
    # Assigned: nothing runs before a start is granted, so it ends now, and its start is refused.
    second = await store.transitions.cancel(assigned)
    assert (second.outcome, second.job.state) == ("cancelled", "cancelled")
    assert await store.transitions.start_many([Start(assigned, "r1", claimed[assigned]["attempt"] + 1)]) == []
    # Running: recorded, not ended; the slot stays taken until the runner confirms.
    third = await store.transitions.cancel(running)
    assert (third.outcome, third.job.state) == ("requested", "running")
    assert third.job.cancel_requested_at is not None
    assert (await store.transitions.cancel(running)).job.cancel_requested_at == third.job.cancel_requested_at
    assert (await store.transitions.cancel(queued)).outcome == "final"
    news = [(n["subject"], n["type"]) for n in await outbox(store)][3:]  # after the admissions
    assert news == [
        ("jobs.finished.default", "JobFinished"),  # queued
        ("jobs.assigned.default", "JobAssigned"),  # the start acknowledged the running one
        ("jobs.started.default", "JobStarted"),
        ("jobs.finished.default", "JobFinished"),  # assigned
        ("runners.r1.cancel", "JobCancelRequested"),
        ("runners.r1.cancel", "JobCancelRequested"),  # running: told at once
        ("runners.r1.cancel", "JobCancelRequested"),  # and again when asked again
    ]


async def test_an_ack_that_meets_a_row_another_edge_holds_waits_for_it(store: Store) -> None:
    """A take's poll (or any edge) holding the job's row when the ack comes: the ack is recorded
    once the row is free. Skipped instead (SKIP LOCKED), it was lost for good, and a runner that
    holds the job without starting it never had it acknowledged."""
    await factories.pool(store)
    await factories.runner(store, "r1")
    (job_id,) = await factories.queue(store, 1, payload={"command": ["true"]})
    (claimed,) = (await store.transitions.claim("default", 1)).assignments
    async with store.connection() as holder:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE", job_id)
            ack = asyncio.create_task(store.transitions.acknowledge([Handoff(job_id, "r1", claimed["assigned_at"])]))

            async def waiting() -> bool:
                if ack.done():  # it did not wait: it skipped the row
                    return True
                async with store.connection() as conn:  # not the holder's: its transaction sees one snapshot
                    found = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        " AND query LIKE '%acked_at%'"
                    )
                return found > 0

            await eventually(waiting, timeout=10, what="the ack to wait for the row")
            assert not ack.done(), await ack
        assert [job.id for job in await ack] == [job_id]
    job = await store.job_get(job_id)
    assert job is not None and job["acked_at"] is not None


async def test_an_ack_of_an_assignment_undone_does_not_wait_for_the_job(store: Store) -> None:
    """The job was requeued (its runner lost, say) and a claim holds its row, assigning it again,
    when the ack of the old assignment comes: nothing to record, and nothing to wait for. Locked
    for the ack too, the row made it wait for that claim, and the claim, which locks its rows in
    no set order, could wait for a row the ack held: a deadlock."""
    await factories.pool(store)
    await factories.runner(store, "r1")
    (job_id,) = await factories.queue(store, 1, payload={"command": ["true"]})
    (claimed,) = (await store.transitions.claim("default", 1)).assignments
    assert [job.id for job in await store.transitions.unassign("r1", [job_id])] == [job_id]
    async with store.connection() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE", job_id)
        acked = await asyncio.wait_for(
            store.transitions.acknowledge([Handoff(job_id, "r1", claimed["assigned_at"])]), timeout=10
        )
    assert acked == []
    job = await store.job_get(job_id)
    assert job is not None and job["state"] == "queued" and job["acked_at"] is None
