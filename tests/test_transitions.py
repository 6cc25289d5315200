"""The transitions against real Postgres: each edge checks it is legal, writes its events to the
outbox in the same transaction, and a refused one changes nothing and says why."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

from orchestrator.store import End, Job, Start, Store
from orchestrator.store.transitions import refusal
from schemas.jobs import JobState
from tests import factories


async def outbox(store: Store) -> list[dict[str, Any]]:
    async with store._conn() as conn:
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


async def test_cancel_ends_a_queued_job_tells_a_runner_and_refuses_an_ended_one(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1")
    queued, held = await factories.queue(store, 2)
    first = await store.transitions.cancel({"id": queued})
    assert (first.outcome, first.job.state) == ("cancelled", "cancelled")
    (claimed,) = (await store.transitions.claim("default", 1)).assignments
    assert claimed["id"] == held
    assert (await store.transitions.cancel({"id": held})).outcome == "requested"
    assert (await store.transitions.cancel({"id": queued})).outcome == "final"
    news = [(n["subject"], n["type"], n["durable"]) for n in await outbox(store)][2:]  # after the admissions
    assert news == [
        ("jobs.finished.default", "JobFinished", True),
        ("runners.r1.cancel", "JobCancelRequested", False),
    ]


def test_a_refused_report_says_whether_it_is_a_duplicate_or_stale() -> None:
    job_id = uuid4()
    running = Job(id=job_id, pool="p", state="running", attempt=2, runner_id="r1")
    assert refusal("start", Start(job_id, "r1", 2), running)[0] == "duplicate"
    assert refusal("start", Start(job_id, "r2", 2), running) == (
        "stale",
        f"job {job_id} attempt 2 is not r2's to start: it is running, attempt 2 on r1",
    )
    ended = Job(id=job_id, pool="p", state="succeeded", attempt=2, runner_id="r1")
    assert refusal("finish", End(job_id, "r1", 2, JobState.succeeded), ended)[0] == "duplicate"
    assert refusal("finish", End(job_id, "r1", 1, JobState.succeeded), ended)[0] == "stale"  # an older attempt
    assert refusal("finish", End(job_id, "r1", 1, JobState.succeeded), None) == ("stale", f"no job {job_id}")
