"""Every event on the bus, as a frozen pydantic model with its `type` and version.

Events announce what already happened in Postgres (the truth); a consumer that misses one is
corrected by the next sweep. Requests a runner makes (register, start, finish) are events too,
answered with a `Reply` once the change is committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from schemas.base import Envelope, Model
from schemas.jobs import JobSpec, JobState, JobView, Label, Name
from schemas.pools import PoolConfig
from schemas.storable import Int32, JsonObject


class JobSubmitted(JobSpec):
    """The job spec itself; the envelope fields may be given and are filled in when absent."""

    type: Literal["JobSubmitted"] = "JobSubmitted"
    v: Literal[1] = 1
    id: UUID | None = None
    at: datetime | None = None

    def spec(self) -> JobSpec:
        # Already validated as the same fields: construct without validating again (the hot path).
        return JobSpec.model_construct(**{name: getattr(self, name) for name in JobSpec.model_fields})


class JobAdmitted(Envelope):
    type: Literal["JobAdmitted"] = "JobAdmitted"
    job_id: UUID
    key: str
    pool: str
    priority: int


class JobRejected(Envelope):
    type: Literal["JobRejected"] = "JobRejected"
    key: str | None
    pool: str | None
    reason: str
    message: str
    field: str | None = None


class JobAssigned(Envelope):
    """Sent to the runner as a request; the runner's ack completes the hand-off. Hand-offs to one
    runner travel in batches, so each carries its own job's W3C trace context."""

    type: Literal["JobAssigned"] = "JobAssigned"
    job_id: UUID
    pool: str
    runner_id: str
    attempt: int
    payload: dict[str, Any]
    timeout_s: float | None
    trace_context: dict[str, str] = Field(default_factory=dict)


class JobStarted(Envelope):
    """From the runner: a request for permission to start; refused for a stale assignment."""

    type: Literal["JobStarted"] = "JobStarted"
    job_id: UUID
    pool: str
    runner_id: str
    attempt: Int32


class JobFinished(Envelope):
    """A job ended: every final state (succeeded, failed, timed_out, cancelled, expired) is
    announced as `finished`, so a producer following `jobs.finished.>` hears every end.
    `runner_id` is None for a job that ended in the queue (cancelled, expired, or made
    unsatisfiable by a pool change). From a runner, the same model reports the end."""

    type: Literal["JobFinished"] = "JobFinished"
    job_id: UUID
    pool: str
    runner_id: str | None
    attempt: Int32
    state: JobState
    exit_code: Int32 | None = None
    reason: str | None = None


class JobRequeued(Envelope):
    """A job went back to the queue without ending: a hand-off not acknowledged or never started
    (`handoff_failed`, `not_started`: not an attempt), its runner was lost while attempts
    remain (`runner_lost`), or an attempt ended in a way its retry policy retries (`failed`,
    `timed_out`). `runner_id` is the runner it left."""

    type: Literal["JobRequeued"] = "JobRequeued"
    job_id: UUID
    pool: str
    runner_id: str | None
    attempt: Int32
    reason: str


class JobExpired(Envelope):
    """A take-style job's client stopped polling for `abandon_after_s` before taking its runner
    (seed 003): the job ended as `expired`, and a runner holding a slot for it (`runner_id`) was
    told to let go."""

    type: Literal["JobExpired"] = "JobExpired"
    job_id: UUID
    pool: str
    runner_id: str | None
    reason: str = "abandoned"


class JobCancelRequested(Envelope):
    type: Literal["JobCancelRequested"] = "JobCancelRequested"
    job_id: UUID
    pool: str
    runner_id: str | None


class JobsQueued(Envelope):
    """`n` jobs of `pool` were just admitted (best effort, core NATS: a wake for dispatch and the
    provisioner, sent at the commit, not behind the outbox's backlog as `JobAdmitted` is)."""

    type: Literal["JobsQueued"] = "JobsQueued"
    pool: str
    n: int = Field(ge=1)


class SlotAvailable(Envelope):
    """Free capacity appeared or grew in `pool` (best effort, core NATS: a wake for dispatch)."""

    type: Literal["SlotAvailable"] = "SlotAvailable"
    pool: str
    # Slots free (counted in Postgres), or freed (by the ends just recorded): at least this many.
    free: int


class SchedulesChanged(Envelope):
    """A schedule was created, replaced or deleted (best effort, core NATS: a wake for the
    scheduler, whose timer waits for the earliest fire time; it also re-reads on its sweep)."""

    type: Literal["SchedulesChanged"] = "SchedulesChanged"
    name: Name


class CapacityUnknown(Envelope):
    """A pool's capacity could not be counted; it is not dispatched until it can be (seed 000)."""

    type: Literal["CapacityUnknown"] = "CapacityUnknown"
    pool: str
    reason: str


class PoolUpdated(Envelope):
    """A pool's configuration changed (committed). `failed_jobs` queued jobs it made unsatisfiable
    were failed in the same transaction. `previous` is None for a new pool."""

    type: Literal["PoolUpdated"] = "PoolUpdated"
    pool: Name
    config: PoolConfig
    previous: PoolConfig | None = None
    failed_jobs: int = 0


