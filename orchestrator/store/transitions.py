"""The job state machine: one function per edge, the only code that changes a job's state.

    queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
    queued -> cancelled | expired | failed (unsatisfiable);  assigned | running -> expired
    assigned -> queued (hand-off undone: not an attempt);  running -> queued | failed (runner lost)

Each edge is one transaction that checks the edge is legal (the query's WHERE: state, runner,
attempt; the claim also checks the fencing epoch), writes the rows, and writes the edge's
events to the outbox in one statement (`outbox_insert_many`, unnest). The relay
(orchestrator/outbox.py) publishes them after the commit, so news of a committed change is never
lost to a crash between commit and publish, and news of a change that did not commit is never
sent. Services call these functions; none composes a state-change event itself.

A refused edge (a stale or repeated report, a job in another state) changes nothing and comes
back empty: callers answer it as such (`stale`, 409), never as success.

Events, by edge: admit -> `admitted`; acknowledge (the runner acked the hand-off, or asked to
start) -> `assigned`; start -> `started`; every end (finish, finish a reservation, cancel a
queued job, expire, fail unsatisfiable, a lost runner's last attempt) -> `finished` with the
final state (and `expired` for an expiry); unassign / requeue unstarted / release with attempts
left -> `requeued`. A runner holding a job that ended without it (cancelled, expired, finished
by its client) is told with a `JobCancelRequested` on its cancel subject, written to the outbox
as core NATS news (best effort: the runner's heartbeats are the durable path).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from orchestrator.bus.subjects import job_news, runner_cancel
from orchestrator.errors import NotFound, StoreError
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

if TYPE_CHECKING:
    from orchestrator.store.store import Store

# --- typed arguments ---------------------------------------------------------------------------


class Start(NamedTuple):
    """A runner asks to start attempt `attempt` of a job assigned to it."""

    job_id: UUID
    runner_id: str
    attempt: int


class End(NamedTuple):
    """A runner reports the end of attempt `attempt`."""

    job_id: UUID
    runner_id: str
    attempt: int
    state: JobState
    exit_code: int | None = None
    reason: str | None = None


class Handoff(NamedTuple):
    """An assignment as the dispatcher handed it off: `assigned_at` names this very assignment."""

    job_id: UUID
    runner_id: str
    assigned_at: datetime


class Heartbeat(NamedTuple):
    """A runner's heartbeat: the jobs it holds, its sequence number and the newest one answered."""

    runner_id: str
    held: Sequence[UUID]
    seq: int = 0
    acked_seq: int = 0


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner says of itself when it registers."""

    runner_id: str
    pool: str
    labels: Sequence[str]
    slots: int
    taints: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class Stop(NamedTuple):
    """A job a runner holds and must stop (see `StopOrder`): its cancel is pending, or it is
    not the runner's any more."""

    job_id: UUID
    why: str  # cancel_requested | not_yours
    detail: str


@dataclass(frozen=True)
class Reconciled:
    """What a registration or heartbeat found: the runner's pool and previous state (None when
    it registered), the jobs released from it, and what it must stop."""

    pool: str
    previous_state: str | None
    released: list[Job]
    stop: list[Stop]


@dataclass(frozen=True)
class NewJob:
    id: UUID
    key: str
    spec: dict[str, Any]
    pool: str
    labels: list[str]
    plan: str | None
    tenant: str | None
    priority: int
    payload: dict[str, Any]
    timeout_s: float | None
    max_attempts: int
    abandon_after_s: float | None
    token_hash: bytes | None
    trace_context: dict[str, str]
    tolerations: list[str] = field(default_factory=list)  # sorted, distinct


_NEW_JOB_FIELDS = [f.name for f in fields(NewJob)]


@dataclass(frozen=True)
class Rejection:
    """A refusal of the JetStream door, kept where its producer can look (the `rejections` table)."""

    reason: str
    message: str
    field: str | None = None
    pool: str | None = None
    key: str | None = None
    stream_seq: int | None = None
    body: str | None = None


