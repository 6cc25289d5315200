"""Admission: the one place a job is accepted into the durable queue or refused with a reason.

One function, `admit`, behind three doors: the JetStream intake (`<ns>.v1.jobs.submit`, a durable
pull consumer shared by every admission instance, acked only after the Postgres commit), core
request/reply (`<ns>.v1.jobs.submit.req`, which the HTTP API uses too), so every door gives the
same decision for the same spec.

Decisions, in order: malformed or invalid (names the field); never runnable (unknown pool, a
label the pool cannot offer, a plan it does not allow, `max_concurrent = 0`: rejected now, never
queued, seed 004); over `max_active` (shed, seed 001); then an idempotent insert keyed by the
job's key (same key and spec: the existing job; another spec: conflict).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.errors import StoreUnavailable
from orchestrator.lifecycle import Service
from orchestrator.settings import Settings
from orchestrator.store import NewJob, Store
from schemas.events import (
    AdmissionResult,
    ErrorDetail,
    JobAdmitted,
    JobRejected,
    JobSubmitted,
    error_from_validation,
)
from schemas.ids import uuid7
from schemas.jobs import JobSpec, JobView

_tracer = telemetry.tracer("orchestrator.admission")


class AdmissionConfig(BaseModel):
    durable: str = "admission"
    fetch_batch: int = 100
    # A store outage redelivers the message after this delay instead of at once.
    retry_delay_s: float = 1.0


def judge(spec: JobSpec, pool: dict[str, Any] | None) -> ErrorDetail | None:
    """Why `spec` can never run in `pool`, or None when it can."""

    def unsatisfiable(message: str, field: str) -> ErrorDetail:
        return ErrorDetail(code="unsatisfiable", message=message, field=field)

    if pool is None:
        return unsatisfiable(f"pool {spec.pool!r} does not exist", "pool")
    missing = sorted(set(spec.labels) - set(pool["labels"]))
    if missing:
        return unsatisfiable(
            f"pool {spec.pool!r} cannot offer labels {missing} (it offers {sorted(pool['labels'])})", "labels"
        )
    if pool["allowed_plans"] and spec.plan not in pool["allowed_plans"]:
        return unsatisfiable(
            f"plan {spec.plan!r} may not use pool {spec.pool!r} (allowed: {sorted(pool['allowed_plans'])})",
            "plan",
        )
    if pool["max_concurrent"] == 0:
        return unsatisfiable(f"pool {spec.pool!r} has max_concurrent = 0: nothing in it can ever run", "pool")
    return None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Admission(Service):
    name = "admission"

    def __init__(self, settings: Settings, store: Store, bus: Bus, config: AdmissionConfig | None = None):
        super().__init__()
        self.settings = settings
        self.store = store
        self.bus = bus
        self.config = config or AdmissionConfig()

    async def on_start(self) -> None:
        await self.bus.ensure_intake_stream()
        intake = await self.bus.intake_subscription(self.config.durable)
        self.on_cleanup(intake.unsubscribe)
        sub = await self.bus.subscribe(
            self.bus.subjects.submit_request,
            JobSubmitted,
            self._on_request,
            queue=self.config.durable,
            invalid_reply=lambda error: AdmissionResult(outcome="rejected", error=error),
        )
        self.on_cleanup(sub.unsubscribe)
        self.spawn(self._pull(intake), "intake")

    # --- the function behind every door --------------------------------------------------------

    async def admit(self, spec: JobSpec, *, key: str | None = None) -> AdmissionResult:
        """Admit `spec` (its own key first, then `key`, then a fresh id) or say why not."""
        with _tracer.start_as_current_span("admit", attributes={"orchestrator.pool": spec.pool}) as span:
            pool = await self.store.pool_get(spec.pool)
            error = judge(spec, pool)
            if error is not None:
                return await self._reject(spec, error)
            job_id = uuid7()
            token = secrets.token_urlsafe(24)
            outcome = await self.store.job_admit(
                NewJob(
                    id=job_id,
                    key=spec.key or key or str(job_id),
                    spec=spec.canonical(),
                    pool=spec.pool,
                    labels=sorted(set(spec.labels)),
                    plan=spec.plan,
                    tenant=spec.tenant,
                    priority=spec.priority,
                    payload=spec.payload,
                    timeout_s=spec.timeout_s,
                    max_attempts=spec.max_attempts,
                    abandon_after_s=spec.abandon_after_s,
                    token_hash=token_hash(token),
                    trace_context=telemetry.inject(),
                    tolerations=sorted(set(spec.tolerations)),
                ),
                max_active=pool["max_active"],  # type: ignore[index]
            )
            span.set_attribute("orchestrator.admission.outcome", outcome.outcome)
            if outcome.outcome == "overloaded":
                return await self._reject(
                    spec,
                    ErrorDetail(
                        code="overloaded",
                        message=f"pool {spec.pool!r} is at max_active = {pool['max_active']}: try again later",  # type: ignore[index]
                        field="pool",
                    ),
                    retry_after_s=1.0,
                )
            job = JobView.from_row(outcome.job)
            if outcome.outcome == "conflict":
                return AdmissionResult(
                    outcome="rejected",
                    job=job,
                    error=ErrorDetail(
                        code="conflict",
                        message=f"key {job.key!r} is already used by job {job.id} with a different spec",
                        field="key",
                    ),
                )
            if outcome.outcome == "existing":
                return AdmissionResult(outcome="existing", job=job)
            span.set_attribute("orchestrator.job_id", str(job.id))
            await self.bus.publish(
                self.bus.subjects.job_event("admitted", job.pool),
                JobAdmitted(job_id=job.id, key=job.key, pool=job.pool, priority=job.priority),
            )
            return AdmissionResult(outcome="admitted", job=job, token=token)

    async def _reject(self, spec: JobSpec, error: ErrorDetail, retry_after_s: float | None = None) -> AdmissionResult:
        await self.bus.publish(
            self.bus.subjects.job_event("rejected", spec.pool),
            JobRejected(key=spec.key, pool=spec.pool, reason=error.code, message=error.message, field=error.field),
        )
        return AdmissionResult(outcome="rejected", error=error, retry_after_s=retry_after_s)

    # --- door: core request/reply ------------------------------------------------------------

    async def _on_request(self, event: JobSubmitted, msg: Msg) -> AdmissionResult:
        try:
            return await self.admit(event.spec())
        except StoreUnavailable as exc:
            return AdmissionResult(
                outcome="rejected",
                error=ErrorDetail(code="unavailable", message=f"the queue is unavailable: {exc}"),
                retry_after_s=self.config.retry_delay_s,
            )

    # --- door: JetStream intake --------------------------------------------------------------

    async def _pull(self, intake: Any) -> None:
        while True:
            try:
                msgs = await intake.fetch(self.config.fetch_batch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # NATS reconnecting: the consumer is durable, nothing is lost
                self.log.warning("intake fetch failed: %s", exc)
                await asyncio.sleep(self.config.retry_delay_s)
                continue
            for msg in msgs:
                await self._admit_message(msg)

    async def _admit_message(self, msg: Msg) -> None:
        ctx = telemetry.extract(msg.headers)
        with _tracer.start_as_current_span(
            f"process {msg.subject}",
            context=ctx,
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject},
        ):
            try:
                spec = JobSubmitted.model_validate_json(msg.data).spec()
            except ValidationError as exc:
                # Poison: terminate so it is never redelivered, and say why on the rejected subject.
                error = error_from_validation(exc)
                self.log.warning("terminated invalid intake message: %s", error.message)
                await self.bus.publish(
                    self.bus.subjects.job_event("rejected", "_invalid"),
                    JobRejected(key=None, pool=None, reason=error.code, message=error.message, field=error.field),
                )
                await msg.term()
                return
            # Without a key of its own, a redelivered message must still map to one job.
            headers = msg.headers or {}
            key = headers.get("Nats-Msg-Id") or f"js:{msg.metadata.stream}:{msg.metadata.sequence.stream}"
            try:
                await self.admit(spec, key=key)
            except StoreUnavailable as exc:
                self.log.warning("store unavailable, will redeliver: %s", exc)
                await msg.nak(delay=self.config.retry_delay_s)
                return
            await msg.ack()
