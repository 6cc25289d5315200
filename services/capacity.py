"""Capacity: the runner registry, the runners' reports, and the news that a slot is free.

Runners register, heartbeat, ask permission to start a job and report its end, all through
requests answered after the change is committed. Permission to start is granted only to the
runner a job is assigned to, for that very attempt, so a stale assignment never runs twice.
Whenever capacity in a pool appears or grows (a job ended, a runner joined, jobs were released
from a lost runner) it publishes `SlotAvailable{pool, free}`, which wakes the dispatcher at once.

It also elects each leader-mode pool's leader runner (seed 002): the oldest active runner without
a taint, stored on the pool row so the claim step offers that pool's work to it alone. Election
is one statement in Postgres, re-run for a pool on every change of its runners (registration,
a suspect runner answering again, loss, drain, taints changed by an operator, the pool's
mode changed) and for every pool
every `leader_check_interval_s`, so a lost event is corrected there; a change is announced with
`PoolLeaderChanged`, and a new leader with `SlotAvailable` so the dispatcher wakes.

Take-style jobs (seed 003) whose client stopped polling for `abandon_after_s` before taking its
runner expire on the same sweep (the transition's news tells the runner holding a slot for one to
let go), and the freed capacity is announced at once.

Every change of a job's state goes through `store.transitions`, whose news the outbox relay
publishes after the commit; what capacity publishes itself is only the wake `SlotAvailable`.

It runs the retention pruner (orchestrator/retention.py: finished jobs, rejections, runners and
workers gone for good, empty job shapes) every `prune_interval_s`, in every instance: the pruner
is safe in any number.

Counts are never stored: the free capacity of a pool is derived from job rows, so no slot can
leak. A sweep marks runners lost after `runner_ttl_s` of silence and releases their jobs; a
runner that cannot reach capacity for most of that TTL kills its jobs first (see the runner), so a
released job never runs twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel

from orchestrator.batching import Batcher
from orchestrator.bus import Bus, Topic
from orchestrator.bus.job_logs import JobLogs
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import NotFound
from orchestrator.lifecycle import Service, every
from orchestrator.metrics import Metrics
from orchestrator.retention import Pruner
from orchestrator.settings import RUNNER_REQUEST_TIMEOUT_S, CapacitySettings, LogLimits, Timings
from orchestrator.store import End, Heartbeat, Job, Reconciled, RunnerSpec, Start, Store
from orchestrator.wakes import announce_free, announce_freed, announce_keys_freed
from schemas.events import (
    ErrorDetail,
    HeartbeatReply,
    JobFinished,
    JobStarted,
    PoolUpdated,
    Reply,
    RunnerDraining,
    RunnerHeartbeat,
    RunnerRegistered,
    RunnerStopped,
    RunnerTaintsChanged,
    StopOrder,
)
from schemas.jobs import JobState

OK = Reply(ok=True)
M = TypeVar("M", bound=BaseModel)


def _orders(found: Reconciled) -> HeartbeatReply:
    return HeartbeatReply(ok=True, stop=[StopOrder(job_id=s.job_id, why=s.why, detail=s.detail) for s in found.stop])  # type: ignore[arg-type]


class Capacity(Service):
    name = "capacity"

    def __init__(
        self,
        config: CapacitySettings,
        timings: Timings,
        log_limits: LogLimits,
        store: Store,
        bus: Bus,
        *,
        metrics: Metrics | None = None,
        pruner: Pruner | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.config = config
        self.pruner = pruner  # None: this instance prunes nothing (tests)
        self.timings = timings
        self.log_limits = log_limits
        self.store = store
        self.bus = bus
        self.metrics = metrics or Metrics()
        self.clock = clock
        # Reports arriving together are committed together.
        self._starts: Batcher[JobStarted, Reply] = Batcher(self._start_batch)
        self._finishes: Batcher[JobFinished, Reply] = Batcher(self._finish_batch)

    async def on_start(self) -> None:
        self._started_at = self.clock.monotonic()
        # Where runners ship their jobs' output (the API reads it): there before runners report.
        await JobLogs(self.bus).ensure_stream(self.log_limits.log_retention_s, self.log_limits.log_store_max_bytes)
        s = self.bus.subjects
        await self._serve(s.runner_register, self._on_register)
        await self._serve(s.runner_heartbeat, self._on_heartbeat)
        await self._serve(s.runner_start, self._on_start)
        await self._serve(s.runner_finish, self._on_finish)
        await self._serve(s.runner_drain, self._on_drain)
        await self._serve(s.runner_stopped, self._on_stopped)
        await self._serve(s.runner_taints_changed, self._on_taints_changed)
        await self._serve(s.pool_updated.any(), self._on_pool_updated)
        self.spawn(every(self.timings.sweep_interval_s, self.sweep, self.log, "runner sweep"), "sweep")
        self.spawn(every(self.config.leader_check_interval_s, self.elect, self.log, "leader check"), "elect")
        if self.pruner is not None:
            self.spawn(every(self.config.prune_interval_s, self.pruner.prune, self.log, "retention pruning"), "prune")
        await self.elect()

    async def _serve(self, topic: Topic[M], handler: Callable[[M], Awaitable[BaseModel | None]]) -> None:
        """Take `topic` in turns with the other instances (a queue group), each message in its own task."""
        sub = await self.bus.subscribe(topic, handler, queue=self.name, concurrent=True)
        self.on_cleanup(sub.unsubscribe)

    async def _on_register(self, event: RunnerRegistered) -> HeartbeatReply:
        runner = RunnerSpec(event.runner_id, event.pool, event.labels, event.slots, event.taints, event.metadata)
        try:
            found = await self.store.transitions.register_runner(runner, event.running)
        except NotFound as exc:
            return HeartbeatReply(ok=False, error=ErrorDetail(code="unknown_pool", message=str(exc)))
        self.log.info(
            "runner %s registered in %s with %d slots",
            event.runner_id,
            event.pool,
            event.slots,
            extra={"runner_id": event.runner_id, "pool": event.pool, "action": "register"},
        )
        await self.elect(event.pool)
        await self._announce_free({event.pool, *(job.pool for job in found.released)}, found.released)
        return _orders(found)

    async def _on_heartbeat(self, event: RunnerHeartbeat) -> HeartbeatReply:
        beat = Heartbeat(event.runner_id, event.running, event.seq, event.acked_seq)
        found = await self.store.transitions.heartbeat(beat)
        if found is None:
            message = f"runner {event.runner_id!r} is not registered (or was lost)"
            return HeartbeatReply(ok=False, error=ErrorDetail(code="unknown_runner", message=message))
        if found.released:
            self.log.warning(
                "released %d jobs runner %s no longer holds",
                len(found.released),
                event.runner_id,
                extra={"runner_id": event.runner_id, "action": "reconcile"},
            )
        if found.previous_state == "suspect":  # it answers again: its slots count again
            await self.elect(found.pool)
        if found.previous_state == "suspect" or found.released:
            await self._announce_free({found.pool, *(job.pool for job in found.released)}, found.released)
        return _orders(found)

    async def _on_drain(self, event: RunnerDraining) -> Reply:
        row = await self.store.runner_drain(event.runner_id)
        if row is not None:
            await self.elect(row["pool"])
        return OK

    async def _on_stopped(self, event: RunnerStopped) -> Reply:
        """What a stopped runner killed at its stop timeout runs again now, not once it is lost."""
        released = await self.store.transitions.runner_stopped(
            event.runner_id, [(k.job_id, k.attempt) for k in event.killed]
        )
        if released:
            self.log.warning("released %d jobs runner %s killed as it stopped", len(released), event.runner_id)
            await self._announce_free({job.pool for job in released}, released)
        return OK

    async def _on_taints_changed(self, event: RunnerTaintsChanged) -> None:
        await self.elect(event.pool)
        await self._announce_free({event.pool})  # an untainted runner may take jobs now

    async def _on_pool_updated(self, event: PoolUpdated) -> None:
        await self.elect(event.pool)  # put into leader mode (or out of it): elect (or forget) now

    async def _on_start(self, event: JobStarted) -> Reply:
        return await self._starts.submit(event)

    async def _start_batch(self, events: list[JobStarted]) -> list[Reply]:
        starts = [Start(e.job_id, e.runner_id, e.attempt) for e in events]
        granted = {job.id for job in await self.store.transitions.start_many(starts)}
        return await self._answers("start", starts, granted)

    async def _on_finish(self, event: JobFinished) -> Reply:
        return await self._finishes.submit(event)

    async def _finish_batch(self, events: list[JobFinished]) -> list[Reply]:
        assert all(e.runner_id is not None for e in events)  # the bus model of a runner's report
        ends = [End(e.job_id, e.runner_id, e.attempt, e.state, e.exit_code, e.reason) for e in events]  # type: ignore[arg-type]
        recorded = await self.store.transitions.finish_many(ends)
        reported = {end.job_id: str(end.state) for end in ends}
        ended: Counter[tuple[str, str]] = Counter()
        retried: Counter[tuple[str, str]] = Counter()
        freed: dict[str, int] = {}
        for job in recorded:
            if job.state == JobState.queued:  # retried (its retry policy): the job has not ended
                retried[(job.pool, reported[job.id])] += 1
            else:
                ended[(job.pool, job.state)] += 1
            freed[job.pool] = freed.get(job.pool, 0) + 1
        await announce_freed(self.bus, freed)  # once per pool per batch, uncounted: the hot path
        await announce_keys_freed(self.store, self.bus, recorded, freed)  # jobs of their keys elsewhere
        for (pool, state), n in ended.items():
            self.metrics.finished.labels(pool, state).inc(n)
        for (pool, outcome), n in retried.items():
            self.metrics.retried.labels(pool, outcome).inc(n)
        return await self._answers("finish", ends, {job.id for job in recorded})

    async def _answers(self, kind: str, reports: list[Start] | list[End], applied: set[UUID]) -> list[Reply]:
        """OK for each report applied; for the others, why not: a `duplicate` of one already
        recorded is answered OK too (the retry of a lost answer), a `stale` one is refused."""
        refused = [r for r in reports if r.job_id not in applied]
        why = await self.store.transitions.refusals(kind, refused) if refused else {}
        answers = []
        for r in reports:
            if r.job_id in applied:
                answers.append(OK)
                continue
            code, message = why[r.job_id]
            answers.append(Reply(ok=code == "duplicate", error=ErrorDetail(code=code, message=message)))
        return answers

    async def sweep(self) -> None:
        await self.expire_abandoned()
        await self.time_out()
        await self.release_lost()

    async def time_out(self) -> None:
        """End jobs running past their timeout that their runner has not reported: it may be
        paused, cut off, or broken. The margin covers the start's answer on its way to the runner
        (its clock starts then), its own kill (SIGTERM, the grace, SIGKILL), and its report."""
        margin = RUNNER_REQUEST_TIMEOUT_S + self.timings.kill_grace_s + self.timings.heartbeat_interval_s
        ended = await self.store.transitions.time_out(margin)
        if ended:
            self.log.warning("ended %d jobs running past their timeout", len(ended))
            await self._announce_free({job.pool for job in ended}, ended)

    async def expire_abandoned(self) -> None:
        expired = await self.store.transitions.expire_abandoned()
        if not expired:
            return
        self.log.info("expired %d take-style jobs their clients abandoned", len(expired))
        await self._announce_free({job.pool for job in expired if job.runner_id is not None}, expired)

    async def release_lost(self) -> None:
        # Just started (or restarted after an outage): runners have not had a chance to reach
        # us yet, and their silence says nothing. Judge no one before a full TTL has passed.
        if self.clock.monotonic() - self._started_at < self.timings.runner_ttl_s:
            return
        lost, released = await self.store.transitions.mark_runners_lost(self.timings.runner_ttl_s)
        for pool in {r["pool"] for r in lost}:
            await self.elect(pool)
        if released:
            self.log.warning("released %d jobs from lost runners", len(released))
            await self._announce_free({job.pool for job in released}, released)

    async def elect(self, pool: str | None = None) -> None:
        """Re-elect the leader of `pool` (or of every leader-mode pool) and announce changes."""
        for change in await self.store.pool_elect_leader(pool):  # announced by the outbox relay
            self.log.info("pool %s leader: %s -> %s", change.pool, change.previous, change.leader)
            if change.leader is not None:
                await self._announce_free({change.pool})

    async def _announce_free(self, pools: Iterable[str], ended: Iterable[Job] = ()) -> None:
        """Wake `pools` where a slot is free, and where jobs wait for the keys of `ended`."""
        await announce_free(self.store, self.bus, pools)
        await announce_keys_freed(self.store, self.bus, ended, pools)
