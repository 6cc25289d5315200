"""The job spec producers send, and the job as the system reports it.

The spec is the same JSON through every door (HTTP body, JetStream `orch.v1.jobs.submit`,
core request `orch.v1.jobs.submit.req`), so a producer in any language needs nothing else.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from schemas.base import Body, Integer, Model, whole_number
from schemas.payload import JobPayload
from schemas.storable import NO_NUL, StorableJsonSchema, storable_json

# Pool names and labels become NATS subject tokens and CLI arguments: keep them to a safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=\-]{0,127}$")]
# Postgres text cannot hold NUL (\u0000): refused here, naming the field (schemas/storable.py).
Key = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]
# A concurrency key names a group of jobs (a deployment target, a branch: "deploy/prod").
ConcurrencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=\-]{0,127}$")]
# A rate limit's key is a path segment of `/v1/rate-limits/{key}`: no '/'.
RateLimitKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")]
# Jobs of one key assigned or running at once, at most. Bounds before the validator, so JSON
# Schema has them inside the `| None` (schemas/base.py).
ConcurrencyLimit = Annotated[Annotated[int, Field(ge=1, le=100_000)], BeforeValidator(whole_number)]
# What a new job does to the other jobs of its concurrency key (README, "Concurrency keys").
OnConflict = Literal["queue", "cancel_in_progress", "cancel_pending", "reject"]


# How far ahead a job may be delayed (`run_at`, `delay_s`): a year, and a day to spare.
MAX_DELAY_S = 366 * 24 * 3600.0
# RFC 3339's date-time: a date, a time to the second (a fraction allowed) and an offset. Python's
# ISO parser alone would take a date without a time, or a time without an offset.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$")


def _rfc3339(value: Any) -> datetime:
    """An RFC 3339 time with its offset, as an aware UTC datetime. A time without an offset is
    refused: on which clock it falls would be a guess."""
    if isinstance(value, datetime) and value.tzinfo is not None:  # Python callers (the CLI, JobSubmitted)
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 time, e.g. 2026-03-29T02:30:00+01:00 or 2026-03-29T01:30:00Z")
    found = _RFC3339.match(value)
    if found is None:
        raise ValueError(f"{value[:40]!r} is not an RFC 3339 time, e.g. 2026-03-29T02:30:00+01:00")
    if found["offset"] is None:
        raise ValueError(f"{value[:40]!r} has no UTC offset: add one (Z, +01:00, ...), a time without one is ambiguous")
    # A fraction past microseconds is cut (Python's datetime holds microseconds).
    text = re.sub(r"(\.\d{6})\d+", r"\1", value).upper().replace(" ", "T")
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{value[:40]!r} is not a valid time: {exc}") from None


def _within_delay(value: datetime) -> datetime:
    if value - datetime.now(UTC) > timedelta(seconds=MAX_DELAY_S):
        raise ValueError(f"is more than {MAX_DELAY_S / 86400:g} days ahead: a job may be delayed a year at most")
    return value


# When a job becomes claimable, as an RFC 3339 time with an offset; kept in UTC.
RunAt = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_within_delay)]


class JobState(StrEnum):
    queued = "queued"
    assigned = "assigned"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.timed_out, JobState.cancelled, JobState.expired}
)


# How an attempt can end without ending its job, when the job's retry policy says so: its runner
# was lost (or let it go), its command failed, or it ran past `timeout_s`.
RetryOutcome = Literal["lost", "failed", "timed_out"]
# How an attempt ended: a final state, or its runner lost.
AttemptOutcome = Literal["succeeded", "failed", "timed_out", "cancelled", "expired", "lost"]
_MAX_BACKOFF_S = 24 * 3600.0


class RetryPolicy(Body):
    """Which ends of an attempt start another, and when (`retry` on the job spec). An attempt
    that ends `on` one of these outcomes is retried while the job has attempts left
    (`max_attempts` counts them all); the job goes back to the queue, not claimable before
    `backoff_s * 2^(n-1)` seconds (n: the attempt that ended), at most `max_backoff_s`, less a
    random share of up to `jitter` of it (0.2: 80 to 100 % of the delay), so that jobs failing
    together do not all come back together. The defaults are the behaviour before this policy
    existed: only a lost runner's attempt is retried, after 1 s, 2 s, 4 s ... 60 s."""

    on: list[RetryOutcome] = Field(
        default_factory=lambda: ["lost"], max_length=3, description="outcomes retried: lost, failed, timed_out"
    )
    backoff_s: float = Field(default=1.0, ge=0, le=_MAX_BACKOFF_S, description="the delay after the first attempt")
    max_backoff_s: float = Field(default=60.0, ge=0, le=_MAX_BACKOFF_S, description="the longest delay")
    jitter: float = Field(default=0.0, ge=0, le=1, description="the share of a delay taken off at random")

    @field_validator("on")
    @classmethod
    def _distinct(cls, on: list[str]) -> list[str]:
        return sorted(set(on))

    @field_validator("max_backoff_s")
    @classmethod
    def _not_below_backoff(cls, value: float, info: ValidationInfo) -> float:
        backoff = info.data.get("backoff_s")  # absent when it was invalid itself
        if backoff is not None and value < backoff:
            raise ValueError(f"max_backoff_s ({value:g}) is less than backoff_s ({backoff:g}): raise it")
        return value


