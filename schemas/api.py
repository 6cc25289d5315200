"""Bodies of the HTTP API that are not events: what a take answers, runners as the API shows them.

The same models validate requests and render responses, and `/openapi.json` is generated from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from schemas.base import Body, Integer32, Model
from schemas.events import ErrorDetail
from schemas.jobs import Attempt, JobState, JobView, RetryPolicy, attempts_of
from schemas.pools import PoolView


class RunnerView(Model):
    """A registered runner: what it offers and its registration metadata (hostname, ...)."""

    id: str
    pool: str
    labels: list[str]
    slots: int
    taints: list[str]
    state: str = Field(description="active | draining | suspect | lost")
    metadata: dict[str, Any]
    created_at: datetime
    last_seen_at: datetime
    busy: int | None = Field(default=None, description="jobs assigned or running (in listings)")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunnerView:
        return cls.model_validate({name: row[name] for name in cls.model_fields if name in row})


class Taken(Model):
    """`POST /v1/jobs/{id}/take` once the job holds a runner: the job and the runner it holds."""

    job: JobView
    runner: RunnerView


class Constraint(Model):
    """One thing holding a queued job back, and the numbers behind it."""

    reason: Literal[
        "no_leader",
        "paused",
        "capacity_unknown",
        "no_free_runner",
        "at_capacity",
        "max_starts_per_s",
        "concurrency_key",
        "rate_limit",
        "scheduled",
        "backoff",
    ]
    message: str
    numbers: dict[str, int | float | str | None] = Field(default_factory=dict)


class BlockedBy(Model):
    """Why a queued job is not running yet (`GET /v1/jobs/{id}` while it waits)."""

    reason: str = Field(
        description="the first constraint's reason; with none, `queued_behind` (jobs go first) or `dispatching`"
    )
    message: str
    constraints: list[Constraint] = Field(description="everything holding it back, most fundamental first")
    position: int = Field(description="queued jobs competing for the same slots that go before it (0: next)")
    competing: int = Field(description="queued jobs competing for the same slots, this one included")
    drained_last_minute: int = Field(description="jobs of its pool that ended in the last minute")
    estimated_wait_s: float | None = Field(
        description="from the recent drain rate; null when it depends on an operator or an outage, or nothing drained"
    )


class JobDetail(JobView):
    """`GET /v1/jobs/{id}`: the job, its retry policy and attempts, and while it waits why (`blocked_by`)."""

    blocked_by: BlockedBy | None = None
    retry: RetryPolicy = Field(description="the retry policy in force (the default when the spec gave none)")
    attempts: list[Attempt] = Field(description="every attempt started, oldest first; the running one has no outcome")

    @classmethod
    def of(cls, row: Any, blocked_by: BlockedBy | None) -> JobDetail:
        """From a stored job row (its `retry` None: the default policy)."""
        view = JobView.from_row(row).model_dump()
        return cls(**view, blocked_by=blocked_by, retry=row["retry"] or RetryPolicy(), attempts=attempts_of(row))


class JobCreated(JobView):
    """`POST /v1/jobs`: the job, and its take token (only when this request admitted it)."""

    token: str | None = Field(description="for `POST /v1/jobs/{id}/take`; only its hash is stored")


class Waiting(Model):
    """Why a listed queued job waits, in short (`GET /v1/jobs/{id}` has the whole `blocked_by`)."""

    reason: str = Field(description="the first constraint's reason, or `queued` when nothing holds it back")
    message: str


class JobListed(JobView):
    blocked_by: Waiting | None = None


class JobList(Model):
    jobs: list[JobListed]


class ErrorBody(Model):
    """Every error the API answers: what was wrong, and which field when one was."""

    error: ErrorDetail


class FinishBody(Body):
    """`POST /v1/jobs/{id}/finish`: how a reservation ended, as an exit code or an outcome."""

    # Exactly one of the two, as `_one_of` checks (a null counts as not given).
    model_config = ConfigDict(
        **Body.model_config,
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["exit_code"],
                    "properties": {"exit_code": {"type": "integer"}, "outcome": {"type": "null"}},
                },
                {"required": ["outcome"], "properties": {"outcome": {"type": "string"}, "exit_code": {"type": "null"}}},
            ]
        },
    )
    exit_code: Integer32 | None = Field(default=None, description="0 = succeeded, else failed")
    outcome: Literal["succeeded", "failed", "cancelled"] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> FinishBody:
        if (self.exit_code is None) == (self.outcome is None):
            raise ValueError("give exactly one of exit_code and outcome")
        return self

    def state(self) -> JobState:
        if self.outcome is not None:
            return JobState(self.outcome)
        return JobState.succeeded if self.exit_code == 0 else JobState.failed


class PoolList(Model):
    pools: list[PoolView]


class PoolChanged(PoolView):
    """`PUT`/`PATCH /v1/pools/{name}`: the pool as changed, and the queued jobs the change made
    unsatisfiable (failed in the same transaction)."""

    failed_jobs: int


class PoolDeleted(PoolView):
    """`DELETE /v1/pools/{name}`: the pool as it was, and how many of its ended jobs went with it."""

    deleted_jobs: int = Field(description="ended jobs of the pool, deleted with it")


class RunnerList(Model):
    """`GET /v1/runners`: a page of runners, in id order."""

    runners: list[RunnerView]
    next: str | None = Field(default=None, description="the next page's `after`; null on the last page")


class Rejection(Model):
    """What the JetStream door refused: its producer had nobody to answer it."""

    id: int
    at: datetime
    reason: str = Field(description="malformed | invalid | unsatisfiable | overloaded | conflict | concurrency_limit")
    message: str
    field: str | None
    pool: str | None
    key: str | None
    stream_seq: int | None = Field(description="the message's sequence in the intake stream")
    body: str | None = Field(description="the start of what was sent, for malformed input")


class RejectionList(Model):
    """`GET /v1/rejections`: a page of rejections, newest first."""

    rejections: list[Rejection]
    next: int | None = Field(default=None, description="the next page's `after`; null on the last page")


class LeaseView(Model):
    holder: str
    revision: int


class ShardLeader(Model):
    """A dispatch shard's newest term as recorded in Postgres, who holds its lease now, and how
    many pools it dispatches."""

    shard: str
    holder: str | None
    epoch: int | None
    since: datetime | None
    lease: LeaseView | None = Field(description="null while nobody holds it (e.g. during a failover)")
    pools: int = Field(description="the pools whose jobs this shard dispatches")


class LeaderView(ShardLeader):
    """Who dispatches. The top-level fields are the first shard's (shard "0", or "all" when there
    is one shard, as before shards); `shards` lists every shard, the first included."""

    shards: list[ShardLeader]


class PoolDepth(Model):
    pool: str
    queued: int
    assigned: int
    running: int


class QueueDepth(Model):
    """`GET /v1/queue`: jobs waiting and in flight, per pool."""

    pools: list[PoolDepth]


class PoolStats(Model):
    """One pool's queue right now (`GET /v1/stats`)."""

    pool: str
    max_concurrent: int
    max_active: int
    paused: int = Field(description="1 when paused, else 0 (a gauge's value)")
    queued: int
    deferred: int = Field(
        default=0, description="queued jobs not due yet: delayed (run_at, delay_s) or waiting out a retry backoff"
    )
    in_flight: int = Field(description="assigned or running")
    free: int = Field(description="slots a job could take now: runners' free slots within max_concurrent")
    oldest_queued_s: float = Field(
        description="how long the oldest queued job that is due has waited since it was (0: none)"
    )
    held_by_key: int = Field(description="queued jobs whose concurrency key is at its limit")
    held_by_rate: int = Field(description="queued jobs whose rate limit has no start left now")


class RunnerCount(Model):
    pool: str
    state: str
    runners: int
    slots: int


class Stats(Model):
    """`GET /v1/stats`: each pool's queue right now, and runners counted by pool and state."""

    pools: list[PoolStats]
    runners: list[RunnerCount]


class Ok(Model):
    ok: bool
