"""Scheduler: fires schedules (`PUT /v1/schedules/{name}`), a fourth door of admission whose
producer is the clock. Each fire submits the schedule's job spec, decided by admission's own
rules (`Admission.decide`: the pool must exist and be able to run it, `max_active` sheds), so a
scheduled job is admitted exactly as a submitted one.

Leader only: it fires while this process holds the lease of the first dispatch shard (shard 0,
or "all": `Leaderships.first`, so there is one scheduler however many shards), and every fire
checks that lease's epoch in Postgres, as a claim does, so a deposed leader that has not noticed
yet fires nothing.

Exactly once per fire time, across failovers: a fire is one transaction (store/schedules.py)
that admits the job under the key `schedule:<name>:<fire time>` and moves the schedule's
position (`handled_through`) to that time, compare-and-set. A successor that fires the same time
again finds it handled; had the admission committed without the move (it cannot: one
transaction), the key would give it the same job. The next time is computed from the last one
handled, never from now, so nothing is skipped either; what happens to times missed while no
leader ran is the schedule's `catch_up` (orchestrator/cron.py).

Overlap: `skip` handles a time without firing while a job the schedule fired is still queued,
assigned or running; `allow` fires anyway; `cancel_previous` cancels those jobs first (a
running one is stopped by its runner, as `DELETE /v1/jobs/{id}` does), then fires.

A timer, never a poll: it waits for the earliest `next_fire_at` of the schedules not paused, and
is armed again after every round, when a schedule changes (`SchedulesChanged`, from the API), on
gaining the lease, and on the slow safety sweep (a lost event costs a sweep interval).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.cron import BadCron, Cron, plan
from orchestrator.errors import OrchestratorError
from orchestrator.failpoints import failpoint
from orchestrator.leadership import Leadership, leads, sweep_on_gain
from orchestrator.lifecycle import Service, every
from orchestrator.metrics import Metrics
from orchestrator.settings import SchedulerSettings, Timings
from orchestrator.store import Store
from orchestrator.store.schedules import Fenced, ScheduleChanged
from orchestrator.wakes import announce_ended, announce_free, announce_queued
from schemas.events import SchedulesChanged, error_from_validation
from schemas.jobs import JobSpec
from services.admission.doors import Admission
from services.admission.rules import Decision, Submission

_tracer = telemetry.tracer("orchestrator.scheduler")
# The timer never waits less than this: a round that left a schedule due (it could not fire it)
# must not spin; the sweep retries it.
_MIN_WAIT_S = 0.001
# Batches of due schedules per round at most: the rest (if some could not be fired) wait for the
# next round, which the timer starts at once.
_MAX_BATCHES = 10


def fire_key(name: str, at: datetime) -> str:
    """The idempotency key of a schedule's job for one fire time."""
    return f"schedule:{name}:{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def _submission(job: dict[str, Any], key: str) -> Submission:
    """A fire's job, validated again: a spec stored when it was valid may break a rule added
    since (`payload.env`'s). Such a fire is refused with the reason recorded, as a door refuses
    an invalid spec; raised, it would end the round, and the scheduler with it."""
    try:
        spec = JobSpec.model_validate(job).model_copy(update={"key": key})
    except ValidationError as exc:
        return Submission(spec=None, key=key, trace_context={}, error=error_from_validation(exc))
    return Submission(spec=spec, key=key, trace_context={})