_REJECTION_FIELDS = [f.name for f in fields(Rejection)]


class Fence(NamedTuple):
    """A dispatch leader's term: its shard, its epoch (issued by Postgres), and who it is."""

    shard: str
    epoch: int
    holder: str


@dataclass(frozen=True)
class ClaimStep:
    """Why a dispatch step stopped, and what it claimed. `status` is one of
    dispatched | no_job | no_runner | at_capacity | paused | unknown_pool | fenced
    (a newer leader's epoch is stored: nothing was claimed)."""

    status: str
    assignments: list[dict[str, Any]] = field(default_factory=list)
    # In-flight jobs of the pool once the step committed (None when not counted: unlimited pools).
    in_flight: int | None = None


@dataclass(frozen=True)
class Cancel:
    """What a cancel did: `cancelled` (it was queued: ended now), `requested` (a runner holds it:
    told to stop; it ends when the runner reports), `final` (it had already ended: refused)."""

    outcome: str
    job: Job


def refusal(kind: str, report: Start | End, job: Job | None) -> tuple[str, str]:
    """Why a runner's `start` or `finish` report changed nothing, as (code, message):
    `duplicate` when it repeats one already recorded (a retry whose answer was lost), `stale`
    when the job is no longer this runner's attempt (requeued, cancelled, ended otherwise)."""
    runner_id, attempt = report.runner_id, report.attempt
    if job is None:
        return "stale", f"no job {report.job_id}"
    mine = job.runner_id == runner_id and job.attempt == attempt
    if kind == "start" and mine and job.state == JobState.running:
        return "duplicate", f"job {job.id} attempt {attempt} already started on {runner_id}"
    if kind == "finish" and mine and JobState(job.state).final:
        return "duplicate", f"job {job.id} attempt {attempt} already ended: {job.state}"
    held = f"{job.state}, attempt {job.attempt}" + (f" on {job.runner_id}" if job.runner_id else "")
    return "stale", f"job {job.id} attempt {attempt} is not {runner_id}'s to {kind}: it is {held}"


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


def _admitted(job: Job) -> list[Outgoing]:
    assert job.key is not None
    return [
        Outgoing(
            job_news("admitted", job.pool),
            JobAdmitted(job_id=job.id, key=job.key, pool=job.pool, priority=job.priority),
        )
    ]


def _assigned(job: Job) -> Outgoing:
    assert job.runner_id is not None
    # The assignment's attempt: the next one while assigned, the current one once started.
    attempt = job.attempt + 1 if job.state == JobState.assigned else job.attempt
    event = JobAssigned(
        job_id=job.id,
        pool=job.pool,
        runner_id=job.runner_id,
        attempt=attempt,
        payload=job.payload or {},
        timeout_s=job.timeout_s,
        trace_context=job.trace_context or {},
    )
    return Outgoing(job_news("assigned", job.pool), event)


def _started(job: Job) -> list[Outgoing]:
    assert job.runner_id is not None
    news = [_assigned(job)] if job.acked_now else []
    news.append(
        Outgoing(
            job_news("started", job.pool),
            JobStarted(job_id=job.id, pool=job.pool, runner_id=job.runner_id, attempt=job.attempt),
        )
    )
    return news


def _finished(job: Job) -> Outgoing:
    event = JobFinished(
        job_id=job.id,
        pool=job.pool,
        runner_id=job.runner_id,
        attempt=job.attempt,
        state=JobState(job.state),
        exit_code=job.exit_code,
        reason=job.reason,
    )
    return Outgoing(job_news("finished", job.pool), event)


def _cancel_runner(job: Job, runner_id: str | None) -> list[Outgoing]:
    """Tell the runner holding `job` to stop it (none holds it: nothing)."""
    if runner_id is None:
        return []
    event = JobCancelRequested(job_id=job.id, pool=job.pool, runner_id=runner_id)
    return [Outgoing(runner_cancel(runner_id), event, durable=False)]


