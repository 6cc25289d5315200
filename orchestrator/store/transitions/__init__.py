"""The job state machine: one function per edge, the only code that changes a job's state.

    queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
    queued -> cancelled | expired | failed (unsatisfiable);  assigned | running -> expired
    assigned -> queued (hand-off undone: not an attempt);  running -> queued | failed (runner lost)
    running -> queued (an attempt's end its job's retry policy retries, attempts left: not an end)

A job's `retry` policy decides which ends of an attempt start another (lost by default; failed,
timed_out on request) while attempts remain, and after what backoff (job_retry_delay(), in the
migration that made it); every attempt that ends joins the job's history (`attempts`).

Each edge is one transaction that checks the edge is legal (the query's WHERE: state, runner,
attempt; the claim also checks the fencing epoch), writes the rows, and writes the edge's
events to the outbox; most are a single statement that does all three, composing its events
in Postgres (job_news(), see news.py). The relay
(orchestrator/outbox.py) publishes them after the commit, so news of a committed change is never
lost to a crash between commit and publish, and news of a change that did not commit is never
sent. Services call these functions; none composes a state-change event itself.

A refused edge (a stale or repeated report, a job in another state) changes nothing and comes
back empty: callers answer it as such (`stale`, 409), never as success.

Events, by edge: admit -> `admitted`; acknowledge (the runner acked the hand-off, or asked to
start) -> `assigned`; start -> `started`; every end (finish, finish a reservation, cancel a
queued job, expire, fail unsatisfiable, a lost runner's last attempt) -> `finished` with the
final state (and `expired` for an expiry); unassign / requeue unstarted / release with attempts
left / an end the policy retries -> `requeued` (its reason says why: the outcome, for a retry).
A runner holding a job that ended without it (cancelled, expired, finished by its client, or
timed out by the server) is told with a `JobCancelRequested` on its cancel subject, written to
the outbox as core NATS news (best effort: the runner's heartbeats are the durable path).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from orchestrator.errors import NotFound
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job
from orchestrator.store.transitions import news
from orchestrator.store.transitions.args import (
    Cancel,
    ClaimStep,
    End,
    Fence,
    Handoff,
    Heartbeat,
    KeyLive,
    NewJob,
    Reconciled,
    Rejection,
    RunnerSpec,
    Start,
    Stop,
    refusal,
)
from orchestrator.store.transitions.batches import AdmissionTx, PoolChangeTx, ShapeIds, shape_key
from orchestrator.store.transitions.edges import UNAVAILABLE_RETRY_S
from orchestrator.store.transitions.journal import Journal, Level
from orchestrator.store.transitions.runners import RunnerEdges
from schemas.jobs import JobState

if TYPE_CHECKING:
    from orchestrator.store.store import Store

# Shape ids remembered (see Transitions): more shapes than a fleet's jobs use at a time in
# practice, and at a few hundred bytes each, a few MB at most.
SHAPES_REMEMBERED = 10_000

__all__ = [
    "UNAVAILABLE_RETRY_S",
    "AdmissionTx",
    "Cancel",
    "ClaimStep",
    "End",
    "Fence",
    "Handoff",
    "Heartbeat",
    "Journal",
    "KeyLive",
    "Level",
    "NewJob",
    "PoolChangeTx",
    "Reconciled",
    "Rejection",
    "RunnerSpec",
    "Start",
    "Stop",
    "Transitions",
    "refusal",
    "shape_key",
]


# --- the edges ---------------------------------------------------------------------------------


class Transitions(RunnerEdges):
    """Every edge of the job state machine, each in its own transaction (see the module note):
    a runner's registration, heartbeats and loss in `RunnerEdges` (runners.py), how an edge
    runs in `Edges` (edges.py)."""

    def __init__(self, store: Store, journal: Journal | None = None) -> None:
        super().__init__(store, journal)
        # Shape ids, remembered for the version of their pool's shapes (batches.ShapeIds).
        self._shapes = ShapeIds(SHAPES_REMEMBERED)

    # admission and pool changes: transactions that decide many things under their locks

    @asynccontextmanager
    async def admission(self, pools: Iterable[str], keys: Iterable[str]) -> AsyncIterator[AdmissionTx]:
        """Edge (none) -> queued, for a batch: the named pools locked against other admissions
        and pool changes (in name order, so two batches never deadlock), their configuration and
        the jobs already holding any of `keys` read under those locks."""
        async with self._store.transaction() as conn:
            names = sorted(set(pools))
            for name in names:
                await conn.execute(Q["pool_admission_lock"], name)
            configs = {r["name"]: dict(r) for r in await conn.fetch(Q["pool_get_many"], names)}
            wanted = sorted(set(keys))  # none (keyless jobs): no round trip to read them
            existing = {r["key"]: dict(r) for r in await conn.fetch(Q["job_list_by_keys"], wanted)} if wanted else {}
            tx = AdmissionTx(conn, configs, existing, self._shapes)
            yield tx
        news.committed()
        self._shapes.remember(tx.new_shapes)  # committed: safe to remember
        self._store.statistics.added("job_shapes", tx.shapes_created)
        self._store.statistics.added("jobs", len(tx.inserted))
        self._journal.record(tx.inserted, verb="admitted")
        # Jobs a new one of their key replaced (on_conflict): ended, or their runner told to stop.
        self._journal.record([job for job in tx.cancelled if job.state != JobState.running])
        self._journal.record([job for job in tx.cancelled if job.state == JobState.running], verb="cancel requested")

    @asynccontextmanager
    async def pool_change(self, name: str) -> AsyncIterator[PoolChangeTx]:
        """One pool-change transaction: the pool locked against admissions (its admission lock)
        and against dispatch (its row), and its current row (None for a new pool)."""
        async with self._store.transaction() as conn:
            await conn.execute(Q["pool_admission_lock"], name)
            current = await conn.fetchrow(Q["pool_lock_for_change"], name)
            tx = PoolChangeTx(conn, name, dict(current) if current else None)
            yield tx
        news.committed()
        self._journal.record(tx.failed)

    # dispatch

    async def claim(self, pool: str, limit: int, fence: Fence | None = None) -> ClaimStep:
        """Edge queued -> assigned: claim up to `limit` jobs of `pool` for runners with free
        slots, never past the pool's `max_concurrent`, in one statement (`claim_step`, migration
        0009). No news yet: the assignment is announced once its runner acknowledges it (as its
        start records it, or `acknowledge`). A job waiting out a retry backoff is not claimed
        before it is due; the step says when the first one is (`due_in_s`), and when the next
        start under a rate limit or the pool's max_starts_per_s is, if it passed over jobs for
        one. A concurrency key at its limit holds its jobs back until one of its jobs ends
        (`held_by_key`).

        With a `fence`, the statement first checks the shard's stored epoch (holding it shared to
        its end, so a successor's new term waits for it): another one means a newer leader was
        elected, and the step claims nothing (`fenced`). Then, with the pool's row locked, that
        the pool is the fence's shard's: a pool that moved to another shard (or a shard of an
        earlier shard count) claims nothing (`wrong_shard`). Not retried when Postgres is lost
        mid-claim: run again after its COMMIT, it would claim more jobs than it hands off (a
        deadlock, which rolled it back, is run again)."""
        shard, epoch = (fence.shard, fence.epoch) if fence is not None else (None, None)

        async def claim(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return await conn.fetch(Q["job_claim_step"], pool, limit, shard, epoch)

        # Two claims taking keys in two of their groups can meet in a deadlock: run it again.
        *claimed, summary = await self._transact(claim, one_statement=True)
        return ClaimStep(
            summary["status"],
            [dict(r) for r in claimed],
            summary["in_flight"],
            summary["due_in_s"],
            summary["held_by_key"] or 0,
            summary["held_by_rate"] or 0,
        )

    async def acknowledge(self, handoffs: Sequence[Handoff]) -> list[Job]:
        """The runner acked these hand-offs: `assigned` news (once per assignment). Idempotent:
        an acknowledged assignment (`acked_at`) is not acknowledged again."""
        if not handoffs:
            return []
        return await self._edge("job_acknowledge_many", news.columns(handoffs, 3), idempotent=True)

    async def unassign(self, runner_id: str, job_ids: Sequence[UUID]) -> list[Job]:
        """Edge assigned -> queued: hand-offs `runner_id` refused or did not ack (not an attempt).
        Not idempotent: run again after its COMMIT, it would undo a new assignment of the same
        job to the same runner (its WHERE does not name the assignment)."""
        why = "handoff_failed"
        return await self._edge("job_unassign", (list(job_ids), runner_id, None, None, why), why=why)

    async def requeue_unstarted(self, after_s: float, now: datetime | None = None) -> list[Job]:
        """Edge assigned -> queued: assignments not started within `after_s` (not an attempt)."""
        why = "not_started"
        # A sweep: run again, it requeues what is stale then, as the next sweep would.
        return await self._edge("job_unassign", ([], None, after_s, now, why), why=why, idempotent=True)

    # runner reports

    async def start_many(self, starts: Sequence[Start]) -> list[Job]:
        """Edge assigned -> running: permission to start, for the runner a job is assigned to and
        that very attempt. The granted jobs. Idempotent: a start already granted is refused as
        a `duplicate` (see `refusals`), which the runner is answered as granted."""
        jobs = await self._edge("job_start_many", news.columns(starts, 3), logged=False, idempotent=True)
        self._journal.record([job for job in jobs if job.acked_now], verb="assigned")  # as its news says
        self._journal.record(jobs)
        return jobs

    async def finish_many(self, ends: Sequence[End]) -> list[Job]:
        """Edge running -> final, as runners report, or running -> queued for an end the job's
        retry policy retries; the recorded jobs (a report of an attempt already ended, or not
        this runner's, changes nothing: idempotent, a `duplicate` answered as recorded)."""
        rows = [(e.job_id, e.runner_id, e.attempt, e.state.value, e.exit_code, e.reason) for e in ends]
        return await self._edge("job_finish_many", news.columns(rows, 6), idempotent=True)

    async def refusals(self, kind: str, reports: Sequence[Start | End]) -> dict[UUID, tuple[str, str]]:
        """Why each of these `start` / `finish` reports changed nothing (see `refusal`)."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(Q["job_get_many"], [r.job_id for r in reports])
        jobs = {r["id"]: Job.from_record(r) for r in rows}
        return {r.job_id: refusal(kind, r, jobs.get(r.job_id)) for r in reports}

    # producers, take clients and sweeps

    async def finish_held(self, job_id: UUID, state: JobState, exit_code: int | None, reason: str) -> Job | None:
        """Edge assigned | running -> final, as a reservation's client says; None if no runner
        holds it. Its runner is told to let go. Not retried after an unanswered COMMIT: run
        again, it would answer "not held" for the end it recorded."""
        jobs = await self._edge("job_finish_held", (job_id, state.value, exit_code, reason))
        return jobs[0] if jobs else None

    async def cancel(self, job_id: UUID) -> Cancel:
        """Cancel a job: queued or assigned, it ends at once (nothing runs before a start is
        granted); running, the request is recorded and its runner told (now, and on every
        heartbeat until it reports the end); ended, refused. Not retried after an unanswered
        COMMIT: run again, a cancel would answer "already ended", and a cancel request would
        tell the runner twice."""
        ended = await self._edge("job_cancel_unstarted", ([job_id], ["cancelled"]))
        if ended:
            return Cancel("cancelled", ended[0])
        requested = await self._edge("job_cancel_request", ([job_id],), verb="cancel requested")
        if requested:
            return Cancel("requested", requested[0])
        async with self._store.transaction() as conn:
            current = await conn.fetchrow(Q["job_get"], job_id)
        if current is None:
            raise NotFound(f"no job {job_id}")
        now = Job.from_record(current)
        if JobState(now.state).final:
            return Cancel("final", now)
        return await self.cancel(job_id)  # it moved between the two edges: decide again

    async def time_out(self, margin_s: float, now: datetime | None = None) -> list[Job]:
        """Edge running -> timed_out (or -> queued, when the job's retry policy retries it), by
        the server: jobs running `margin_s` (the runner's kill grace and its report's way) past
        their `timeout_s`; their runners are told to kill them. A sweep: idempotent."""
        return await self._edge("job_time_out", (margin_s, now), idempotent=True)

    async def expire_abandoned(self, now: datetime | None = None) -> list[Job]:
        """Edge queued | assigned | running -> expired: take-style jobs whose client stopped
        polling before taking its runner; a runner holding one is told to let go. A sweep:
        idempotent."""
        return await self._edge("job_expire_abandoned", (now,), idempotent=True)
