"""Dispatch: hands each queued job to a free runner slot the moment one exists.

Wakes on `JobsQueued` (admission's wake at its commit), `SlotAvailable`, `PoolUpdated` (a raised
cap or an unpause frees capacity), at start, and on a slow safety sweep (events can be lost;
Postgres is the truth). Wakes for one pool coalesce: a pool has at most one drain running,
and a wake that arrives during it makes the drain go round once more. A drain runs steps back to
back (seed 000) while a step fills its limit (`dispatched` with fewer took all there was to
take: the next job or slot comes with a wake); `no_job`, `no_runner`, `at_capacity`,
`capacity_unknown` (Postgres unreachable: never dispatch blind), `paused`, `throttled`,
`unknown_pool` and `failed` stop until the next wake.

A delayed job (`run_at`, `delay_s`) and a job retried after a backoff (its retry policy) are not
claimable before they are due, and nothing announces that moment: each step that looked for jobs
says when the pool's first deferred job is due (`due_in_s`), and a timer per pool (the earliest
kept, `DueTimers`) wakes the pool then. A timer, not a poll: a pool without deferred jobs has
none. Deferred jobs are rows, so a restart loses none: the sweep on start (and on gaining the
lease) steps every pool with queued jobs, and that step arms the timer again.
Rate limits and a pool's `max_starts_per_s` work the same way: a step that passed over jobs for
want of a start says when the next start is allowed (`throttled`: the pool's cap allows none
yet), and the timer wakes the pool then. A concurrency key at its limit needs no timer: the end
of one of its jobs wakes the pool (and the other pools where the key's jobs wait:
orchestrator/wakes.py).

A step's claim is one statement in the store (lock the pool row, derive in-flight from job rows,
claim up to the budget), so `max_concurrent` holds with any number of
dispatchers. Matching visits only the job shapes (pool, labels, tenant) the free runners can take,
so its cost does not grow with non-matching jobs queued ahead (seed 004). Then the hand-off
(handoff.py): `JobAssigned` to each runner as a request, its acks recorded (by the runner's
start, or by the hand-off a moment later), a refusal undone. Hand-offs are pipelined: a drain's
next step does not wait for the acks of the last one (the claim already counts what they hold),
so a runner slow to ack stalls only its own jobs, not its pool.

A wake names its pool, and anyone who can publish on NATS can name one that does not exist:
only a pool this process knows (`KnownPools`, a cached set read from Postgres) is woken, so a
made-up name costs no claim, no per-pool entry and no metric label; what it keeps per pool is
dropped when the pool is deleted.

Under leader election (`leaderships` given: `orchestrator up`, `serve dispatch`) it dispatches
a pool only while this process holds the lease of the pool's dispatch shard: every step first
asks that shard's `Leadership` for the current term (which also ends on its own deadline) and
claims under that epoch, so a claim by a deposed leader is refused in Postgres (`fenced`), and
so is a claim for a pool that has moved to another shard (`wrong_shard`: the pool's shard is
read again). The pools' shards are read from Postgres (at start, by every sweep, for a pool it
does not know, and again after `PoolUpdated` or a `wrong_shard`); wakes for pools of shards it
does not lead are dropped at once. On gaining a shard it sweeps every pool of the shards it
leads. Leader-only work that is not per pool, requeueing assignments a dead dispatcher left
unstarted, is done by the holder of the first shard alone (`Leaderships.first`). Hand-offs
already claimed finish when leadership is lost (their claims were valid); no new step starts.
Without `leaderships` (one instance, tests) it always dispatches, unfenced.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from orchestrator.bus import Bus
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.due import DueTimers
from orchestrator.errors import OrchestratorError, StoreUnavailable
from orchestrator.known_pools import KnownPools
from orchestrator.leadership import Leaderships, leads, sweep_on_gain
from orchestrator.lifecycle import Service, every
from orchestrator.metrics import Metrics
from orchestrator.settings import DispatchSettings, Timings
from orchestrator.store import Fence, Store
from schemas.events import CapacityUnknown, JobsQueued, PoolUpdated, SlotAvailable
from services.dispatch.handoff import HandOffs


class Dispatch(Service):
    name = "dispatch"

    def __init__(
        self,
        config: DispatchSettings,
        timings: Timings,
        store: Store,
        bus: Bus,
        *,
        leaderships: Leaderships | None = None,
        metrics: Metrics | None = None,
        known_pools: KnownPools | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        super().__init__()
        self.config = config
        self.timings = timings
        self.store = store
        self.bus = bus
        self.clock = clock
        self.leaderships = leaderships
        self.metrics = metrics or Metrics()
        # The process's (started by its runtime), or one of its own, started with this service.
        self._own_known_pools = known_pools is None
        self.known_pools = known_pools or KnownPools(store, bus)
        if self._own_known_pools:  # a deleted pool's series go with it (the runtime's does that itself)
            self.known_pools.on_gone(self.metrics.forget_pool)
        self.known_pools.on_gone(self._forget)
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # When a slot was announced free, per pool, until the next step there (wall clock: the
        # announcement is stamped by capacity, maybe in another process).
        self._slot_freed_at: dict[str, float] = {}
        self._handoffs = HandOffs(timings, store, bus, self.metrics, self.wake, self.log)
        # Per pool, the wake for its first job not due yet (delayed, in a retry backoff, or waiting
        # for a start under a rate limit or the pool's max_starts_per_s).
        self._due = DueTimers(self.wake)
        # Per pool, its dispatch shard as last read from Postgres (under leader election).
        self._shards: dict[str, str] = {}

    async def on_start(self) -> None:
        if self._own_known_pools:
            await self.known_pools.start()
            self.on_cleanup(self.known_pools.stop)
        s = self.bus.subjects
        if self.leaderships is not None:
            self._shards = await self.store.pool_shards()
        for topic, handler in (
            (s.jobs_queued.any(), self._on_wake),
            (s.pool_updated.any(), self._on_pool_updated),
            (s.slot_available.any(), self._on_slot),
        ):
            sub = await self.bus.subscribe(topic, handler)
            self.on_cleanup(sub.unsubscribe)
        self.spawn(every(self.timings.sweep_interval_s, self.sweep, self.log, "dispatch sweep"), "sweep")
        for leadership in self.leaderships or ():
            sweep_on_gain(leadership, self, self.sweep)
        await self.sweep()

    async def on_stop(self) -> None:
        self._due.clear()
        # Steps stop (not running); claimed hand-offs get the stop timeout to finish, so no
        # assignment is left half-made, and their acks are recorded without their delay. A
        # drain's last step may start hand-offs while its drain is waited for: wait for those too.
        self._handoffs.hurry()
        loop = asyncio.get_running_loop()  # its clock: what asyncio.wait's timeout counts in
        deadline = loop.time() + self.timings.stop_timeout_s
        pending: set[asyncio.Task[None]] = set()
        while waiting := {*self._drains.values(), *self._handoffs.in_flight}:
            left = deadline - loop.time()
            if left <= 0:
                pending = waiting
                break
            await asyncio.wait(waiting, timeout=left)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _on_wake(self, event: JobsQueued) -> None:
        if await self.known_pools.knows(event.pool):
            self.wake(event.pool)

    async def _on_pool_updated(self, event: PoolUpdated) -> None:
        if await self.known_pools.knows(event.pool):
            self._shards.pop(event.pool, None)  # it may have moved: read again by its next step
            self.wake(event.pool)

    async def _on_slot(self, event: SlotAvailable) -> None:
        if not await self.known_pools.knows(event.pool):
            return
        # Only where a step will follow (and take it back out): a standby must not hoard stale times.
        if self.running and self._leads(event.pool):
            self._slot_freed_at.setdefault(event.pool, event.at.timestamp())
        self.wake(event.pool)

    def _forget(self, pool: str) -> None:
        """A deleted pool: what this process kept for it goes (a drain running ends on its own)."""
        self._again.discard(pool)
        self._slot_freed_at.pop(pool, None)
        self._due.forget(pool)
        self._shards.pop(pool, None)

    def _leads(self, pool: str) -> bool:
        """Whether this process may dispatch `pool` now: it leads the pool's shard (a pool whose
        shard it has not read yet: any shard; its step reads it)."""
        if self.leaderships is None:
            return True
        shard = self._shards.get(pool)
        if shard is None:
            return any(leadership.leading for leadership in self.leaderships)
        leadership = self.leaderships.get(shard)
        return leadership is not None and leadership.leading

    async def sweep(self) -> None:
        """Every pool with queued jobs of the shards this process leads, and the assignments
        nobody started (Postgres is the truth)."""
        if self.leaderships is not None and not self.leaderships.leading():
            return
        # Not per pool: one runner, the first shard's holder (every shard's would repeat it).
        if leads(self.leaderships.first if self.leaderships is not None else None):
            requeued = await self.store.transitions.requeue_unstarted(self.config.assigned_stale_s)
            if requeued:
                self.log.warning("requeued %d assignments never started", len(requeued))
        queued = await self.store.pools_with_queued()
        self._shards.update(queued)
        for pool in queued:
            self.wake(pool)

    def wake(self, pool: str) -> None:
        if not self.running or not self._leads(pool):
            return
        if pool in self._drains:
            self._again.add(pool)
            return
        self._drains[pool] = asyncio.create_task(self._drain(pool), name=f"dispatch.drain.{pool}")

    async def _drain(self, pool: str) -> None:
        moved = False
        try:
            while self.running:
                self._again.discard(pool)
                status, claimed, _ = await self._step(pool)
                # A step that claimed less than its limit took all it could: another finds more
                # only after a change, and every change wakes the pool (`_again`).
                full = status == "dispatched" and claimed >= self.config.step_limit
                if full or (pool in self._again and status not in ("not_leader", "fenced", "wrong_shard")):
                    continue
                if status == "wrong_shard" and not moved:  # once more, under its shard's term
                    moved = True
                    continue
                return
        finally:
            # In the same turn as the last check of `_again` (no await between): a wake that
            # arrives after it starts a new drain instead of being lost to a finishing one.
            self._drains.pop(pool, None)

    async def step(self, pool: str) -> str:
        """Claim and hand off one batch; return the step's status (`not_leader` when this process
        does not hold the lease of the pool's shard, `fenced` when Postgres knows a newer leader,
        `wrong_shard` when the pool had moved to another shard) once every runner has answered
        and its acks are recorded (or found recorded by its starts: handoff.ACK_RECORD_DELAY_S)."""
        status, _, handoffs = await self._step(pool)
        await asyncio.gather(*handoffs)
        return status

    async def _step(self, pool: str) -> tuple[str, int, list[asyncio.Task[None]]]:
        """Claim one batch and start its hand-offs: the status, the jobs claimed, and the
        hand-offs in flight."""
        handoffs: list[asyncio.Task[None]] = []
        claimed = 0
        fence: Fence | None = None
        if self.leaderships is not None:
            try:
                shard = await self._shard_of(pool)
            except OrchestratorError as exc:
                self.log.warning("the dispatch shard of %s could not be read: %s", pool, exc)
                self._count(pool, "failed")
                return "failed", claimed, handoffs
            if shard is None:
                self._count(pool, "unknown_pool")
                return "unknown_pool", claimed, handoffs
            leadership = self.leaderships.get(shard)
            fence = leadership.fence() if leadership is not None else None  # read once: it may end meanwhile
            if fence is None:
                self._count(pool, "not_leader")
                return "not_leader", claimed, handoffs
        try:
            claim = await self.store.transitions.claim(pool, self.config.step_limit, fence)
        except StoreUnavailable as exc:
            # In-flight counts live in Postgres: without them, never dispatch blind.
            claim_status = "capacity_unknown"
            self.log.warning("capacity of %s unknown, skipping: %s", pool, exc)
            await self.bus.publish(
                self.bus.subjects.capacity_unknown.at(pool), CapacityUnknown(pool=pool, reason=str(exc))
            )
        except OrchestratorError as exc:
            self.log.warning("dispatch step for %s failed: %s", pool, exc)
            claim_status = "failed"
        else:
            claim_status = claim.status
            if claim.due_in_s is not None and self.running:
                self._due.arm(pool, claim.due_in_s)
            if claim_status == "fenced" and self.leaderships is not None and fence is not None:
                self.leaderships[fence.shard].deposed(fence.epoch)
            elif claim_status == "wrong_shard":
                self._shards.pop(pool, None)  # moved: its next step reads where to
            if claim.in_flight is not None:
                self.metrics.peak(pool, claim.in_flight)
            for reason, lanes in (("concurrency_key", claim.held_by_key), ("rate_limit", claim.held_by_rate)):
                if lanes:
                    self.metrics.held_back.labels(pool, reason).inc()
            claimed = len(claim.assignments)
            by_runner: dict[str, list[dict[str, Any]]] = {}
            for a in claim.assignments:
                by_runner.setdefault(a["runner_id"], []).append(a)
            handoffs = [self._handoffs.start(pool, runner_id, rows) for runner_id, rows in by_runner.items()]
        self._count(pool, claim_status)
        return claim_status, claimed, handoffs

    async def _shard_of(self, pool: str) -> str | None:
        """The dispatch shard of `pool` (None: no such pool), read from Postgres when not known."""
        shard = self._shards.get(pool)
        if shard is None:
            shard = (await self.store.pool_shards(pool)).get(pool)
            if shard is not None:
                self._shards[pool] = shard
        return shard

    def _count(self, pool: str, status: str) -> None:
        if status == "unknown_pool":  # deleted since it was known: no series for a pool that is gone
            self._forget(pool)
            return
        m = self.metrics
        m.steps.labels(pool, status).inc()
        if status == "at_capacity":
            m.at_capacity.labels(pool).inc()
        elif status == "throttled":
            m.held_back.labels(pool, "max_starts_per_s").inc()
        elif status == "capacity_unknown":
            m.capacity_unknown.labels(pool).inc()
        # Slot-to-assign counts only a slot that work was waiting for: the first step after the
        # announcement dispatched. Any other outcome forgets it (no job, or another cap binds).
        freed_at = self._slot_freed_at.pop(pool, None)
        if freed_at is not None and status == "dispatched":
            m.slot_to_assign.labels(pool).observe(max(0.0, self.clock.time() - freed_at))
