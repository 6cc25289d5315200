"""The take protocol (seed 003): a client without an agent enqueues a job, then polls for the runner
that holds a slot for it.

A take answers 404 (unknown, expired or ended), 503 with `Retry-After` (not held by a runner yet)
or 200 with the runner's details; the caller answers 403 itself when the token is wrong. Every
poll with the right token records that the client is still there (`last_polled_at`; a long poll
counts until it ends), so the capacity sweep can expire a job whose client went away.

A long poll (`wait`) is woken by the news on the bus, never by polling Postgres: one subscription
per API process to the job events (assigned, started, expired, finished), held while any take or
log follower waits, fans each out to the ones waiting on that job, which then read the job once.
Every take registers, and the subscription is in place, before its first read, so no news can
fall between.

When is a job held? When its runner started it (`running`), or when it is `assigned` and the
runner acknowledged the hand-off (`acked_at`: recorded by the start, or by the dispatcher's
`acknowledge` transition when no start follows at once; the `assigned` news of either wakes the
take). An `assigned` row not acknowledged yet may be a hand-off still in flight, which can be
undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.bus import Bus
from orchestrator.store import Store
from schemas.events import JobAssigned, JobExpired, JobFinished, JobStarted
from schemas.jobs import JobState

_log = logging.getLogger(__name__)

# How long the first watcher waits for NATS to confirm the news subscription.
FOLLOW_TIMEOUT_S = 2.0
# What a 503 tells the client to wait before polling again (well inside any abandon_after_s).
RETRY_AFTER_S = 1
LIVE = (JobState.queued, JobState.assigned, JobState.running)
# The job news that can wake a take: it was held, or it ended.
TakeNews = JobAssigned | JobStarted | JobExpired | JobFinished


class Waiters:
    """Waits on jobs' news: each watcher gets a queue of its job's news; `close` ends every wait.

    The bus subscription to the news is held only while someone watches: an api nobody long-polls
    must not parse every job's news (it cost as much CPU per job as the dispatcher). It is made
    before `watch` yields, so no news can fall between a watcher's registration and its first
    read. While NATS cannot take it, a watch goes on without news (the waits end at their
    deadlines) and the next watch tries again."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._queues: dict[UUID, set[asyncio.Queue[TakeNews | None]]] = {}
        self._subscriptions: list[Any] = []
        self._subscribing = asyncio.Lock()
        self.closed = False

    @contextlib.asynccontextmanager
    async def watch(self, job_id: UUID) -> AsyncIterator[asyncio.Queue[TakeNews | None]]:
        queue: asyncio.Queue[TakeNews | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues.setdefault(job_id, set()).add(queue)
        try:
            await self._follow()
            yield queue
        finally:
            queues = self._queues[job_id]
            queues.discard(queue)
            if not queues:
                del self._queues[job_id]
            if not self._queues:
                await self.unfollow()

    async def _follow(self) -> None:
        async with self._subscribing:
            if self._subscriptions or not self._queues:
                return
            s = self._bus.subjects
            try:
                for topic in (s.job_assigned, s.job_started, s.job_expired, s.job_finished):
                    self._subscriptions.append(await self._bus.subscribe(topic.any(), self.on_news))
                await self._bus.ping(FOLLOW_TIMEOUT_S)
            except Exception as exc:
                _log.warning("cannot follow job news (long polls end at their deadlines): %s", exc)

    async def unfollow(self) -> None:
        """Drop the subscription unless someone watches (again)."""
        async with self._subscribing:
            if self._queues:
                return
            subscriptions, self._subscriptions = self._subscriptions, []
            for subscription in subscriptions:
                with contextlib.suppress(Exception):  # NATS away: the connection's end drops it
                    await subscription.unsubscribe()

    async def on_news(self, event: TakeNews) -> None:
        for queue in self._queues.get(event.job_id, ()):
            queue.put_nowait(event)

    def close(self) -> None:
        self.closed = True
        for queues in self._queues.values():
            for queue in queues:
                queue.put_nowait(None)


@dataclass(frozen=True)
class TakeResult:
    status: int  # 200 | 404 | 503
    job: dict[str, Any] | None = None
    runner: dict[str, Any] | None = None
    message: str = ""


def held_by(job: dict[str, Any]) -> str | None:
    """The runner holding `job` for its client, or None while it is not held yet."""
    if job["state"] == JobState.running:
        return job["runner_id"]
    if job["state"] == JobState.assigned and job["acked_at"] is not None:
        return job["runner_id"]
    return None


def gone(job_id: UUID, job: dict[str, Any] | None) -> TakeResult:
    if job is None:
        return TakeResult(404, message=f"no job {job_id}")
    if job["state"] == JobState.expired:
        why = f"its client did not poll for {job['abandon_after_s']:g}s" if job["reason"] == "abandoned" else "expired"
        return TakeResult(404, job, message=f"job {job_id} expired: {why}")
    return TakeResult(404, job, message=f"job {job_id} has ended ({job['state']}): there is nothing to take")


class Takes:
    def __init__(self, store: Store, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self.waiters = Waiters(bus)

    def stop(self) -> None:
        """Answer every waiting take now (503): the server is stopping."""
        self.waiters.close()

    async def take(self, job_id: UUID, wait_s: float = 0.0) -> TakeResult:
        """Take the runner holding `job_id` (whose token the caller checked), waiting up to
        `wait_s` for one; records the poll."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with self.waiters.watch(job_id) as news:
            job = await self.store.job_poll(job_id, wait_s)
            while True:
                if job is None or job["state"] not in LIVE:
                    return gone(job_id, job if job is not None else await self.store.job_get(job_id))
                runner_id = held_by(job)
                if runner_id is not None:
                    taken = await self.store.job_poll(job_id, 0.0, taking=runner_id)
                    if taken is not None:
                        return TakeResult(200, taken, await self.store.runner_get(runner_id))
                    job = await self.store.job_get(job_id)  # let go meanwhile: look again
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self.waiters.closed:
                    return TakeResult(503, job, message=f"job {job_id} is {job['state']}: no runner holds it yet")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await news.get()
                job = await self.store.job_get(job_id)