class JobSpec(Body):
    pool: Name
    labels: list[Label] = Field(default_factory=list, max_length=64)
    plan: Name | None = None
    tenant: Name | None = None
    priority: Integer = Field(default=0, ge=-1_000_000, le=1_000_000)
    key: Key | None = None
    payload: Annotated[JobPayload, storable_json, StorableJsonSchema] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    max_attempts: Integer = Field(default=3, ge=1, le=100)
    abandon_after_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    # Taints this job tolerates: a tainted runner takes only jobs tolerating all its taints (seed 002).
    tolerations: list[Label] = Field(default_factory=list, max_length=64)
    # None: the default policy (RetryPolicy()).
    retry: RetryPolicy | None = None
    # A delayed job: queued now, not claimable before this time (or this many seconds after its
    # admission). One of the two at most.
    run_at: RunAt | None = Field(
        default=None, description="not started before this RFC 3339 time (with an offset; at most a year ahead)"
    )
    delay_s: float | None = Field(
        default=None, gt=0, le=MAX_DELAY_S, description="not started before this many seconds after its admission"
    )

    @field_validator("delay_s")
    @classmethod
    def _not_both(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("run_at") is not None:
            raise ValueError("give run_at or delay_s, not both")
        return value

    # Flow control, enforced by the claim (README, "Flow control"). None: not under one.
    concurrency_key: ConcurrencyKey | None = Field(
        default=None, description="jobs of one key run at most concurrency_limit at once, in order"
    )
    concurrency_limit: ConcurrencyLimit | None = Field(
        default=None, description="jobs of its key assigned or running at once, at most; 1 when not given"
    )
    on_conflict: OnConflict | None = Field(
        default=None,
        description="what it does to its key's other jobs: queue (wait its turn; the default), cancel_in_progress "
        "(cancel those assigned or running), cancel_pending (cancel those queued), reject (409 if it would wait)",
    )
    rate_limit_key: RateLimitKey | None = Field(
        default=None, description="a rate limit (PUT /v1/rate-limits/{key}) its start counts against"
    )

    @field_validator("concurrency_limit", "on_conflict")
    @classmethod
    def _needs_a_key(cls, value: Any, info: ValidationInfo) -> Any:
        # Refused rather than ignored: a limit without a key would limit nothing. (A key that was
        # itself refused is not in `data`: its own error says so.)
        if value is not None and "concurrency_key" in info.data and info.data["concurrency_key"] is None:
            raise ValueError(f"{info.field_name} needs a concurrency_key: give the key the jobs share")
        return value

    def canonical(self) -> dict[str, Any]:
        """The spec as compared for idempotency: same key + same canonical spec = same job (a
        repeated `delay_s` counts from the first admission: the same job, not a later one; with a
        concurrency key, its limit and on_conflict as they apply: given or by default)."""
        # Fields added since jobs were first stored are left out while unset, so a job stored
        # before they existed compares equal to its repeat.
        unset = {name for name in _ADDED_FIELDS if getattr(self, name) is None}
        data = self.model_dump(mode="json", exclude={"key", *unset})
        data["labels"] = sorted(set(data["labels"]))
        data["tolerations"] = sorted(set(data["tolerations"]))
        if self.concurrency_key is not None:
            data["concurrency_limit"] = self.concurrency_limit or 1
            data["on_conflict"] = self.on_conflict or "queue"
        return data


# Spec fields added after jobs were first stored: left out of the canonical spec while unset.
_ADDED_FIELDS = ("retry", "run_at", "delay_s", "concurrency_key", "concurrency_limit", "on_conflict", "rate_limit_key")


class Attempt(Model):
    """One attempt of a job: the runner it ran on, when, and how it ended (`outcome` null while it runs)."""

    attempt: int
    runner_id: str | None
    started_at: datetime | None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    exit_code: int | None = None
    reason: str | None = None


def attempts_of(row: Any) -> list[Attempt]:
    """A stored job's attempts: those ended (its `attempts` history), then the one running."""
    attempts = [Attempt.model_validate(a) for a in row["attempts"] or ()]
    if row["state"] == JobState.running:
        attempts.append(Attempt(attempt=row["attempt"], runner_id=row["runner_id"], started_at=row["started_at"]))
    return attempts


class JobView(Model):
    id: UUID
    key: str
    state: JobState
    pool: str
    labels: list[str]
    plan: str | None
    tenant: str | None
    priority: int
    payload: dict[str, Any]
    timeout_s: float | None
    max_attempts: int
    abandon_after_s: float | None
    tolerations: list[str]
    attempt: int
    runner_id: str | None
    exit_code: int | None
    reason: str | None
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None = Field(default=None, description="a delayed job: not started before this time")
    concurrency_key: str | None = None
    concurrency_limit: int | None = Field(default=None, description="with a concurrency_key: the limit it gave")
    on_conflict: OnConflict | None = None
    rate_limit_key: str | None = None
    cancel_requested_at: datetime | None = Field(
        default=None,
        description="when a cancel of the job was asked while it ran (202): pending until its runner stops it",
    )

    @classmethod
    def from_row(cls, row: Any) -> JobView:
        """From a stored job row (a mapping with at least these fields; a row read before
        `run_at` or the flow fields existed has none)."""
        return cls.model_validate(
            {name: row.get(name) if name in _VIEW_ADDED else row[name] for name in cls.model_fields}
        )


# View fields a stored row may lack (read before they existed): None then.
_VIEW_ADDED = frozenset(
    {"run_at", "concurrency_key", "concurrency_limit", "on_conflict", "rate_limit_key", "cancel_requested_at"}
)
