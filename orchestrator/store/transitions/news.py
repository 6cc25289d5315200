"""The news every transition writes to the outbox, in the edge's own statement.

A job's events are composed in Postgres by the statement that changes the job (job_news(), see
queries/transitions.sql): an edge is one statement, with no transaction round trips around it,
and Python neither builds nor encodes them (that was a third of an edge's CPU). Only a door's
refusal, which has no job row, is composed here (`rejected`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
from pydantic import BaseModel

from orchestrator.bus.subjects import Subjects
from orchestrator.bus.topics import Topic
from orchestrator.failpoints import failpoint
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job
from schemas.events import JobRejected
from schemas.jobs import NAME_PATTERN

# --- a door's refusal -------------------------------------------------------------------


class Outgoing(NamedTuple):
    """One outbox row: an event and the topic it goes to (relative to the namespace)."""

    topic: Topic[Any]
    event: BaseModel
    durable: bool = True


# A pool's name is a subject token; an invalid body's `pool` may be anything ('a.b', '*', ' ').
_POOL_TOKEN = re.compile(NAME_PATTERN)


def rejected(key: str | None, pool: str | None, reason: str, message: str, field: str | None) -> Outgoing:
    """The news that a door refused a job (no job row exists), on its pool's subject when the
    pool it named could be one, else on `_invalid` (no pool is named so)."""
    event = JobRejected(key=key, pool=pool, reason=reason, message=message, field=field)
    token = pool if pool is not None and _POOL_TOKEN.fullmatch(pool) else "_invalid"
    return Outgoing(Subjects.job_rejected.at(token), event)


async def write(conn: asyncpg.Connection, news: Sequence[Outgoing]) -> None:
    if not news:
        return
    await conn.execute(
        Q["outbox_insert_many"],
        [n.event.id for n in news],  # type: ignore[attr-defined]
        [n.topic.relative for n in news],
        [n.event.model_dump_json().encode() for n in news],
        [n.durable for n in news],
    )


async def apply(conn: asyncpg.Connection, query: str, args: Sequence[Any]) -> list[Job]:
    """Run an edge's statement (it writes its own news); the jobs it changed."""
    return [Job.from_record(r) for r in await conn.fetch(Q[query], *args)]


DEADLOCK_RETRIES = 3


def columns(items: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Typed argument tuples (a job id first) as one array per field for an unnest() query, in
    job id order: every batched edge then locks its rows in the same order."""
    ordered = sorted(items, key=lambda item: item[0])
    return [list(c) for c in zip(*ordered, strict=True)] if items else [[] for _ in range(width)]


def committed() -> None:
    # The gap a crash between commit and publish used to lose: now the outbox has the news.
    failpoint("transition.committed")