def _requeued(job: Job, reason: str) -> Outgoing:
    event = JobRequeued(
        job_id=job.id, pool=job.pool, runner_id=job.previous_runner_id, attempt=job.attempt, reason=reason
    )
    return Outgoing(job_news("requeued", job.pool), event)


def _ended_by_runner(job: Job) -> list[Outgoing]:
    return [_finished(job)]


def _ended_held(job: Job) -> list[Outgoing]:
    """A job a runner holds ended without it (its client finished it): the runner lets go."""
    return [_finished(job), *_cancel_runner(job, job.runner_id)]


def _expired(job: Job) -> list[Outgoing]:
    expired = JobExpired(job_id=job.id, pool=job.pool, runner_id=job.runner_id, reason=job.reason or "abandoned")
    return [Outgoing(job_news("expired", job.pool), expired), _finished(job), *_cancel_runner(job, job.runner_id)]


def _released(job: Job) -> list[Outgoing]:
    """A lost (or restarted) runner's job: requeued while attempts remain, else failed."""
    if job.state == JobState.queued:
        return [_requeued(job, "runner_lost")]
    return [_finished(job)]


async def _write(conn: asyncpg.Connection, news: Sequence[Outgoing]) -> None:
    if not news:
        return
    await conn.execute(
        Q["outbox_insert_many"],
        [n.event.id for n in news],  # type: ignore[attr-defined]
        [n.subject for n in news],
        [n.event.model_dump_json().encode() for n in news],
        [n.durable for n in news],
    )


async def _apply(conn: asyncpg.Connection, query: str, args: Sequence[Any], news: Any) -> list[Job]:
    """Run an edge's query in the caller's transaction and write the events of what it changed."""
    jobs = [Job.from_record(r) for r in await conn.fetch(Q[query], *args)]
    await _write(conn, [n for job in jobs for n in news(job)])
    return jobs


DEADLOCK_RETRIES = 3


