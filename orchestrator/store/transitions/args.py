"""The typed values the transitions take and give: a runner's reports, a hand-off, a new job, a
rejection, a leader's fence, what a claim, a cancel or a heartbeat did; and why a report was refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from orchestrator.store.rows import Job
from schemas.jobs import JobState

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
    retry: dict[str, Any] | None = None  # the spec's retry policy (None: the default)
    # A delayed job: claimable from `run_at`, or `delay_s` after its admission (at most one given).
    run_at: datetime | None = None
    delay_s: float | None = None
    # Flow control (None: none): with a concurrency key, its limit and on_conflict are set too.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    on_conflict: str | None = None
    rate_limit_key: str | None = None


_NEW_JOB_FIELDS = [f.name for f in fields(NewJob)]


@dataclass(frozen=True)
class KeyLive:
    """A concurrency key's live jobs, as admission read them under the key's lock: how many are
    queued and how many assigned or running, the smallest concurrency_limit among them (the
    key's limit; None: no live job), and when asked for, which jobs they are (id, state)."""

    key: str
    queued: int
    held: int
    lowest_limit: int | None
    members: tuple[tuple[UUID, str], ...] = ()


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
    dispatched | no_job (nothing to claim, with or without runners) | no_runner (jobs wait, no
    runner has a free slot for them) | at_capacity | paused | unknown_pool | fenced
    (a newer leader's epoch is stored: nothing was claimed) | wrong_shard (the pool is not the
    fence's shard's: nothing was claimed) | throttled (the pool's max_starts_per_s allows no
    start yet)."""

    status: str
    assignments: list[dict[str, Any]] = field(default_factory=list)
    # In-flight jobs of the pool once the step committed (None when not counted: unlimited pools).
    in_flight: int | None = None
    # Seconds until the pool is due again although nothing will announce it (None: never, or the
    # step did not look for jobs): its first job out of a retry backoff, a rate limit's next
    # start, its next start under max_starts_per_s. When to step again.
    due_in_s: float | None = None
    # Lanes with jobs waiting that the step passed over, by why: a concurrency key at its limit,
    # a rate limit with no start left.
    held_by_key: int = 0
    held_by_rate: int = 0


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
    # Its end already recorded, and the job retried since (queued again, maybe handed out again).
    ended = next((a for a in job.attempts or () if a["attempt"] == attempt and a["runner_id"] == runner_id), None)
    if kind == "finish" and ended is not None:
        return "duplicate", f"job {job.id} attempt {attempt} already ended: {ended['outcome']}"
    held = f"{job.state}, attempt {job.attempt}" + (f" on {job.runner_id}" if job.runner_id else "")
    return "stale", f"job {job.id} attempt {attempt} is not {runner_id}'s to {kind}: it is {held}"