class RunnerRegistered(Envelope):
    """From the runner at start. `running` lists the jobs it still runs (none after a restart),
    so jobs the store still holds against this runner id are released at once."""

    type: Literal["RunnerRegistered"] = "RunnerRegistered"
    runner_id: Name
    pool: Name
    labels: list[Label] = Field(default_factory=list)
    slots: int = Field(ge=0, le=10_000)
    taints: list[Label] = Field(default_factory=list)
    running: list[UUID] = Field(default_factory=list)
    metadata: JsonObject = Field(default_factory=dict)


class RunnerHeartbeat(Envelope):
    """From the runner, every `heartbeat_interval_s`, answered with a `HeartbeatReply`.

    `running` lists every job it holds (acknowledged, running, or ended with the report still on
    its way). `seq` numbers its heartbeats, increasing for the life of the runner id (the bundled
    runner starts from the clock); `acked_seq` is the newest one whose reply it received. With
    them capacity reconciles: a job Postgres has this runner holding that a heartbeat composed
    after an answered one still does not list is released (0: no reconciliation)."""

    type: Literal["RunnerHeartbeat"] = "RunnerHeartbeat"
    runner_id: str
    pool: str
    running: list[UUID] = Field(default_factory=list)
    seq: int = Field(default=0, ge=0)
    acked_seq: int = Field(default=0, ge=0)


class RunnerDraining(Envelope):
    """From a runner that is leaving (stopping, or a one-shot worker that took its one job): it
    takes nothing more. Answered with a `Reply` once recorded."""

    type: Literal["RunnerDraining"] = "RunnerDraining"
    runner_id: str
    pool: str


class KilledJob(Model):
    """An attempt a stopping runner killed: the job, and the attempt it had started."""

    job_id: UUID
    attempt: Int32 = Field(ge=1)


class RunnerStopped(Envelope):
    """From a runner that has stopped, with the attempts it killed at its stop timeout (their
    commands had started, and their ends were not being reported): released at once as lost,
    rather than when the runner is found lost. Only those attempts, and only while still
    running on it: a notice that comes late, after the runner restarted, touches nothing of its
    new life. A subject of its own: where capacity is older, nobody answers it, and the lost
    sweep releases the jobs as before. Answered with a `Reply`."""

    type: Literal["RunnerStopped"] = "RunnerStopped"
    runner_id: str
    pool: str
    # What it held: its slots (at most 10,000), and jobs cancelled within their kill grace. A
    # longer list is refused, and the lost sweep releases those jobs as before.
    killed: list[KilledJob] = Field(max_length=20_000)


class RunnerTaintsChanged(Envelope):
    """An operator changed a runner's taints (committed): its pool's leader is re-elected."""

    type: Literal["RunnerTaintsChanged"] = "RunnerTaintsChanged"
    runner_id: str
    pool: str
    taints: list[str]


class PoolLeaderChanged(Envelope):
    """A leader-mode pool's elected runner changed: `leader` takes its jobs from now on (None: no
    healthy runner, its jobs wait). Not the dispatch leader (`LeaderElected`)."""

    type: Literal["PoolLeaderChanged"] = "PoolLeaderChanged"
    pool: str
    leader: str | None
    previous: str | None


class LeaderElected(Envelope):
    """A dispatch instance took the lease of `shard`; `epoch` (the lease revision) fences its claims."""

    type: Literal["LeaderElected"] = "LeaderElected"
    shard: str
    holder: str
    epoch: int


class LeaderLost(Envelope):
    """The holder stopped dispatching: `released` (graceful stop), `taken` (a renewal was refused:
    someone else holds the lease), `expired` (no renewal succeeded within the TTL), `fenced` (its
    claims were refused: Postgres holds a newer term; it gave the lease up)."""

    type: Literal["LeaderLost"] = "LeaderLost"
    shard: str
    holder: str
    epoch: int
    reason: Literal["released", "taken", "expired", "fenced"]


class ErrorDetail(Model):
    code: str
    message: str
    field: str | None = None


class Reply(Model):
    """The answer to a request on the bus: ok, or an error that says what was wrong. Read
    tolerantly (unknown fields ignored), so a reply may grow fields (`HeartbeatReply`) without
    breaking a runner that reads only `ok`."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    ok: bool
    error: ErrorDetail | None = None


class StopOrder(Model):
    """A job a runner holds and must stop: `cancel_requested` (stop the process, SIGTERM then
    SIGKILL after the kill grace, and report `cancelled`: the cancel is pending until then), or
    `not_yours` (it ended, or was released or given to another runner: kill it, report nothing)."""

    job_id: UUID
    why: Literal["cancel_requested", "not_yours"]
    detail: str


class HeartbeatReply(Reply):
    """The answer to a heartbeat or a registration: ok (or why not), and what to stop."""

    stop: list[StopOrder] = Field(default_factory=list)


class AdmissionResult(Model):
    """The answer of the admission service, the same for every door."""

    outcome: Literal["admitted", "existing", "rejected"]
    job: JobView | None = None
    token: str | None = None
    error: ErrorDetail | None = None
    retry_after_s: float | None = None


def error_from_validation(exc: Any) -> ErrorDetail:
    """The first problem of a pydantic ValidationError, naming the field (dotted path).

    Unparseable JSON is `malformed`; JSON of the wrong shape is `invalid`.
    """
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return ErrorDetail(code="malformed", message=f"body is not valid JSON: {first['msg']}")
    field = ".".join(str(part) for part in first["loc"]) or None
    message = f"{field}: {first['msg']}" if field else first["msg"]
    return ErrorDetail(code="invalid", message=message, field=field)