def _columns(items: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Typed argument tuples (a job id first) as one array per field for an unnest() query, in
    job id order: every batched edge then locks its rows in the same order."""
    ordered = sorted(items, key=lambda item: item[0])
    return [list(c) for c in zip(*ordered, strict=True)] if items else [[] for _ in range(width)]


def _committed() -> None:
    # The gap a crash between commit and publish used to lose: now the outbox has the news.
    failpoint("transition.committed")


# --- transactions that make more than one decision ----------------------------------------------


ShapeKey = tuple[str, tuple[str, ...], str, tuple[str, ...]]


def shape_key(pool: str, labels: Sequence[str], tenant: str | None, tolerations: Sequence[str] = ()) -> ShapeKey:
    """What a job needs, as its shape: pool, sorted distinct labels, tenant ('' for none), and
    the sorted distinct taints it tolerates."""
    return (pool, tuple(sorted(set(labels))), tenant or "", tuple(sorted(set(tolerations))))


def _storable(value: Any) -> Any:
    """Postgres text cannot hold NUL; a rejected message may well contain one."""
    return value.replace("\x00", "\\u0000") if isinstance(value, str) else value


class AdmissionTx:
    """What an admission decision reads and writes, inside the batch's transaction."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        pools: dict[str, dict[str, Any]],
        existing: dict[str, Any],
        shapes: dict[ShapeKey, int],
    ) -> None:
        self._conn = conn
        self.pools = pools
        self.existing = existing
        self._shapes = shapes
        self.new_shapes: dict[ShapeKey, int] = {}  # created in this transaction: cached once it commits

    async def active(self, pools: Sequence[str]) -> dict[str, int]:
        """Queued + assigned + running per pool (exact: the pools are locked)."""
        rows = await self._conn.fetch(Q["pool_active_many"], list(pools))
        return {name: 0 for name in pools} | {r["pool"]: r["active"] for r in rows}

    async def drained_last_minute(self, pool: str, now: datetime | None = None) -> int:
        return int(await self._conn.fetchval(Q["pool_drained_last_minute"], pool, now))

    async def insert(self, jobs: Sequence[NewJob]) -> list[dict[str, Any]]:
        """Admit `jobs` in one statement, with their `admitted` events; returns the rows inserted
        (a key taken meanwhile is skipped)."""
        if not jobs:
            return []
        columns = [[getattr(job, name) for job in jobs] for name in _NEW_JOB_FIELDS]
        for ragged in ("labels", "tolerations"):  # see job_insert_many
            columns[_NEW_JOB_FIELDS.index(ragged)] = [json.dumps(getattr(job, ragged)) for job in jobs]
        columns.append([await self.shape_id(job) for job in jobs])
        by_key = {job.key: job for job in jobs}
        rows = [dict(r) for r in await self._conn.fetch(Q["job_insert_many"], *columns)]
        for row in rows:  # the job rows in full, without decoding back what was just encoded
            job = by_key[row["key"]]
            row.update(spec=job.spec, payload=job.payload, trace_context=job.trace_context)
        await _write(self._conn, [n for row in rows for n in _admitted(Job.from_record(row))])
        return rows

    async def shape_id(self, job: NewJob) -> int:
        key = shape_key(job.pool, job.labels, job.tenant, job.tolerations)
        shape_id = self._shapes.get(key) or self.new_shapes.get(key)
        if shape_id is None:
            # In this transaction: the pool's admission lock already serializes its shape creation.
            args = (key[0], list(key[1]), key[2], list(key[3]))
            shape_id = await self._conn.fetchval(Q["job_shape_insert"], *args) or await self._conn.fetchval(
                Q["job_shape_get"], *args
            )
            self.new_shapes[key] = shape_id
        return shape_id

    async def jobs_by_key(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {r["key"]: dict(r) for r in await self._conn.fetch(Q["job_list_by_keys"], list(keys))}

    async def record(self, rejections: Sequence[Rejection]) -> None:
        """Keep the JetStream door's refusals, and their `rejected` news, with the batch."""
        if rejections:
            columns = [[_storable(getattr(r, name)) for r in rejections] for name in _REJECTION_FIELDS]
            await self._conn.execute(Q["rejection_insert_many"], *columns)
            await _write(self._conn, [rejected(r.key, r.pool, r.reason, r.message, r.field) for r in rejections])


class PoolChangeTx:
    """What a pool change reads and writes, inside its transaction."""

    def __init__(self, conn: asyncpg.Connection, name: str, current: dict[str, Any] | None) -> None:
        self._conn = conn
        self.name = name
        self.current = current

    async def upsert(self, config: dict[str, Any]) -> dict[str, Any]:
        row = await self._conn.fetchrow(
            Q["pool_upsert"],
            self.name,
            config["max_concurrent"],
            config["max_active"],
            list(config["labels"]),
            list(config["allowed_plans"]),
            config["mode"],
            config["paused"],
            config["provisioner"],
            config["max_workers"],
            config["reservation_timeout_s"],
        )
        return dict(row)

    async def record_file_config(self, config: dict[str, Any]) -> None:
        await self._conn.execute(Q["pool_set_file_config"], self.name, config)

    async def queued_shapes(self) -> list[tuple[list[str], str | None]]:
        return [(list(r["labels"]), r["plan"]) for r in await self._conn.fetch(Q["job_queued_shapes"], self.name)]

    async def fail_unsatisfiable(self, labels: Sequence[str], plan: str | None, reason: str) -> list[Job]:
        """Edge queued -> failed: the change made these queued jobs unrunnable."""
        args = (self.name, list(labels), plan, reason)
        return await _apply(self._conn, "job_fail_queued_shape", args, lambda job: [_finished(job)])


# --- the edges ---------------------------------------------------------------------------------


class Transitions:
    """Every edge of the job state machine, each in its own transaction (see the module note)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Shapes are never deleted or changed, so their ids can be remembered for good.
        self._shapes: dict[ShapeKey, int] = {}

    async def _edge(self, query: str, args: Sequence[Any], news: Any) -> list[Job]:
        # Batched edges lock their rows in job id order (the callers sort), but a batch of one
        # edge can still meet another's rows in a different order: Postgres then aborts one
        # transaction, and an edge re-checks its legality when run again.
        for attempt in range(DEADLOCK_RETRIES):
            try:
                async with self._store.transaction() as conn:
                    jobs = await _apply(conn, query, args, news)
                break
            except StoreError as exc:
                if not isinstance(exc.__cause__, asyncpg.DeadlockDetectedError) or attempt == DEADLOCK_RETRIES - 1:
                    raise
        if jobs:
            _committed()
        return jobs

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
            existing = {r["key"]: dict(r) for r in await conn.fetch(Q["job_list_by_keys"], sorted(set(keys)))}
            tx = AdmissionTx(conn, configs, existing, self._shapes)
            yield tx
        _committed()
        self._shapes.update(tx.new_shapes)  # committed: safe to remember

    @asynccontextmanager
    async def pool_change(self, name: str) -> AsyncIterator[PoolChangeTx]:
        """One pool-change transaction: the pool locked against admissions (its admission lock)
        and against dispatch (its row), and its current row (None for a new pool)."""
        async with self._store.transaction() as conn:
            await conn.execute(Q["pool_admission_lock"], name)
            current = await conn.fetchrow(Q["pool_lock_for_change"], name)
            yield PoolChangeTx(conn, name, dict(current) if current else None)
        _committed()

    # dispatch

    async def claim(self, pool: str, limit: int, fence: Fence | None = None) -> ClaimStep:
        """Edge queued -> assigned: claim up to `limit` jobs of `pool` for runners with free
        slots, never past the pool's `max_concurrent`, in one transaction. No news yet: the
        assignment is announced once its runner acknowledges it (`acknowledge`).

        With a `fence`, the same transaction first checks the shard's stored epoch: another one
        means a newer leader was elected, and the step claims nothing (`fenced`)."""
        async with self._store.transaction() as conn:
            if fence is not None and await conn.fetchval(Q["dispatch_epoch_hold"], fence.shard) != fence.epoch:
                return ClaimStep("fenced")
            return await _claim(conn, pool, limit, fence.epoch if fence else None)

    async def acknowledge(self, handoffs: Sequence[Handoff]) -> list[Job]:
        """The runner acked these hand-offs: `assigned` news (once per assignment)."""
        if not handoffs:
            return []
        return await self._edge("job_acknowledge_many", _columns(handoffs, 3), lambda job: [_assigned(job)])

    async def unassign(self, runner_id: str, job_ids: Sequence[UUID]) -> list[Job]:
        """Edge assigned -> queued: hand-offs `runner_id` refused or did not ack (not an attempt)."""
        args = (list(job_ids), runner_id, None, None)
        return await self._edge("job_unassign", args, lambda job: [_requeued(job, "handoff_failed")])

    async def requeue_unstarted(self, after_s: float, now: datetime | None = None) -> list[Job]:
        """Edge assigned -> queued: assignments not started within `after_s` (not an attempt)."""
        args = ([], None, after_s, now)
        return await self._edge("job_unassign", args, lambda job: [_requeued(job, "not_started")])

    # runner reports

    async def start_many(self, starts: Sequence[Start]) -> list[Job]:
        """Edge assigned -> running: permission to start, for the runner a job is assigned to and
        that very attempt. The granted jobs."""
        return await self._edge("job_start_many", _columns(starts, 3), _started)

    async def finish_many(self, ends: Sequence[End]) -> list[Job]:
        """Edge assigned | running -> final, as runners report; the recorded jobs (a report of an
        attempt already ended, or not this runner's, changes nothing)."""
        rows = [(e.job_id, e.runner_id, e.attempt, e.state.value, e.exit_code, e.reason) for e in ends]
        return await self._edge("job_finish_many", _columns(rows, 6), _ended_by_runner)

    async def refusals(self, kind: str, reports: Sequence[Start | End]) -> dict[UUID, tuple[str, str]]:
        """Why each of these `start` / `finish` reports changed nothing (see `refusal`)."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(Q["job_get_many"], [r.job_id for r in reports])
        jobs = {r["id"]: Job.from_record(r) for r in rows}
        return {r.job_id: refusal(kind, r, jobs.get(r.job_id)) for r in reports}

    async def register_runner(self, runner: RunnerSpec, held: Sequence[UUID]) -> Reconciled:
        """Upsert the runner, and release what Postgres holds against it that it does not hold
        (edges assigned -> queued, running -> queued | failed | cancelled): it restarted. What it
        holds that is not its own any more is named, to be stopped."""
        async with self._store.transaction() as conn:
            try:
                await conn.fetchrow(
                    Q["runner_upsert"],
                    runner.runner_id,
                    runner.pool,
                    list(runner.labels),
                    runner.slots,
                    list(runner.taints),
                    runner.metadata,
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(f"pool {runner.pool!r} does not exist") from None
            args = ([runner.runner_id], list(held), None)
            released = await _apply(conn, "job_release_from_runners", args, _released)
            stop = await _stop_orders(conn, runner.runner_id, held)
        _committed()
        return Reconciled(runner.pool, None, released, stop)

    async def heartbeat(self, beat: Heartbeat) -> Reconciled | None:
        """A runner's heartbeat, reconciled with Postgres in one transaction (None: the runner is
        unknown or was declared lost). Jobs Postgres has it holding that it does not list are
        marked; those a heartbeat composed after an answered one still does not list are released
        (the runner let them go: requeued, failed or cancelled as on a loss). A late heartbeat
        (not newer than one already seen) only counts as a sign of life."""
        held = list(beat.held)
        async with self._store.transaction() as conn:
            before = await conn.fetchrow(Q["runner_touch"], beat.runner_id, beat.seq)
            if before is None:
                return None
            released: list[Job] = []
            if beat.seq > before["heartbeat_seq"]:
                if beat.acked_seq:
                    args = ([beat.runner_id], held, beat.acked_seq)
                    released = await _apply(conn, "job_release_from_runners", args, _released)
                await conn.execute(Q["job_mark_unheld"], beat.runner_id, held, beat.seq)
            stop = await _stop_orders(conn, beat.runner_id, held)
        if released:
            _committed()
        return Reconciled(before["pool"], before["state"], released, stop)

    async def mark_runners_lost(
        self, ttl_s: float, now: datetime | None = None
    ) -> tuple[list[dict[str, Any]], list[Job]]:
        """Runners silent for `ttl_s` are lost, and their jobs released (as above); returns the
        lost runners (id, pool) and the released jobs."""
        async with self._store.transaction() as conn:
            lost = [dict(r) for r in await conn.fetch(Q["runner_mark_lost"], ttl_s, now)]
            if not lost:
                return [], []
            args = ([r["id"] for r in lost], [], None)
            released = await _apply(conn, "job_release_from_runners", args, _released)
        _committed()
        return lost, released

    # producers, take clients and sweeps

    async def finish_held(self, job_id: UUID, state: JobState, exit_code: int | None, reason: str) -> Job | None:
        """Edge assigned | running -> final, as a reservation's client says; None if no runner
        holds it. Its runner is told to let go."""
        jobs = await self._edge("job_finish_held", (job_id, state.value, exit_code, reason), _ended_held)
        return jobs[0] if jobs else None

    async def cancel(self, job_id: UUID) -> Cancel:
        """Cancel a job: queued or assigned, it ends at once (nothing runs before a start is
        granted); running, the request is recorded and its runner told (now, and on every
        heartbeat until it reports the end); ended, refused."""
        ended = await self._edge("job_cancel_unstarted", (job_id,), _ended_held)
        if ended:
            return Cancel("cancelled", ended[0])
        requested = await self._edge("job_cancel_request", (job_id,), lambda j: _cancel_runner(j, j.runner_id))
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
        """Edge running -> timed_out, by the server: jobs running `margin_s` (the runner's kill
        grace and its report's way) past their `timeout_s`; their runners are told to kill them."""
        return await self._edge("job_time_out", (margin_s, now), _ended_held)

    async def expire_abandoned(self, now: datetime | None = None) -> list[Job]:
        """Edge queued | assigned | running -> expired: take-style jobs whose client stopped
        polling before taking its runner; a runner holding one is told to let go."""
        return await self._edge("job_expire_abandoned", (now,), _expired)


async def _stop_orders(conn: asyncpg.Connection, runner_id: str, held: Sequence[UUID]) -> list[Stop]:
    if not held:
        return []
    stops = []
    for r in await conn.fetch(Q["job_stop_orders"], runner_id, list(held)):
        if r["state"] is None:
            stops.append(Stop(r["id"], "not_yours", f"no job {r['id']}"))
        elif r["runner_id"] == runner_id and r["state"] in ("assigned", "running"):
            stops.append(Stop(r["id"], "cancel_requested", f"job {r['id']} was cancelled"))
        else:
            held_by = f" on {r['runner_id']}" if r["runner_id"] and r["runner_id"] != runner_id else ""
            stops.append(Stop(r["id"], "not_yours", f"job {r['id']} is {r['state']}{held_by}"))
    return stops


async def _claim(conn: asyncpg.Connection, pool: str, limit: int, epoch: int | None) -> ClaimStep:
    """The claim itself, inside the caller's transaction (and, with a fence, its epoch lock)."""
    cfg = await conn.fetchrow(Q["pool_lock_for_claim"], pool)
    if cfg is None:
        return ClaimStep("unknown_pool")
    if cfg["paused"]:
        return ClaimStep("paused")
    budget = limit
    if cfg["max_concurrent"] >= 0:
        in_flight = await conn.fetchval(Q["pool_in_flight"], pool)
        budget = min(budget, cfg["max_concurrent"] - in_flight)
        if budget <= 0:
            return ClaimStep("at_capacity")
    runners = await conn.fetch(Q["runner_free_slots"], pool)
    if not runners:
        return ClaimStep("no_runner")
    # Runners with the same labels and taints can take the same jobs: claim once per such set.
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[Any]]] = {}
    for r in runners:
        groups.setdefault((tuple(sorted(r["labels"])), tuple(sorted(r["taints"]))), []).append([r["id"], r["free"]])
    assignments: list[dict[str, Any]] = []
    for (labels, taints), members in groups.items():
        if budget <= 0:
            break
        want = min(budget, sum(free for _, free in members))
        claimed = await conn.fetch(Q["job_claim"], pool, list(labels), want, epoch, list(taints))
        for row in claimed:
            member = max(members, key=lambda m: m[1])  # spread over the freest runners
            member[1] -= 1
            assignments.append({**dict(row), "runner_id": member[0]})
        budget -= len(claimed)
    if not assignments:
        return ClaimStep("no_job")
    await conn.execute(Q["job_shape_served"], list({a["shape_id"] for a in assignments}))
    await conn.execute(Q["job_set_runner"], [a["id"] for a in assignments], [a["runner_id"] for a in assignments])
    in_flight_after = None if cfg["max_concurrent"] < 0 else in_flight + len(assignments)
    return ClaimStep("dispatched", assignments, in_flight_after)
