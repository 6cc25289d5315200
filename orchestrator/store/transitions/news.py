"""The events of each edge, written to the outbox in the edge's own transaction (one `unnest`
insert), and the helpers every edge runs its query through.

Events are built with `model_construct`: their values come from rows Postgres just wrote through
the schemas' own checks, and validating them again cost a fifth of an edge's CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
from pydantic import BaseModel

from orchestrator.bus.subjects import job_news, runner_cancel
from orchestrator.failpoints import failpoint
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job
from schemas.events import (
    JobAdmitted,
    JobAssigned,
    JobCancelRequested,
    JobExpired,
    JobFinished,
    JobRejected,
    JobRequeued,
    JobStarted,
)
from schemas.jobs import JobState

# --- the events of each edge -------------------------------------------------------------------


class Outgoing(NamedTuple):
    """One outbox row: an event and where it goes (relative to the namespace)."""

    subject: str
    event: BaseModel
    durable: bool = True


def rejected(key: str | None, pool: str | None, reason: str, message: str, field: str | None) -> Outgoing:
    """The news that a door refused a job (no job row exists)."""
    event = JobRejected(key=key, pool=pool, reason=reason, message=message, field=field)
    return Outgoing(job_news("rejected", pool or "_invalid"), event)


def admitted(job: Job) -> list[Outgoing]:
    assert job.key is not None
    return [
        Outgoing(
            job_news("admitted", job.pool),
            JobAdmitted.model_construct(job_id=job.id, key=job.key, pool=job.pool, priority=job.priority),
        )
    ]


def assigned(job: Job) -> Outgoing:
    assert job.runner_id is not None
    # The assignment's attempt: the next one while assigned, the current one once started.
    attempt = job.attempt + 1 if job.state == JobState.assigned else job.attempt
    event = JobAssigned.model_construct(
        job_id=job.id,
        pool=job.pool,
        runner_id=job.runner_id,
        attempt=attempt,
        payload=job.payload or {},
        timeout_s=job.timeout_s,
        trace_context=job.trace_context or {},
    )
    return Outgoing(job_news("assigned", job.pool), event)


def started(job: Job) -> list[Outgoing]:
    assert job.runner_id is not None
    news = [assigned(job)] if job.acked_now else []
    news.append(
        Outgoing(
            job_news("started", job.pool),
            JobStarted.model_construct(job_id=job.id, pool=job.pool, runner_id=job.runner_id, attempt=job.attempt),
        )
    )
    return news


def finished(job: Job) -> Outgoing:
    event = JobFinished.model_construct(
        job_id=job.id,
        pool=job.pool,
        runner_id=job.runner_id,
        attempt=job.attempt,
        state=JobState(job.state),
        exit_code=job.exit_code,
        reason=job.reason,
    )
    return Outgoing(job_news("finished", job.pool), event)


def cancel_runner(job: Job, runner_id: str | None) -> list[Outgoing]:
    """Tell the runner holding `job` to stop it (none holds it: nothing)."""
    if runner_id is None:
        return []
    event = JobCancelRequested.model_construct(job_id=job.id, pool=job.pool, runner_id=runner_id)
    return [Outgoing(runner_cancel(runner_id), event, durable=False)]


def requeued(job: Job, reason: str) -> Outgoing:
    event = JobRequeued.model_construct(
        job_id=job.id, pool=job.pool, runner_id=job.previous_runner_id, attempt=job.attempt, reason=reason
    )
    return Outgoing(job_news("requeued", job.pool), event)


def ended_by_runner(job: Job) -> list[Outgoing]:
    return [finished(job)]


def ended_held(job: Job) -> list[Outgoing]:
    """A job a runner holds ended without it (its client finished it): the runner lets go."""
    return [finished(job), *cancel_runner(job, job.runner_id)]


def expired(job: Job) -> list[Outgoing]:
    expired = JobExpired.model_construct(
        job_id=job.id, pool=job.pool, runner_id=job.runner_id, reason=job.reason or "abandoned"
    )
    return [Outgoing(job_news("expired", job.pool), expired), finished(job), *cancel_runner(job, job.runner_id)]


def released(job: Job) -> list[Outgoing]:
    """A lost (or restarted) runner's job: requeued while attempts remain, else failed."""
    if job.state == JobState.queued:
        return [requeued(job, "runner_lost")]
    return [finished(job)]


async def write(conn: asyncpg.Connection, news: Sequence[Outgoing]) -> None:
    if not news:
        return
    await conn.execute(
        Q["outbox_insert_many"],
        [n.event.id for n in news],  # type: ignore[attr-defined]
        [n.subject for n in news],
        [n.event.model_dump_json().encode() for n in news],
        [n.durable for n in news],
    )


async def apply(conn: asyncpg.Connection, query: str, args: Sequence[Any], news: Any) -> list[Job]:
    """Run an edge's query in the caller's transaction and write the events of what it changed."""
    jobs = [Job.from_record(r) for r in await conn.fetch(Q[query], *args)]
    await write(conn, [n for job in jobs for n in news(job)])
    return jobs


DEADLOCK_RETRIES = 3


def columns(items: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Typed argument tuples (a job id first) as one array per field for an unnest() query, in
    job id order: every batched edge then locks its rows in the same order."""
    ordered = sorted(items, key=lambda item: item[0])
    return [list(c) for c in zip(*ordered, strict=True)] if items else [[] for _ in range(width)]


def committed() -> None:
    # The gap a crash between commit and publish used to lose: now the outbox has the news.
    failpoint("transition.committed")
