"""Admission: the one place a job is accepted into the durable queue or refused with a reason.

One function, `admit_many`, behind three doors: the JetStream intake (`<ns>.v1.jobs.submit`, a
durable pull consumer shared by every admission instance), core request/reply
(`<ns>.v1.jobs.submit.req`, which the HTTP API uses too), so every door gives the same decision
for the same spec. A request is a batch of one.

Decisions, in order: malformed or invalid (names the field); never runnable (unknown pool, a
label the pool cannot offer, a plan it does not allow, `max_concurrent = 0`, a rate limit nobody
set: rejected now, never queued, seed 004); a key already used (same spec: the existing job, even
when the pool is full, so a retry after a timeout is answered; another spec: conflict); over
`max_active` (shed, seed 001, with a Retry-After from the pool's drain over the last minute); its
concurrency key's `on_conflict` (`reject` refuses it while the key is at its limit; the cancel
modes cancel the key's other jobs in the same transaction: concurrency.py); else inserted. The rules
themselves (pure functions) are services/admission/rules.py; this module is the doors.

Batching: the JetStream door fetches up to `fetch_batch` messages and decides them all in one
transaction: each pool's admission lock taken once (in name order), its configuration and active
count read once under it, one multi-row insert, the door's refusals recorded in the same commit,
then the acks. The lock is what keeps `max_active` exact across any number of instances, and
pool changes take it too, so a batch never admits against a configuration being replaced.

A JetStream producer has nobody to answer, so the door's refusals are written to the
`rejections` table (`GET /v1/rejections`) besides the `JobRejected` event; input that does not
parse is terminated, never redelivered. Refusals are also counted by reason (`rejected`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from orchestrator import telemetry
from orchestrator.bus import Bus, Delivery, Topic
from orchestrator.bus.pull import Pull
from orchestrator.errors import BusUnavailable, InvalidInput, NothingApplied, StoreError, StoreUnavailable
from orchestrator.lifecycle import Service
from orchestrator.metrics import Metrics
from orchestrator.retrying import Backoff
from orchestrator.settings import AdmissionSettings
from orchestrator.store import AdmissionTx, Rejection, Store
from orchestrator.store.transitions import UNAVAILABLE_RETRY_S
from orchestrator.store.transitions.news import rejected
from orchestrator.tokens import new_token
from orchestrator.wakes import announce_ended, announce_queued
from schemas.events import (
    AdmissionResult,
    ErrorDetail,
    JobSubmitted,
    error_from_validation,
)
from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from services.admission.concurrency import KeyBook, keys_of
from services.admission.rules import (
    Decision,
    Planned,
    Submission,
    judge,
    new_job,
    retry_after_s,
    same_key,
)

_tracer = telemetry.tracer("orchestrator.admission")

# How much of a malformed message the rejections table keeps, and of the pool an invalid one named.
BODY_EXCERPT_BYTES = 1024
POOL_EXCERPT_CHARS = 256


class Admission(Service):
    name = "admission"

    def __init__(
        self,
        config: AdmissionSettings,
        store: Store,
        bus: Bus,
        *,
        metrics: Metrics | None = None,
    ):
        super().__init__()
        self.config = config
        self.store = store
        self.bus = bus
        self.metrics = metrics or Metrics()

    async def on_start(self) -> None:
        await self.bus.ensure_intake_stream()
        intake = await self.bus.intake_subscription(self.config.durable)
        self.on_cleanup(intake.unsubscribe)
        sub = await self.bus.subscribe(
            self.bus.subjects.submit_request,
            self._on_request,
            queue=self.config.durable,
            invalid_reply=self._invalid_reply,
        )
        self.on_cleanup(sub.unsubscribe)
        self.spawn(self._pull(intake), "intake")

    # --- the function behind every door --------------------------------------------------------

    async def admit_many(self, subs: Sequence[Submission], *, record: bool) -> list[Decision]:
        """Decide every submission in one transaction, then publish the news; `record` writes the
        refusals to the rejections table in that transaction (the JetStream door). While
        Postgres cannot take it (restarting, failing over: `NothingApplied`, so nothing of it
        was admitted), the batch is decided again after a backoff, within a few seconds."""
        valid = [(i, s, s.spec) for i, s in enumerate(subs) if s.spec is not None]
        pools = {spec.pool for _, _, spec in valid}
        keys = {s.key for _, s, _ in valid if s.key is not None}
        backoff = Backoff(UNAVAILABLE_RETRY_S)
        while True:
            decisions: list[Decision | None] = [
                Decision("rejected", error=s.error) if s.spec is None else None for s in subs
            ]
            try:
                async with self.store.transitions.admission(pools, keys) as tx:
                    await self.decide(tx, valid, decisions)
                    if record:
                        refused = [self._rejection(s, d) for s, d in zip(subs, decisions, strict=True) if d.error]  # type: ignore[union-attr]
                        await tx.record(refused)
                break
            except NothingApplied as exc:
                level = logging.DEBUG if backoff.waited else logging.WARNING  # once per batch
                self.log.log(level, "admitting %d jobs: %s; trying again", len(subs), exc)
                await backoff.wait_or_raise(exc)
        done: list[Decision] = decisions  # type: ignore[assignment]
        await self._announce(subs, done, recorded=record)
        if tx.cancelled:  # jobs a new one of their key replaced: the slots of those assigned are free
            await announce_ended(self.store, self.bus, [job for job in tx.cancelled if job.state != "running"])
        return done

    @staticmethod
    async def decide(
        tx: AdmissionTx, valid: list[tuple[int, Submission, JobSpec]], decisions: list[Decision | None]
    ) -> None:
        """Decide `valid` submissions inside an admission transaction (`decisions[i]` for each
        index i): every door's, and the scheduler's, whose fires are admitted by these rules too."""
        pools = {name: PoolConfig.from_row(row) for name, row in tx.pools.items()}
        active = await tx.active([name for name, pool in pools.items() if pool.max_active >= 0])
        rate_keys = {spec.rate_limit_key for _, _, spec in valid if spec.rate_limit_key is not None}
        rate_limits = await tx.rate_limits_known(sorted(rate_keys)) if rate_keys else set()
        concurrency_keys, acting = keys_of(spec for _, _, spec in valid)
        book = KeyBook(await tx.concurrency_keys(concurrency_keys, acting) if concurrency_keys else {})
        retry_after: dict[str, float] = {}
        planned: dict[str, Planned] = {}  # by key: what this batch inserts
        later: list[tuple[int, str, JobSpec]] = []  # the same key again, after a planned job
        for i, sub, spec in valid:
            key = sub.key  # None: a keyless request, keyed by its new job id
            pool = pools.get(spec.pool)
            error = judge(spec, pool, rate_limits)
            if error is not None:
                decisions[i] = Decision("rejected", error=error)
            elif key is not None and key in tx.existing:
                decisions[i] = same_key(tx.existing[key], spec)
            elif key is not None and key in planned:
                later.append((i, key, spec))
            elif pool is not None and pool.max_active >= 0 and active[spec.pool] >= pool.max_active:
                if spec.pool not in retry_after:
                    excess = active[spec.pool] - pool.max_active + 1
                    retry_after[spec.pool] = retry_after_s(excess, await tx.drained_last_minute(spec.pool))
                message = f"pool {spec.pool!r} is at max_active = {pool.max_active}: try again later"
                decisions[i] = Decision(
                    "rejected",
                    error=ErrorDetail(code="overloaded", message=message, field="pool"),
                    retry_after_s=retry_after[spec.pool],
                )
            else:
                token = new_token()
                job = new_job(key, spec, token, sub.trace_context)
                refused = book.admit(job)  # its on_conflict, against its key's other jobs
                if refused is not None:
                    decisions[i] = Decision("rejected", error=refused)
                    continue
                if spec.pool in active:
                    active[spec.pool] += 1
                planned[job.key] = Planned(i, spec, token, job)
        rows = {row["key"]: row for row in await tx.insert([p.job for p in planned.values()])}
        await tx.cancel(book.superseded, book.stopped)  # after the insert: this batch's jobs may be among them
        # A key missing from the insert was taken meanwhile by an admission into another pool.
        missing = [key for key in planned if key not in rows]
        taken = await tx.jobs_by_key(missing) if missing else {}
        for key, p in planned.items():
            if key in rows:
                decisions[p.index] = Decision("admitted", rows[key], token=p.token)
            else:
                decisions[p.index] = same_key(taken[key], p.spec)
        for i, key, spec in later:
            first = decisions[planned[key].index]
            assert first is not None and first.row is not None
            decisions[i] = same_key(first.row, spec)

    @staticmethod
    def _rejection(sub: Submission, decision: Decision) -> Rejection:
        assert decision.error is not None
        body = None
        if sub.spec is None and sub.body is not None:
            body = sub.body[:BODY_EXCERPT_BYTES].decode("utf-8", errors="replace")
        return Rejection(
            reason=decision.error.code,
            message=decision.error.message,
            field=decision.error.field,
            pool=sub.pool,
            key=sub.key,
            stream_seq=sub.stream_seq,
            body=body,
        )

    async def _announce(self, subs: Sequence[Submission], decisions: Sequence[Decision], *, recorded: bool) -> None:
        """After the commit: the counters, and the news of refusals a requester was answered
        (`JobAdmitted`, and the refusals `recorded` with the batch, left through the outbox)."""
        news: list[tuple[Topic[Any], BaseModel]] = []
        admitted_by_pool: dict[str, int] = {}
        for sub, d in zip(subs, decisions, strict=True):
            if d.outcome == "admitted":
                assert d.row is not None
                admitted_by_pool[d.row["pool"]] = admitted_by_pool.get(d.row["pool"], 0) + 1
            elif d.error is not None:
                self._count_rejected(d.error.code)
                if not recorded:
                    out = rejected(sub.key, sub.pool, d.error.code, d.error.message, d.error.field)
                    news.append((out.topic.under(self.bus.subjects.root), out.event))
        for pool, n in admitted_by_pool.items():  # once per pool per batch: the hot path
            self.metrics.admitted.labels(pool).inc(n)
        await self.bus.publish_many(news)
        await announce_queued(self.bus, admitted_by_pool)

    def _count_rejected(self, reason: str) -> None:
        self.metrics.count_rejected(reason)

    # --- door: core request/reply (and HTTP through it) ------------------------------------------

    async def admit(self, spec: JobSpec) -> AdmissionResult:
        """One job: a batch of one, as the request door (and in-process callers) submit it."""
        sub = Submission(spec=spec, key=spec.key, trace_context=telemetry.inject())
        [decision] = await self.admit_many([sub], record=False)
        return decision.result()

    async def _on_request(self, event: JobSubmitted) -> AdmissionResult:
        try:
            return await self.admit(event.spec())
        except (StoreUnavailable, BusUnavailable) as exc:
            return AdmissionResult(
                outcome="rejected",
                error=ErrorDetail(code="unavailable", message=f"the queue is unavailable: {exc}"),
                retry_after_s=self.config.retry_delay_s,
            )
        except InvalidInput:
            raise  # bad input, not a failure: the bus answers it with _invalid_reply
        except StoreError as exc:
            return AdmissionResult(outcome="rejected", error=ErrorDetail(code="internal", message=str(exc)))

    def _invalid_reply(self, error: ErrorDetail) -> AdmissionResult:
        self._count_rejected(error.code)
        return AdmissionResult(outcome="rejected", error=error)

    # --- door: JetStream intake ------------------------------------------------------------------

    async def _pull(self, intake: Pull) -> None:
        failing = False  # said once per outage (NATS reconnecting, the consumer electing a leader)
        while True:
            try:
                msgs = await intake.fetch(self.config.fetch_batch, timeout=1.0)
            except BusUnavailable as exc:  # the consumer is durable: nothing is lost meanwhile
                self.log.log(logging.DEBUG if failing else logging.WARNING, "intake fetch failed: %s", exc)
                failing = True
                await asyncio.sleep(self.config.retry_delay_s)
                continue
            if failing:
                self.log.info("intake fetch works again")
                failing = False
            if not msgs:
                continue
            try:
                await self._admit_messages(msgs)
            except Exception as exc:  # e.g. NATS gone mid-ack: unacked messages come back after ack_wait
                self.log.warning("intake batch failed, it will be redelivered: %s", exc)
                await asyncio.sleep(self.config.retry_delay_s)

    async def _admit_messages(self, msgs: list[Delivery]) -> None:
        subs = [self._parse(msg) for msg in msgs]
        spans = _message_spans(msgs, subs) if telemetry.recording() else []
        try:
            await self._admit_batch(msgs, subs)
        finally:
            for span in spans:
                span.end()

    async def _admit_batch(self, msgs: list[Delivery], subs: list[Submission]) -> None:
        links = None
        if telemetry.recording():  # one batch span linked to every producer's span
            links = [trace.Link(trace.get_current_span(telemetry.extract(m.headers)).get_span_context()) for m in msgs]
        with _tracer.start_as_current_span(
            "admit batch",
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={"messaging.system": "nats", "messaging.batch.message_count": len(msgs)},
        ):
            try:
                await self.admit_many(subs, record=True)
            except (StoreUnavailable, BusUnavailable) as exc:  # an outage: redelivery will succeed later
                self.log.warning("%d messages will be redelivered: %s", len(msgs), exc)
                for msg in msgs:
                    await msg.nak(delay=self.config.retry_delay_s)
                return
            except Exception as exc:
                if len(msgs) > 1:  # find the one message the store refuses; admit the rest
                    self.log.warning("batch of %d failed (%s); admitting one by one", len(msgs), exc)
                    for msg, sub in zip(msgs, subs, strict=True):
                        await self._admit_batch([msg], [sub])
                    return
                if isinstance(exc, InvalidInput):
                    await self._give_up(msgs[0], subs[0], exc)
                    return
                # Only bad input is terminal. Anything else (a read-only transaction after a
                # failover, a full disk, a deadlock) may pass later: redeliver this one.
                self.log.warning("message %s will be redelivered: %s", subs[0].stream_seq, exc)
                await msgs[0].nak(delay=self.config.retry_delay_s)
                return
        for sub, msg in zip(subs, msgs, strict=True):
            # Input that does not parse is terminated: no redelivery can fix it. Not flushed: the
            # acks leave in order, before the next pull, and one lost with the connection only
            # brings its message back after ack_wait, to be decided again (as one job: its key).
            await (msg.term() if sub.spec is None else msg.ack())

    def _parse(self, msg: Delivery) -> Submission:
        headers, seq = msg.headers, msg.stream_seq
        # Without a key of its own, a redelivered message must still map to one job, and a new
        # message must not map to an old job: sequence numbers start again when the stream is
        # made anew (NATS storage lost), so the message's own timestamp goes into the key.
        stamp = int(msg.timestamp.timestamp() * 1e6) if msg.timestamp else 0
        door_key = headers.get("Nats-Msg-Id") or f"js:{msg.stream}:{seq}:{stamp}"
        try:
            spec = JobSubmitted.model_validate_json(msg.data).spec()
        except ValidationError as exc:
            error = error_from_validation(exc)
            pool = _named_pool(msg.data) if error.code == "invalid" else None  # malformed: none to read
            return Submission(None, door_key, {}, error, stream_seq=seq, body=msg.data, body_pool=pool)
        # The job continues the producer's trace: keep its context to store with the job.
        return Submission(spec, spec.key or door_key, telemetry.carrier(headers), stream_seq=seq)

    async def _give_up(self, msg: Delivery, sub: Submission, exc: InvalidInput) -> None:
        """A lone message the store refuses as data: terminate it, and say why where it can be
        seen, so it never loops."""
        self.log.error("terminated intake message %s: %s", sub.stream_seq, exc, extra={"action": "terminate"})
        error = ErrorDetail(code="invalid", message=f"the store refused this job: {exc}")
        bad = Submission(None, sub.key, {}, error, stream_seq=sub.stream_seq, body=msg.data, body_pool=sub.pool)
        try:
            await self.admit_many([bad], record=True)
        except Exception as record_exc:
            self.log.error("could not record the refusal of message %s: %s", sub.stream_seq, record_exc)
        await msg.term()


def _named_pool(data: bytes) -> str | None:
    """The pool a body that failed validation named: its `pool` when it is a JSON object with a
    string there (cut to POOL_EXCERPT_CHARS), so its refusal is recorded and told under it."""
    try:
        body = from_json(data)
    except ValueError:
        return None
    pool = body.get("pool") if isinstance(body, dict) else None
    return pool[:POOL_EXCERPT_CHARS] if isinstance(pool, str) else None


def _message_spans(msgs: Sequence[Delivery], subs: Sequence[Submission]) -> list[trace.Span]:
    """While spans are recorded: one consumer span per intake message, a child of its producer's
    span, whose context is what the job stores (so dispatch and the runner continue from the
    admission, in the producer's trace). Ended by the caller once the batch is decided."""
    tracer = trace.get_tracer("orchestrator.admission")
    spans = []
    for msg, sub in zip(msgs, subs, strict=True):
        span = tracer.start_span(
            f"process {msg.subject}",
            context=telemetry.extract(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.operation.type": "process",
                "messaging.message.id": sub.key or "",
            },
        )
        sub.trace_context = telemetry.inject(context=trace.set_span_in_context(span))
        spans.append(span)
    return spans
