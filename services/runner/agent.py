"""The runner agent: takes assignments for its slots and runs each job's command.

It registers (telling the orchestrator which jobs it still runs, so after a restart whatever was
held against it is released), heartbeats, acks an assignment only while it has a free slot, asks
permission before starting (a stale assignment is refused, so a job never runs on two runners),
runs `payload.command` as a subprocess with `payload.env` / `payload.cwd` and the job's timeout,
and reports the end until the report is acknowledged. A job without a command is a reservation:
the slot is held until the job is cancelled or its timeout runs out. The fence on its own
heartbeats' silence is liveness.py; the start and end requests, asked until answered, reports.py.

On stop it drains: it tells capacity it takes nothing more (so a leader-mode pool elects another
leader at once), running jobs get `stop_timeout_s` to finish, then are killed, and capacity is
told which attempts it killed (`RunnerStopped`), to release them at once; if that notice does
not arrive, its next registration or the lost-runner sweep releases them. Hurried (a second
Ctrl-C), it kills them at once.

With `once` it is a provisioned worker (seed 001): it takes exactly one job, drains as soon as
it has it (so its slot is never offered again), and sets `finished` when that job has ended, or
when no job came within `idle_timeout_s`; its owner (`orchestrator runner --once`) then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from opentelemetry.trace import SpanKind

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.bus.job_logs import JobLogs
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import OrchestratorError
from orchestrator.lifecycle import Service
from orchestrator.settings import RUNNER_REQUEST_TIMEOUT_S, LogLimits, Timings
from schemas.events import (
    ErrorDetail,
    HeartbeatReply,
    JobAssigned,
    JobCancelRequested,
    JobFinished,
    JobStarted,
    KilledJob,
    Reply,
    RunnerDraining,
    RunnerHeartbeat,
    RunnerRegistered,
    RunnerStopped,
    StopOrder,
)
from schemas.jobs import JobState
from services.runner.job_output import JobOutput
from services.runner.job_process import Held, Outcome, run, signal_group
from services.runner.liveness import Liveness
from services.runner.reports import Reports, until_answered
from services.runner.watchdog import Watchdog

_tracer = telemetry.tracer("orchestrator.runner")


def _run_attributes(e: JobAssigned) -> dict[str, Any]:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "orchestrator.job_id": str(e.job_id),
        "orchestrator.pool": e.pool,
        "orchestrator.runner_id": e.runner_id,
        "orchestrator.attempt": e.attempt,
    }


Execute = Callable[[JobAssigned], Awaitable[Outcome]]
# The drain notice is a courtesy (silence is detected anyway): never hold a stop up for long.
DRAIN_TIMEOUT_S = 1.0


class Runner(Service):
    name = "runner"

    def __init__(
        self,
        timings: Timings,
        log_limits: LogLimits,
        bus: Bus,
        *,
        runner_id: str,
        pool: str,
        labels: list[str],
        slots: int,
        taints: list[str] | None = None,
        execute: Execute | None = None,
        once: bool = False,
        idle_timeout_s: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        # How a job runs: a subprocess by default; the benchmark's simulated runners pass a no-op.
        self._custom_execute = execute
        self.timings = timings
        self.log_limits = log_limits
        self.clock = clock
        self.bus = bus
        self._logs = JobLogs(bus)  # where its jobs' output goes
        self.runner_id = runner_id
        self.pool = pool
        self.labels = labels
        self.slots = slots
        self.taints = taints or []
        self._jobs: dict[UUID, Held] = {}
        self._accepting = False
        self._hurry = asyncio.Event()  # stop at once: do not wait for running jobs
        # Heartbeats are numbered from the clock, so a restarted runner's outnumber its last
        # life's (capacity ignores a heartbeat older than one it has seen).
        self._seq = int(clock.time() * 1_000_000)
        # Fences the jobs at the same deadline when this process cannot (stopped, hung).
        self._watchdog = Watchdog(timings.runner_ttl_s / 2)
        self._liveness = Liveness(timings.runner_ttl_s, clock, self._watchdog, self._fence)
        self.once = once
        self.idle_timeout_s = idle_timeout_s
        self._took_one = asyncio.Event()
        # `once`: its one job has ended (or none came in time); the worker may exit.
        self.finished = asyncio.Event()
        self._reports = Reports(bus, self.log)

    @property
    def busy(self) -> int:
        """Slots taken. A job whose command ended holds none while its report is in flight, nor
        does a cancelled one being let go (an expired reservation's slot is offered again):
        capacity frees the slot once it records the report, and the next assignment for it can
        arrive before the reply does."""
        return sum(1 for job in self._jobs.values() if not (job.ended or job.cancelled.is_set()))

    async def on_start(self) -> None:
        s = self.bus.subjects
        assign = await self.bus.subscribe(s.assign.at(self.runner_id), self._on_assign)
        self.on_cleanup(assign.unsubscribe)
        cancel = await self.bus.subscribe(s.cancel.at(self.runner_id), self._on_cancel)
        self.on_cleanup(cancel.unsubscribe)
        if self._custom_execute is None:  # its jobs are processes: their watchdog is ready first
            await self._watchdog.start()
        self._accepting = True
        await self._register(wait=True)
        self.spawn(self._heartbeat(), "heartbeat")
        self.spawn(self._liveness.watch(), "fence")
        if self.once and self.idle_timeout_s is not None:
            self.spawn(self._idle_exit(self.idle_timeout_s), "idle")

    def hurry(self) -> None:
        self._hurry.set()

    async def on_stop(self) -> None:
        self._accepting = False
        await self._drain()
        tasks = [job.task for job in self._jobs.values() if job.task]
        if tasks:
            timeout = self.timings.stop_timeout_s
            self.log.info("draining: waiting up to %g s for %d running jobs to finish", timeout, len(tasks))
            pending = await self._until_done(tasks, timeout)
            if pending:
                hurried = self._hurry.is_set()
                why = "stopping at once" if hurried else f"still running after {timeout:g} s"
                self.log.log(logging.INFO if hurried else logging.WARNING, "killing %d jobs: %s", len(pending), why)
            # Attempts whose command was spawned and whose end is not being reported (that report
            # may have arrived): not one never started (requeued unstarted, as before).
            killed = [
                KilledJob(job_id=job_id, attempt=job.event.attempt)
                for job_id, job in self._jobs.items()
                if job.task in pending and job.proc is not None and not job.ended
            ]
            for job in list(self._jobs.values()):
                if job.proc:  # its whole session: the leader may have exited, leaving children
                    signal_group(job.proc, signal.SIGKILL)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if killed:
                await self._tell_killed(killed)
        await self._watchdog.close()

    async def _until_done(self, tasks: list[asyncio.Task[None]], timeout: float) -> set[asyncio.Task[None]]:
        """Wait until `tasks` are done, `timeout` passed or `hurry()` was called: those not done."""
        hurried = asyncio.ensure_future(self._hurry.wait())
        pending = set(tasks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while pending and not hurried.done():
                    done, _ = await asyncio.wait({*pending, hurried}, return_when=asyncio.FIRST_COMPLETED)
                    pending -= done
        hurried.cancel()
        return pending

    async def _register(self, *, wait: bool = False) -> None:
        """Register, holding what it holds; stop what is not its own any more. With `wait`
        (at start), keep asking while no capacity answers: services start in any order."""
        event = RunnerRegistered(
            runner_id=self.runner_id,
            pool=self.pool,
            labels=self.labels,
            slots=self.slots,
            taints=self.taints,
            running=list(self._jobs),
            metadata={"hostname": platform.node(), "pid": os.getpid(), "labels": self.labels},
        )
        topic = self.bus.subjects.runner_register

        async def register() -> HeartbeatReply:
            return await self.bus.request(topic, event, RUNNER_REQUEST_TIMEOUT_S)

        waiting = f"registration (waiting for capacity on {topic.subject})"
        reply = await (until_answered(register, waiting, self.log) if wait else register())
        if not reply.ok:
            raise OrchestratorError(f"registration refused: {reply.error.message if reply.error else reply}")
        self._liveness.acknowledged()
        self._obey(reply.stop)

    async def _drain(self) -> None:
        """Tell capacity this runner takes nothing more (best effort: the lost sweep covers silence)."""
        event = RunnerDraining(runner_id=self.runner_id, pool=self.pool)
        try:
            await self.bus.request(self.bus.subjects.runner_drain, event, DRAIN_TIMEOUT_S)
        except Exception as exc:  # leaving anyway (NATS may be gone too)
            self.log.info("drain notice not delivered: %s", exc)

    async def _tell_killed(self, killed: list[KilledJob]) -> None:
        """Tell capacity which attempts it killed, to run again now (best effort: else its next
        registration or the lost sweep releases them)."""
        try:
            event = RunnerStopped(runner_id=self.runner_id, pool=self.pool, killed=killed)
            await self.bus.request(self.bus.subjects.runner_stopped, event, DRAIN_TIMEOUT_S)
        except Exception as exc:  # leaving anyway (NATS may be gone, or capacity older)
            self.log.info("stop notice not delivered: %s", exc)

    async def _idle_exit(self, timeout_s: float) -> None:
        """A worker nobody gave a job (another runner took it) must not hold a fleet slot forever."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._took_one.wait(), timeout_s)
            return
        self._accepting = False
        if not self._took_one.is_set():  # an assignment may have won the race
            await self._drain()
            self.finished.set()

    async def _heartbeat(self) -> None:
        """Heartbeat with what it holds, and do what the reply says: stop jobs cancelled or no
        longer its own. Declared lost: everything it held is someone else's now (fence), and it
        registers again. Failures are told once, when two in a row failed with NATS connected
        (one alone is routine: a capacity restarting, or still reconnecting after an outage the
        bus told already), and the end of them when one is answered again."""
        failed, warned = 0, False
        while True:
            await asyncio.sleep(self.timings.heartbeat_interval_s)
            self._seq += 1
            event = RunnerHeartbeat(
                runner_id=self.runner_id,
                pool=self.pool,
                running=list(self._jobs),
                seq=self._seq,
                acked_seq=self._liveness.acked_seq,
            )
            timeout = min(RUNNER_REQUEST_TIMEOUT_S, self.timings.runner_ttl_s / 4)
            try:
                reply = await self.bus.request(self.bus.subjects.runner_heartbeat, event, timeout)
            except OrchestratorError as exc:  # NoResponders too: no capacity heard us
                failed = failed + 1 if self.bus.connected else 0
                tell = failed >= 2 and not warned
                self.log.log(logging.WARNING if tell else logging.DEBUG, "heartbeat failed: %s", exc)
                warned = warned or tell
                continue
            if warned:
                self.log.info("heartbeats answered again")
            failed, warned = 0, False
            if reply.ok:
                self._liveness.acknowledged(event.seq)
                self._obey(reply.stop)
            else:  # declared lost: its jobs are already someone else's
                self._fence("capacity declared this runner lost")
                with contextlib.suppress(OrchestratorError):
                    await self._register()

    def _fence(self, why: str) -> None:
        if self._jobs:
            self.log.warning("killing %d jobs: %s", len(self._jobs), why)
        for job in list(self._jobs.values()):
            self._drop(job)

    def _drop(self, job: Held) -> None:
        """Kill `job` at once and report nothing: it is not this runner's any more."""
        if job.proc:  # its whole session: the leader may have exited, leaving children
            signal_group(job.proc, signal.SIGKILL)
        if job.task:
            job.task.cancel()

    def _obey(self, orders: list[StopOrder]) -> None:
        for order in orders:
            job = self._jobs.get(order.job_id)
            if job is None or job.ended:  # gone already, or only its report is on its way
                continue
            if order.why == "cancel_requested":
                self._cancel(job, order.detail)
            else:
                self.log.info("stopping %s: %s", order.job_id, order.detail, extra={"job_id": order.job_id})
                self._drop(job)

    # --- assignments ---------------------------------------------------------------------------

    async def _on_assign(self, event: JobAssigned) -> Reply:
        if not self._accepting or self.busy >= self.slots or event.job_id in self._jobs or self._liveness.silent():
            return Reply(ok=False, error=ErrorDetail(code="no_slot", message=f"{self.runner_id} has no free slot"))
        job = Held(event, since=self.clock.monotonic())
        self._jobs[event.job_id] = job
        if self.once:
            self._accepting = False
            self._took_one.set()
        job.task = asyncio.create_task(self._run(job), name=f"runner.job.{event.job_id}")
        return Reply(ok=True)

    async def _on_cancel(self, event: JobCancelRequested) -> None:
        job = self._jobs.get(event.job_id)
        if job is not None and not job.ended:
            self._cancel(job, f"job {event.job_id} was cancelled")

    def _cancel(self, job: Held, why: str) -> None:
        """Stop a cancelled job (its process group: SIGTERM, SIGKILL after the grace) and report
        it `cancelled` (the report confirms the cancel; the slot is freed then). Said once: the
        order comes again on every heartbeat until the end is reported, all through the grace."""
        if job.cancelled.is_set():
            return
        self.log.info("stopping %s: %s", job.event.job_id, why, extra={"job_id": job.event.job_id})
        job.cancelled.set()  # _execute stops the process

    async def _run(self, job: Held) -> None:
        e = job.event
        try:
            if self.once:  # before it runs, so its slot is not offered again when the job ends
                await self._drain()
            context = telemetry.extract(e.trace_context) if e.trace_context else None
            # The job's trace, continued from the assignment (dispatch's span): a consumer span
            # for the attempt, around permission, execution and the report.
            with _tracer.start_as_current_span(
                "run",
                context=context,
                kind=SpanKind.CONSUMER,
                attributes=_run_attributes(e) if telemetry.recording() else None,
            ):
                started = JobStarted(job_id=e.job_id, pool=e.pool, runner_id=self.runner_id, attempt=e.attempt)
                permitted = await self._reports.start(started)
                if not permitted.ok:
                    return  # stale: another runner has it, or it was cancelled
                if self._liveness.fenced(job):  # granted during a silence: the fence would kill it at once
                    return
                if job.cancelled.is_set():
                    state, exit_code, reason = JobState.cancelled, None, "cancelled"
                else:
                    state, exit_code, reason = await (
                        self._custom_execute(e) if self._custom_execute else self._execute(job)
                    )
                if self._liveness.fenced(job):  # killed by the fence (or the watchdog): not ours to report
                    return
                job.ended = True
                ended = JobFinished(
                    job_id=e.job_id,
                    pool=e.pool,
                    runner_id=self.runner_id,
                    attempt=e.attempt,
                    state=state,
                    exit_code=exit_code,
                    reason=reason,
                )
                await self._reports.finish(ended)
        finally:
            self._jobs.pop(e.job_id, None)
            if self.once:
                self.finished.set()

    async def _execute(self, job: Held) -> Outcome:
        e = job.event
        limits = self.log_limits
        output = JobOutput(
            self._logs, e.job_id, e.attempt, self.runner_id, limits.log_max_bytes, limits.log_ship_timeout_s
        )
        return await run(job, self.runner_id, self.timings.kill_grace_s, self._watchdog, output)
