"""The retry policy in the state machine, against real Postgres: the end of an attempt that its
job's `retry` policy retries, while attempts remain, is edge running -> queued (not before the
backoff, `requeued` naming the outcome, no `finished`); any other end is final as before. Every
attempt that ends joins the job's history (`attempts`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from orchestrator.store import End, Heartbeat, Job, Start, Store
from schemas.jobs import JobState, RetryPolicy
from tests import factories


async def running(store: Store, runner_id: str = "r1", **spec: Any) -> UUID:
    """A job running its first attempt on `runner_id` (the pool and runner made too)."""
    await factories.pool(store)
    await factories.runner(store, runner_id, slots=4)
    (job_id,) = await factories.queue(store, 1, **spec)
    assert await start_queued(store, runner_id) == [job_id]
    return job_id


async def start_queued(store: Store, runner_id: str = "r1") -> list[UUID]:
    """Claim what can be claimed, and start it on `runner_id` (the only runner)."""
    step = await store.transitions.claim("default", 4)
    assert {a["runner_id"] for a in step.assignments} <= {runner_id}
    starts = [Start(a["id"], runner_id, a["attempt"] + 1) for a in step.assignments]
    return sorted(job.id for job in await store.transitions.start_many(starts))


async def row(store: Store, job_id: UUID) -> Job:
    job = await store.job_get(job_id)
    assert job is not None
    return job


async def news(store: Store, job_id: UUID) -> list[tuple[str, str | None]]:
    """The job's news in the outbox: (type, the requeue's reason or the end's state)."""
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT body FROM outbox ORDER BY seq")
    bodies = [json.loads(r["body"]) for r in rows]
    return [(b["type"], b.get("reason") or b.get("state")) for b in bodies if b.get("job_id") == str(job_id)]


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_failure_the_policy_retries_is_requeued_after_its_backoff_and_not_finished(store: Store) -> None:
    retry = {"on": ["failed"], "backoff_s": 30, "max_backoff_s": 60, "jitter": 0}
    job_id = await running(store, retry=retry, max_attempts=3)
    (requeued,) = await store.transitions.finish_many([End(job_id, "r1", 1, JobState.failed, 3, "exit status 3")])
    assert (requeued.id, requeued.state) == (job_id, "queued")

    job = await row(store, job_id)
    assert (job.state, job.attempt, job.runner_id, job.exit_code, job.finished_at) == ("queued", 1, None, None, None)
    (attempt,) = job.attempts or []
    assert {k: attempt[k] for k in ("attempt", "runner_id", "outcome", "exit_code", "reason")} == {
        "attempt": 1,
        "runner_id": "r1",
        "outcome": "failed",
        "exit_code": 3,
        "reason": "exit status 3",
    }
    assert at(attempt["started_at"]) == job.started_at
    assert job.not_before == at(attempt["ended_at"]) + timedelta(seconds=30)  # no jitter asked

    # Not claimable before then, and the claim says when it will be.
    step = await store.transitions.claim("default", 4)
    assert step.status == "no_job"
    assert step.due_in_s is not None and 29 < step.due_in_s <= 30

    assert await news(store, job_id) == [
        ("JobAdmitted", None),
        ("JobAssigned", None),
        ("JobStarted", None),
        ("JobRequeued", "failed"),  # and no JobFinished: the job has not ended
    ]
    # The runner's report again (its answer was lost): nothing changes, and it is a duplicate.
    end = End(job_id, "r1", 1, JobState.failed, 3, "exit status 3")
    assert await store.transitions.finish_many([end]) == []
    assert (await store.transitions.refusals("finish", [end]))[job_id][0] == "duplicate"


async def test_by_default_a_failure_is_final(store: Store) -> None:
    job_id = await running(store)
    (ended,) = await store.transitions.finish_many([End(job_id, "r1", 1, JobState.failed, 1)])
    assert ended.state == "failed"
    job = await row(store, job_id)
    assert [(a["attempt"], a["outcome"], a["exit_code"]) for a in job.attempts or []] == [(1, "failed", 1)]
    assert (await news(store, job_id))[-1] == ("JobFinished", "failed")


async def test_the_last_attempt_ends_the_job_whatever_the_policy(store: Store) -> None:
    job_id = await running(store, retry={"on": ["failed"], "backoff_s": 0}, max_attempts=2)
    assert (await store.transitions.finish_many([End(job_id, "r1", 1, JobState.failed, 1)]))[0].state == "queued"
    assert await start_queued(store) == [job_id]
    assert (await store.transitions.finish_many([End(job_id, "r1", 2, JobState.failed, 1)]))[0].state == "failed"
    job = await row(store, job_id)
    assert [(a["attempt"], a["outcome"]) for a in job.attempts or []] == [(1, "failed"), (2, "failed")]
    assert [t for t, _ in await news(store, job_id)].count("JobFinished") == 1


