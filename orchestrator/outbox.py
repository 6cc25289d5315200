"""The outbox relay: publishes what the job transitions wrote to the outbox, after their commit.

Every job transition writes its events to the `outbox` table in its own transaction
(orchestrator/store/transitions/). The relay reads the oldest rows, publishes them (job events
to the job-events stream with `Nats-Msg-Id` = the event id, awaiting every PubAck; a cancel to a
runner on core NATS), and deletes them in the same transaction once NATS has them. A crash
anywhere in between leaves the rows for the next relay, which publishes them again: JetStream
drops the repeat inside its duplicate window, and consumers dedup by event id beyond it.

Why one relay at a time: ids are allocated at insert and become visible at commit, so a relay
that remembered "the last id" would skip a row committed late; deleting what was published
skips nothing. Several relays taking disjoint batches (SKIP LOCKED) would publish one job's
`started` and `finished` in either order. So every batch takes a transaction-scoped advisory
lock: any number of relays may run (every process with a store runs one), one publishes at a
time, in insert order, and a relay that dies releases the lock with its connection. A job's
events are inserted in the order its transitions commit (each waits for the row lock the last
one held), so each job's events leave in order (how JetStream stores them through a stream
leader's loss: bus/job_events.py).

Through an outage (NATS down, a stream electing a leader, Postgres restarting) the rows stay, and
the relay tries again with the same event ids after a backoff (doubling up to `MAX_BACKOFF_S`),
however long it lasts: the outage is logged once when it begins and once when it ends.

Wake-ups: a trigger NOTIFYs `outbox` on every insert; each relay listens and drains until the
outbox is empty. A relay that finds another holding the lock stands by until its next poll (that
one heard the same notification, and goes round again): with a relay in every process, one
publishes and the others look once per `poll_interval_s`, taking over from a relay that died
within it. A relay that stops says so (`handover` on the same channel), so one standing by takes
over at once: a rolling restart does not hold the events up for a poll. The poll also covers a
lost notification or listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.bus import Bus
from orchestrator.errors import OrchestratorError
from orchestrator.failpoints import failpoint
from orchestrator.lifecycle import Service
from orchestrator.store import Store

# Rows per batch: one SELECT, one pipelined publish, one DELETE.
BATCH = 512
POLL_INTERVAL_S = 1.0
# After a failed batch, the relay waits this long before the next, doubling up to the max.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# How long the job-events stream keeps an event (producers that were away catch up within it).
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
# The payload of a stopping relay's notification (an insert's is empty).
HANDOVER = "handover"


class OutboxRelay(Service):
    name = "relay"

    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        batch: int = BATCH,
        poll_interval_s: float = POLL_INTERVAL_S,
        max_age_s: float = EVENTS_MAX_AGE_S,
    ) -> None:
        super().__init__()
        self.store = store
        self.bus = bus
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.max_age_s = max_age_s
        self._wake = asyncio.Event()
        self._handover = asyncio.Event()  # a relay stopped: one standing by may take over now
        self._listener: Callable[[], Awaitable[Any]] | None = None
        self.relayed = 0  # events this relay published (a figure for the benchmark)
        self.standing_by = False  # another relay held the lock at the last look

    async def on_start(self) -> None:
        await self.bus.ensure_job_events_stream(self.max_age_s)
        await self._listen()
        self.spawn(self._loop(), "loop")
        self.on_cleanup(self._hand_over)  # once the loop has ended: this relay holds no lock

    async def on_stop(self) -> None:
        if self._listener is not None:
            await self._listener()

    def wake(self) -> None:
        self._wake.set()

    def _notified(self, payload: str) -> None:
        if payload == HANDOVER:
            self._handover.set()
        else:
            self._wake.set()

    async def _hand_over(self) -> None:
        """Best effort: without it, a relay standing by takes over at its next poll."""
        if self.standing_by:  # another relay publishes: nothing to hand over
            return
        try:
            await self.store.outbox_handover()
        except OrchestratorError as exc:
            self.log.debug("could not tell the relays standing by that this one stops: %s", exc)

    async def _listen(self) -> None:
        """(Re)open the NOTIFY listener; a failure is retried on the next poll."""
        alive = self._listener is not None and self._listener.is_alive()  # type: ignore[attr-defined]
        if alive:
            return
        try:
            self._listener = await self.store.listen("outbox", self._notified)
        except OrchestratorError as exc:
            self.log.warning("cannot listen for outbox notifications (polling meanwhile): %s", exc)

    async def _loop(self) -> None:
        failing_since: float | None = None  # when the current run of failed batches began (monotonic)
        backoff_s = FIRST_BACKOFF_S
        while True:
            if self.standing_by:
                # Another relay is publishing: it heard the same notifications. Look again at
                # the next poll (taking over if that relay has died), or when a relay stops,
                # rather than spend a transaction per insert finding it busy.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._handover.wait()
                await self._listen()
            else:
                try:
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    await self._listen()
            self._wake.clear()
            self._handover.clear()
            try:
                self.standing_by = await self.drain() is None
            except Exception as exc:  # NATS or Postgres away: the rows wait for the next round
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.log.warning("outbox relay: %s; trying again until it works", exc)
                else:
                    self.log.debug("outbox relay: %s", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                self._wake.set()  # the rows are still there: no need to be told
                continue
            if failing_since is not None:
                self.log.info("outbox relay: publishing again after %.1f s", time.monotonic() - failing_since)
            failing_since, backoff_s = None, FIRST_BACKOFF_S

    async def drain(self) -> int | None:
        """Publish batches until the outbox is empty; how many events this call published, or
        None when it stopped because another relay holds the lock."""
        published = 0
        while True:
            async with self.store.outbox_batch(self.batch) as batch:
                if batch is None:
                    return None
                if not batch.rows:
                    return published
                await self.bus.publish_outbox(batch.rows)
                failpoint("outbox.published")  # the gap: published, not yet deleted
                await batch.delete()
            published += len(batch.rows)
            self.relayed += len(batch.rows)
            if len(batch.rows) < self.batch:
                return published
