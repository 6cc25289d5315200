"""The hand-off of claimed jobs to their runners (dispatch, this package, claims them).

One request per runner carries every job claimed for it (`JobAssigned` each); the runner acks
each or not. No ack in time and the assignment is undone (back to `queued`, not an attempt), the
runner is suspect until its next heartbeat, and the pool is woken.

An ack is recorded (`acknowledge`, whose `assigned` news the outbox publishes) only if the job
is still unacknowledged `ACK_RECORD_DELAY_S` later. A runner asks to start a job as soon as it
has acked it, and the start records the ack with it (`acked_at`, the same `assigned` news): so
for most jobs the ack costs no write of its own, nor a second transaction on the row while its
start commits (it still reads whether the start came: a read, no write). What is left to record
is the ack of a runner that holds a job before starting it, or whose start is late (a start
still committing holds the row: the ack waits for it, then finds the job started). Acks recorded
together share one transaction. A stop does not wait out the delay (`hurry`).

Each hand-off continues the job's trace: its wait in the queue as a span, then the assignment's
producer span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from opentelemetry import trace

from orchestrator import telemetry
from orchestrator.batching import Batcher
from orchestrator.bus import Bus
from orchestrator.errors import RequestFailed
from orchestrator.metrics import Metrics
from orchestrator.settings import Timings
from orchestrator.store import Handoff, Store
from schemas.events import JobAssigned, Reply

# How long an accepted hand-off waits for its start to record the ack before recording it
# itself. Starts follow acks within milliseconds on an idle system; with the machine saturated
# (the benchmark's throughput run capped at 32, bench/dispatch.py), claim to start took 60 ms at
# p99 (its jobs' assigned_at to started_at). Until then a take does not see the job held, nor a
# follower its `assigned` news, if its runner has not started it.
ACK_RECORD_DELAY_S = 0.25


class HandOffs:
    """Hand-offs in flight (`in_flight`), each until its runner answered and its ack was
    recorded (or found recorded by the start); `wake` is called for a pool whose hand-off was
    refused."""

    def __init__(
        self,
        timings: Timings,
        store: Store,
        bus: Bus,
        metrics: Metrics,
        wake: Callable[[str], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.timings = timings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.wake = wake
        self.log = log
        # Acks of hand-offs that arrive together (every runner of a step, and steps of other
        # pools) are recorded in one `acknowledge` transaction.
        self._acks: Batcher[list[Handoff], None] = Batcher(self._acknowledge)
        # Set while dispatch stops: an ack waiting out its delay is recorded at once.
        self._hurry = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()

    def start(self, pool: str, runner_id: str, rows: list[dict[str, Any]]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._hand_off(pool, runner_id, rows), name=f"dispatch.hand_off.{runner_id}")
        self.in_flight.add(task)
        task.add_done_callback(self._done)
        return task

    def hurry(self) -> None:
        """Record every ack waiting out its delay now, and those to come without one (a stop:
        the lease is released once the hand-offs in flight end)."""
        self._hurry.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the sweep requeues what it left
            self.log.error("hand-off failed", exc_info=task.exception())

    async def _hand_off(self, pool: str, runner_id: str, rows: list[dict[str, Any]]) -> None:
        """One request carries every job claimed for this runner; it acks each (or not)."""
        events = [self._assignment(a) for a in rows]
        try:
            replies = await self.bus.request_many(
                self.bus.subjects.assign.at(runner_id), events, self.timings.assign_ack_timeout_s
            )
        except RequestFailed as exc:
            self.log.warning(
                "hand-off of %d jobs to %s failed: %s",
                len(events),
                runner_id,
                exc,
                extra={"runner_id": runner_id, "job_ids": ",".join(str(e.job_id) for e in events)},
            )
            replies = [Reply(ok=False)] * len(events)
        accepted = [a for a, reply in zip(rows, replies, strict=True) if reply.ok]
        refused = [a["id"] for a, reply in zip(rows, replies, strict=True) if not reply.ok]
        if refused:
            # Not an attempt: back to the queue. The runner takes nothing more until it
            # heartbeats again, so the retry goes elsewhere instead of timing out again.
            await self.store.runner_mark_suspect(runner_id)
            await self.store.transitions.unassign(runner_id, refused)
            self.wake(pool)
        if accepted:
            self.metrics.dispatched.labels(pool).inc(len(accepted))
            wait = self.metrics.queue_wait.labels(pool)
            for a in accepted:
                wait.observe((a["assigned_at"] - a["created_at"]).total_seconds())
            # The assignment is the runner's now: recorded by its start, or else here (the
            # module note), and announced (`assigned`) by the outbox either way.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_RECORD_DELAY_S):
                    await self._hurry.wait()
            await self._acks.submit([Handoff(a["id"], runner_id, a["assigned_at"]) for a in accepted])

    async def _acknowledge(self, batches: list[list[Handoff]]) -> list[None]:
        await self.store.transitions.acknowledge([h for handoffs in batches for h in handoffs])
        return [None] * len(batches)

    def _assignment(self, a: dict[str, Any]) -> JobAssigned:
        carrier = dict(a["trace_context"] or {})
        if telemetry.recording():
            carrier = _traced_hand_off(a, carrier, self.bus.subjects.assign.at(a["runner_id"]).subject)
        return JobAssigned(
            job_id=a["id"],
            pool=a["pool"],
            runner_id=a["runner_id"],
            attempt=a["attempt"] + 1,
            payload=a["payload"],
            timeout_s=a["timeout_s"],
            trace_context=carrier,
        )


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


def _traced_hand_off(a: dict[str, Any], carrier: dict[str, str], subject: str) -> dict[str, str]:
    """Continue the job's trace from the context stored with it (the admission span), after any
    wait or restart: the wait itself as a `queued` span (admission to claim, from the row's own
    timestamps), then the producer span of the assignment. Returns the context the assignment
    carries, so the runner's span is its child."""
    parent = telemetry.extract(carrier)
    job = {"orchestrator.job_id": str(a["id"]), "orchestrator.pool": a["pool"]}
    tracer = trace.get_tracer("orchestrator.dispatch")
    waited = tracer.start_span("queued", context=parent, attributes=job, start_time=_ns(a["created_at"]))
    waited.end(end_time=_ns(a["assigned_at"]))
    with tracer.start_as_current_span(
        f"send {subject}",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "send",
            "messaging.operation.name": "assign",
            "orchestrator.runner_id": a["runner_id"],
            "orchestrator.attempt": a["attempt"] + 1,
            **job,
        },
    ):
        return telemetry.inject()
