"""Dispatch: hands each queued job to a free runner slot the moment one exists.

Wakes on `JobAdmitted`, `SlotAvailable`, `PoolUpdated` (a raised cap or an unpause frees
capacity), at start, and on a slow safety sweep (events can be
lost; Postgres is the truth). Wakes for one pool coalesce: a pool has at most one drain running,
and a wake that arrives during it makes the drain go round once more. A drain runs steps back to
back (seed 000) until a step says stop: `dispatched` goes on; `no_job`, `no_runner`,
`at_capacity`, `paused`, `unknown_pool` and `failed` stop until the next wake.

A step is one transaction in the store (lock the pool row, derive in-flight from job rows,
claim up to the budget with SKIP LOCKED), so `max_concurrent` holds with any number of
dispatchers. Then the hand-off: `JobAssigned` to the runner as a request; no ack in time and the
assignment is undone (back to `queued`, not an attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace
from pydantic import BaseModel

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.errors import OrchestratorError, RequestFailed
from orchestrator.lifecycle import Service, every
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import JobAdmitted, JobAssigned, PoolUpdated, Reply, SlotAvailable

_tracer = telemetry.tracer("orchestrator.dispatch")


class DispatchConfig(BaseModel):
    # Jobs claimed per step: large enough to fill many slots in one transaction.
    step_limit: int = 256


class Dispatch(Service):
    name = "dispatch"

    def __init__(self, settings: Settings, store: Store, bus: Bus, config: DispatchConfig | None = None):
        super().__init__()
        self.settings = settings
        self.store = store
        self.bus = bus
        self.config = config or DispatchConfig()
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # Counted per step status; read by tests and, later, metrics.
        self.step_counts: dict[str, int] = {}

    async def on_start(self) -> None:
        s = self.bus.subjects
        for subject, model in (
            (s.job_events("admitted"), JobAdmitted),
            (s.slot_available(), SlotAvailable),
            (s.pool_updated(), PoolUpdated),
        ):
            sub = await self.bus.subscribe(subject, model, self._on_wake)
            self.on_cleanup(sub.unsubscribe)
        self.spawn(every(self.settings.sweep_interval_s, self.sweep, self.log, "dispatch sweep"), "sweep")
        await self.sweep()

    async def on_stop(self) -> None:
        drains = list(self._drains.values())
        for task in drains:
            task.cancel()
        for task in drains:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _on_wake(self, event: JobAdmitted | SlotAvailable | PoolUpdated, msg: Msg) -> None:
        self.wake(event.pool)

    async def sweep(self) -> None:
        for pool in await self.store.pools_with_queued():
            self.wake(pool)

    def wake(self, pool: str) -> None:
        if not self.running:
            return
        if pool in self._drains:
            self._again.add(pool)
            return
        task = asyncio.create_task(self._drain(pool), name=f"dispatch.drain.{pool}")
        self._drains[pool] = task
        task.add_done_callback(lambda _: self._drains.pop(pool, None))

    async def _drain(self, pool: str) -> None:
        while True:
            self._again.discard(pool)
            status = await self.step(pool)
            if status == "dispatched" or pool in self._again:
                continue
            return

    async def step(self, pool: str) -> str:
        """Claim and hand off one batch; return the step's status."""
        try:
            claim = await self.store.job_claim_step(pool, self.config.step_limit)
        except OrchestratorError as exc:
            self.log.warning("dispatch step for %s failed: %s", pool, exc)
            claim_status = "failed"
        else:
            claim_status = claim.status
            if claim.assignments:
                await asyncio.gather(*(self._hand_off(a) for a in claim.assignments))
        self.step_counts[claim_status] = self.step_counts.get(claim_status, 0) + 1
        return claim_status

    async def _hand_off(self, a: dict[str, Any]) -> None:
        ctx = telemetry.extract(a["trace_context"])  # continue the producer's trace after the wait
        with _tracer.start_as_current_span(
            "dispatch",
            context=ctx,
            kind=trace.SpanKind.PRODUCER,
            attributes={"orchestrator.job_id": str(a["id"]), "orchestrator.runner_id": a["runner_id"]},
        ):
            event = JobAssigned(
                job_id=a["id"],
                pool=a["pool"],
                runner_id=a["runner_id"],
                attempt=a["attempt"] + 1,
                payload=a["payload"],
                timeout_s=a["timeout_s"],
            )
            try:
                reply = await self.bus.request(
                    self.bus.subjects.assign(a["runner_id"]), event, Reply, self.settings.assign_ack_timeout_s
                )
                accepted = reply.ok
            except RequestFailed as exc:
                self.log.warning("hand-off of %s to %s failed: %s", a["id"], a["runner_id"], exc)
                accepted = False
            if not accepted:
                await self.store.job_unassign(a["id"], a["runner_id"])
                return
            await self.bus.publish(self.bus.subjects.job_event("assigned", a["pool"]), event)