async def test_a_late_report_of_a_retried_attempt_does_not_end_its_next_assignment(store: Store) -> None:
    """A runner repeats a report whose answer it lost; meanwhile the job was retried and handed
    to the same runner again. The repeat is the attempt already recorded, not this assignment's end."""
    job_id = await running(store, retry={"on": ["failed"], "backoff_s": 0})
    end = End(job_id, "r1", 1, JobState.failed, 1)
    await store.transitions.finish_many([end])
    step = await store.transitions.claim("default", 4)
    assert [(a["id"], a["runner_id"]) for a in step.assignments] == [(job_id, "r1")]
    assert await store.transitions.finish_many([end]) == []
    assert (await store.transitions.refusals("finish", [end]))[job_id][0] == "duplicate"
    assert (await row(store, job_id)).state == "assigned"


async def test_a_timed_out_attempt_is_retried_when_asked_also_when_the_server_ends_it(store: Store) -> None:
    retry = {"on": ["timed_out"], "backoff_s": 0}
    job_id = await running(store, retry=retry, timeout_s=30)
    (requeued,) = await store.transitions.finish_many([End(job_id, "r1", 1, JobState.timed_out, None, "timeout")])
    assert requeued.state == "queued"
    assert await start_queued(store) == [job_id]
    # The runner says nothing this time: the server's own timeout ends the attempt, retried too,
    # and the runner is told to let it go.
    later = datetime.now(UTC) + timedelta(seconds=60)
    (timed_out,) = await store.transitions.time_out(10, now=later)
    assert (timed_out.id, timed_out.state) == (job_id, "queued")
    job = await row(store, job_id)
    assert [a["outcome"] for a in job.attempts or []] == ["timed_out", "timed_out"]
    assert (await news(store, job_id))[-2:] == [("JobRequeued", "timed_out"), ("JobCancelRequested", None)]
    found = await store.transitions.heartbeat(Heartbeat("r1", [job_id], seq=1))
    assert found is not None and [(s.job_id, s.why) for s in found.stop] == [(job_id, "not_yours")]


async def test_a_lost_runners_attempt_is_retried_only_if_the_policy_says_lost(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=4)
    (default,) = await factories.queue(store, 1)
    (only_failed,) = await factories.queue(store, 1, retry={"on": ["failed"]})
    assert await start_queued(store) == sorted([default, only_failed])
    await store.transitions.heartbeat(Heartbeat("r1", [], seq=1, acked_seq=0))
    found = await store.transitions.heartbeat(Heartbeat("r1", [], seq=2, acked_seq=1))
    assert found is not None
    assert {job.id: (job.state, job.reason) for job in found.released} == {
        default: ("queued", None),
        only_failed: ("failed", "runner_lost"),
    }
    for job_id in (default, only_failed):
        job = await row(store, job_id)
        assert [(a["outcome"], a["reason"]) for a in job.attempts or []] == [("lost", "runner_lost")]
    # The default backoff is what it always was: 1 s after the first attempt.
    lost = (await row(store, default)).attempts or []
    assert (await row(store, default)).not_before == at(lost[0]["ended_at"]) + timedelta(seconds=1)


async def test_a_failure_after_a_cancel_was_requested_is_not_retried(store: Store) -> None:
    job_id = await running(store, retry={"on": ["failed"], "backoff_s": 0})
    await store.transitions.cancel(job_id)
    (ended,) = await store.transitions.finish_many([End(job_id, "r1", 1, JobState.failed, 1)])
    assert ended.state == "failed"


async def test_the_backoff_doubles_up_to_its_cap_less_at_most_its_jitter(store: Store) -> None:
    policy = {"on": ["failed"], "backoff_s": 2, "max_backoff_s": 20, "jitter": 0.5}
    async with store.connection() as conn:

        async def delays(outcome: str, attempt: int, max_attempts: int = 100) -> list[float | None]:
            sql = "SELECT job_retry_delay($1::jsonb, $2, $3, $4) FROM generate_series(1, 200)"
            return [r[0] for r in await conn.fetch(sql, policy, outcome, attempt, max_attempts)]

        for attempt, full in ((1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (30, 20)):
            drawn = await delays("failed", attempt)
            assert all(full * 0.5 <= d <= full for d in drawn), (attempt, min(drawn), max(drawn))  # type: ignore[operator]
            assert len(set(drawn)) > 1  # jittered
        assert set(await delays("timed_out", 1)) == {None}  # not an outcome it retries
        assert set(await delays("failed", 3, max_attempts=3)) == {None}  # no attempts left


async def test_a_job_without_a_policy_has_the_default_one(store: Store) -> None:
    """Stored as NULL (no policy given, or admitted before `retry` existed), a job's policy is
    RetryPolicy(): job_retry_delay() and the schema agree on it."""
    default = RetryPolicy()
    async with store.connection() as conn:
        for outcome in ("lost", "failed", "timed_out"):
            for attempt in range(1, 10):
                delay = await conn.fetchval("SELECT job_retry_delay(NULL, $1, $2, 100)", outcome, attempt)
                want = (
                    min(default.max_backoff_s, default.backoff_s * 2 ** (attempt - 1))
                    if outcome in default.on
                    else None
                )
                assert delay == want, (outcome, attempt)
