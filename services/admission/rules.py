"""Admission's rules, apart from its doors (services/admission/doors.py): whether a spec can ever run in
its pool, when a shed producer should retry, when a reservation expires, what a spec's row is, and
what a key already used means. Pure functions and the values they pass around."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from orchestrator.store import NewJob
from orchestrator.tokens import token_hash
from schemas.events import AdmissionResult, ErrorDetail
from schemas.ids import uuid7
from schemas.jobs import JobSpec, JobView
from schemas.pools import PoolConfig

# Retry-After bounds: a pool that drained nothing lately gets the longest.
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0
# A take-style job (a reservation) expires after this long without a poll from its client.
TAKE_ABANDON_AFTER_S = 30.0


def judge(spec: JobSpec, pool: PoolConfig | None, rate_limits: Collection[str] = ()) -> ErrorDetail | None:
    """Why `spec` can never run in `pool`, or None when it can. Its rate limit must exist (one of
    `rate_limits`): a key nobody set would be a typo that limits nothing."""
    if pool is None:
        return ErrorDetail(code="unsatisfiable", message=f"pool {spec.pool!r} does not exist", field="pool")
    why = pool.unrunnable(spec.pool, spec.labels, spec.plan)
    if why is not None:
        field, message = why
        return ErrorDetail(code="unsatisfiable", message=message, field=field)
    if spec.rate_limit_key is not None and spec.rate_limit_key not in rate_limits:
        key = spec.rate_limit_key
        message = f"no rate limit {key!r}: set it first (PUT /v1/rate-limits/{key} with its limit and period_s)"
        return ErrorDetail(code="unsatisfiable", message=message, field="rate_limit_key")
    return None


def retry_after_s(excess: int, drained_last_minute: int) -> float:
    """When a shed producer should retry: the time the pool took lately to finish `excess` jobs."""
    if drained_last_minute <= 0:
        return MAX_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, excess * 60.0 / drained_last_minute))


def abandon_after_s(spec: JobSpec) -> float | None:
    """A reservation (no `payload.command`) is take-style: its client must keep polling, so it
    expires after `TAKE_ABANDON_AFTER_S` without a poll unless the spec says otherwise (seed 003)."""
    if spec.abandon_after_s is not None:
        return spec.abandon_after_s
    return None if "command" in spec.payload else TAKE_ABANDON_AFTER_S


@dataclass
class Submission:
    """One job offered at a door: its spec, or why it has none (malformed / invalid)."""

    spec: JobSpec | None
    key: str | None  # the spec's own key, else the door's (Nats-Msg-Id, stream position)
    trace_context: dict[str, str]
    error: ErrorDetail | None = None
    stream_seq: int | None = None
    body: bytes | None = None
    body_pool: str | None = None  # without a spec: the `pool` its body named, if any

    @property
    def pool(self) -> str | None:
        """The pool it names, valid or not (what its refusal is recorded and told under)."""
        return self.spec.pool if self.spec is not None else self.body_pool


@dataclass
class Decision:
    outcome: str  # admitted | existing | rejected
    row: dict[str, Any] | None = None
    error: ErrorDetail | None = None
    retry_after_s: float | None = None
    token: str | None = None

    def result(self) -> AdmissionResult:
        job = JobView.from_row(self.row) if self.row is not None else None
        return AdmissionResult(
            outcome=self.outcome,  # type: ignore[arg-type]
            job=job,
            token=self.token,
            error=self.error,
            retry_after_s=self.retry_after_s,
        )


@dataclass(frozen=True)
class Planned:
    index: int
    spec: JobSpec
    token: str
    job: NewJob


def new_job(key: str | None, spec: JobSpec, token: str, trace_context: dict[str, str]) -> NewJob:
    """The row a spec becomes (the key: its own, else the door's, else the new job's id)."""
    job_id = uuid7()
    return NewJob(
        id=job_id,
        key=key or str(job_id),
        spec=spec.canonical(),
        pool=spec.pool,
        labels=sorted(set(spec.labels)),
        plan=spec.plan,
        tenant=spec.tenant,
        priority=spec.priority,
        payload=spec.payload,
        timeout_s=spec.timeout_s,
        max_attempts=spec.max_attempts,
        abandon_after_s=abandon_after_s(spec),
        token_hash=token_hash(token),
        trace_context=trace_context,
        tolerations=sorted(set(spec.tolerations)),
        retry=spec.retry.model_dump(mode="json") if spec.retry else None,
        run_at=spec.run_at,
        delay_s=spec.delay_s,
        concurrency_key=spec.concurrency_key,
        concurrency_limit=(spec.concurrency_limit or 1) if spec.concurrency_key else None,
        on_conflict=(spec.on_conflict or "queue") if spec.concurrency_key else None,
        rate_limit_key=spec.rate_limit_key,
    )


def same_key(existing: dict[str, Any], spec: JobSpec) -> Decision:
    if existing["spec"] == spec.canonical():
        return Decision("existing", existing)
    error = ErrorDetail(
        code="conflict",
        message=f"key {existing['key']!r} is already used by job {existing['id']} with a different spec",
        field="key",
    )
    return Decision("rejected", existing, error)