class Scheduler(Service):
    name = "scheduler"

    def __init__(
        self,
        config: SchedulerSettings,
        timings: Timings,
        store: Store,
        bus: Bus,
        *,
        leadership: Leadership | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.config = config
        self.timings = timings
        self.store = store
        self.bus = bus
        self.leadership = leadership
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._kick = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._round = asyncio.Lock()  # one round at a time (the loop's, or a caller's `tick`)
        # When the timer is set for (epoch seconds), for tests and the log.
        self.armed_for: float | None = None

    async def on_start(self) -> None:
        sub = await self.bus.subscribe(self.bus.subjects.schedules_changed, self._on_changed)
        self.on_cleanup(sub.unsubscribe)
        sweep_on_gain(self.leadership, self, self._wake_now)
        self.spawn(self._loop(), "loop")
        self.spawn(every(self.timings.sweep_interval_s, self._wake_now, self.log, "schedule sweep"), "sweep")
        await self.tick()

    async def on_stop(self) -> None:
        self._disarm()

    async def _on_changed(self, event: SchedulesChanged) -> None:
        self.wake()

    async def _wake_now(self) -> None:
        self.wake()

    def wake(self) -> None:
        self._kick.set()

    async def _loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self.tick()
            except OrchestratorError as exc:  # the sweep tries again
                self.log.warning("schedule round failed: %s", exc)
            except Exception:  # a defect: this round is lost, not every later one (the sweep wakes it)
                self.log.exception("schedule round failed")

    async def tick(self) -> None:
        """Handle every fire time due now, then set the timer for the next one."""
        async with self._round:
            if not self.running or not leads(self.leadership):
                self._disarm()
                return
            failed = False
            for _ in range(_MAX_BATCHES):  # a full batch may mean more are due (not: none advanced)
                now = datetime.fromtimestamp(self.clock.time(), UTC)
                due = await self.store.schedules_due(now, self.config.batch)
                for row in due:
                    try:
                        await self._handle(row, now)
                    except OrchestratorError:  # Postgres or NATS away: the whole round waits
                        raise
                    except Exception:  # a defect in one schedule's fire: the others still fire
                        failed = True
                        self.log.exception("schedule %r: its fire failed; tried again next round", row["name"])
                if len(due) < self.config.batch:
                    break
            # A fire that failed is still due: the next round comes a sweep later, not at once.
            await self._arm(self.timings.sweep_interval_s if failed else _MIN_WAIT_S)

    async def _arm(self, min_wait_s: float = _MIN_WAIT_S) -> None:
        self._disarm()
        at = await self.store.schedule_next_fire()
        if at is None:
            return
        now = self.clock.time()
        self.armed_for = max(at.timestamp(), now + min_wait_s)
        self._timer = asyncio.get_running_loop().call_later(self.armed_for - now, self.wake)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.armed_for = None

    async def _handle(self, row: dict[str, Any], now: datetime) -> None:
        """The fire times of one schedule due at `now`, as its catch_up says."""
        name = row["name"]
        try:
            cron = Cron.parse(row["cron"], row["timezone"])
        except BadCron as exc:  # stored valid; a cron library upgrade could still refuse it
            self.log.error("schedule %s cannot be read, not firing it: %s", name, exc)
            return
        todo = plan(cron, row["handled_through"], now, row["catch_up"], self.config.on_time_s)
        if todo.missed:
            self.metrics.schedule_fires.labels("missed").inc(todo.missed)
        try:
            if todo.through is None or not todo.fire:  # nothing to fire: move past what was due
                through = todo.through or row["handled_through"]
                reason = "missed" if todo.through is not None else None
                await self._skip(row, cron, through, reason)
            for at in todo.fire:
                if not await self._fire(row, cron, at, now):
                    break
        except ScheduleChanged as exc:  # changed, deleted or handled by another leader: next round
            self.log.info("schedule %s: %s", name, exc)

    async def _skip(self, row: dict[str, Any], cron: Cron, through: datetime, reason: str | None) -> None:
        async with self.store.schedule_firing(row["name"], row["pool"], "", self._fence()) as firing:
            if firing.schedule["version"] != row["version"]:
                raise ScheduleChanged(f"schedule {row['name']!r} changed meanwhile")
            await firing.advance(through, cron.next_after(through), skip_reason=reason)

    def _fence(self) -> Any:
        return self.leadership.fence() if self.leadership is not None else None

    async def _fire(self, row: dict[str, Any], cron: Cron, at: datetime, now: datetime) -> bool:
        """Fire `row` for fire time `at` (one transaction); False when the schedule must be read
        again first (changed, or this process is fenced)."""
        failpoint("scheduler.fire")
        name, key, pool = row["name"], fire_key(row["name"], at), row["pool"]
        sub = _submission(row["job"], key)
        if row["overlap"] == "cancel_previous" and sub.spec is not None:
            await self._cancel_previous(name)
        fence = self._fence()
        if self.leadership is not None and fence is None:
            return False  # the term ended meanwhile
        with _tracer.start_as_current_span("fire schedule", attributes={"orchestrator.schedule": name}):
            sub.trace_context = telemetry.inject()
            try:
                async with self.store.schedule_firing(name, pool, key, fence) as firing:
                    s = firing.schedule
                    if s["version"] != row["version"]:
                        raise ScheduleChanged(f"schedule {name!r} changed meanwhile")
                    if s["handled_through"] >= at:
                        return True  # handled already (another leader): nothing to do
                    decision = await self._decide(firing, row, sub)
                    if decision is None:
                        live = firing.live[-1]
                        why = f"overlap: job {live['id']} it fired is {live['state']}"
                        await firing.advance(at, cron.next_after(at), skip_reason=why)
                    elif decision.outcome == "rejected":
                        assert decision.error is not None
                        why = f"{decision.error.code}: {decision.error.message}"
                        await firing.advance(at, cron.next_after(at), skip_reason=why)
                    else:
                        assert decision.row is not None
                        await firing.advance(at, cron.next_after(at), job_id=decision.row["id"])
            except Fenced:
                if fence is not None and self.leadership is not None:
                    self.leadership.deposed(fence.epoch)
                return False
        await self._count(decision, pool, at, now)
        ended = [job for job in firing.admission.cancelled if job.state != "running"]
        if ended:  # its concurrency key's on_conflict cancelled jobs a runner held: their slots are free
            await announce_ended(self.store, self.bus, ended)
        return True

    async def _decide(self, firing: Any, row: dict[str, Any], sub: Submission) -> Decision | None:
        """Admission's decision on the fire's job, or None when `overlap: skip` holds it back."""
        if sub.spec is None:  # refused as the doors refuse an invalid spec
            return Decision("rejected", error=sub.error)
        if row["overlap"] == "skip" and firing.live:
            return None
        decisions: list[Decision | None] = [None]
        await Admission.decide(firing.admission, [(0, sub, sub.spec)], decisions)
        return decisions[0]

    async def _count(self, decision: Decision | None, pool: str, at: datetime, now: datetime) -> None:
        """After the commit: the counters, and the wake for dispatch."""
        fires = self.metrics.schedule_fires
        if decision is None:
            fires.labels("overlap").inc()
        elif decision.outcome == "rejected":
            fires.labels("rejected").inc()
            self.metrics.count_rejected(decision.error.code if decision.error else "internal")
        else:
            fires.labels("fired").inc()
            self.metrics.schedule_lateness.observe(max(0.0, self.clock.time() - at.timestamp()))
            if decision.outcome == "admitted":
                self.metrics.admitted.labels(pool).inc()
                await announce_queued(self.bus, {pool: 1})

    async def _cancel_previous(self, name: str) -> None:
        """`overlap: cancel_previous`: cancel the live jobs the schedule fired (each its own edge,
        as `DELETE /v1/jobs/{id}`), before the fire."""
        for job in await self.store.schedule_live_job_list(name):
            with contextlib.suppress(OrchestratorError):  # gone or ended meanwhile: nothing to cancel
                cancel = await self.store.transitions.cancel(job["id"])
                self.log.info("schedule %s cancelled job %s (%s) before firing", name, job["id"], cancel.outcome)
                if cancel.outcome == "cancelled" and cancel.job.runner_id is not None:
                    await announce_free(self.store, self.bus, {cancel.job.pool})
