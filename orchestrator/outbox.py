"""The outbox relay: publishes what the job transitions wrote to the outbox, after their commit.

Every job transition writes its events to the `outbox` table in its own transaction
(orchestrator/store/transitions/). The relay reads the oldest rows, publishes them (job events
to the job-events stream with `Nats-Msg-Id` = the event id, awaiting every PubAck; a cancel to a
runner on core NATS), and deletes them in the same transaction once NATS has them. A crash
anywhere in between leaves the rows for the next relay, which publishes them again: JetStream
drops the repeat inside its duplicate window, and consumers dedup by event id beyond it.

Why one relay at a time: ids are allocated at insert and become visible at commit, so a relay
that remembered "the last id" would skip a row committed late; deleting what was published skips
nothing. Several relays taking disjoint batches (SKIP LOCKED) would publish one job's `started`
and `finished` in either order. So a relay publishes only while its session (a connection of its
own) holds an advisory lock: any number of relays may run (every process with a store runs one),
one publishes at a time, in insert order. The lock stays with that relay's session, and goes
with it: with a relay that dies (its connection closes), is paused past the store's idle timeout
(Postgres ends the session; a relay that resumes opens a new one and stands by), or fails a
batch (it closes its session, so a relay whose NATS works may publish). A job's events are
inserted in the order its transitions commit (each waits for the row lock the last one held), so
each job's events leave in order (how JetStream stores them through a stream leader's loss:
bus/job_events.py).

Through an outage (NATS down, a stream electing a leader, Postgres restarting) the rows stay, and
the relay tries again with the same event ids after a backoff (doubling up to `MAX_BACKOFF_S`),
however long it lasts: the outage is logged once when it begins and once when it ends.

Wake-ups: a trigger NOTIFYs `outbox` on every insert; each relay listens on its session and the
one publishing drains until the outbox is empty. A relay that finds another holding the lock
stands by until its next poll (that one heard the same notification): with a relay in every
process, one publishes and the others look once per `poll_interval_s`, taking over from a relay
whose session ended within it. The poll also covers a lost notification or a session reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from orchestrator.bus import Bus
from orchestrator.failpoints import failpoint
from orchestrator.lifecycle import Service
from orchestrator.store import RelaySession, Store

# Rows per batch: one SELECT, one pipelined publish, one DELETE.
BATCH = 512
POLL_INTERVAL_S = 1.0
# After a failed batch, the relay waits this long before the next, doubling up to the max.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# How long the job-events stream keeps an event (producers that were away catch up within it).
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0


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
        self._session: RelaySession | None = None
        self.relayed = 0  # events this relay published (a figure for the benchmark)
        self.standing_by = False  # another relay held the lock at the last look

    async def on_start(self) -> None:
        await self.bus.ensure_job_events_stream(self.max_age_s)
        self._wake.set()  # open the session and publish what is there at once
        self.spawn(self._loop(), "loop")

    async def on_stop(self) -> None:
        await self._close_session()

    def wake(self) -> None:
        self._wake.set()

    async def _connected(self) -> RelaySession:
        """The relay's session, opened anew if it ended (Postgres restarted, or ended it)."""
        if self._session is None or not self._session.is_alive():
            self._session = await self.store.relay_session(self.wake)
        return self._session

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        failing_since: float | None = None  # when the current run of failed batches began (monotonic)
        backoff_s = FIRST_BACKOFF_S
        while True:
            if self.standing_by:
                # Another relay is publishing: it heard the same notifications. Look again at
                # the next poll (taking over if that relay's session has ended), rather than
                # spend a statement per insert finding it busy.
                await asyncio.sleep(self.poll_interval_s)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
            self._wake.clear()
            try:
                self.standing_by = await self.drain() is None
            except Exception as exc:  # NATS or Postgres away: the rows wait for the next round
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.log.warning("outbox relay: %s; trying again until it works", exc)
                else:
                    self.log.debug("outbox relay: %s", exc)
                # Its lock goes with its session: a relay of another process, whose NATS may
                # work, can publish meanwhile; this one competes for the lock again.
                await self._close_session()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                self._wake.set()  # the rows are still there: no need to be told
                continue
            if failing_since is not None:
                self.log.info("outbox relay: publishing again after %.1f s", time.monotonic() - failing_since)
            failing_since, backoff_s = None, FIRST_BACKOFF_S

    async def drain(self) -> int | None:
        """Publish batches until the outbox is empty; how many events this call published, or
        None when another relay holds the lock."""
        session = await self._connected()
        if not await session.lead():
            return None
        published = 0
        while True:
            rows = await session.head(self.batch)
            if not rows:
                return published
            await self.bus.publish_outbox(rows)
            failpoint("outbox.published")  # the gap: published, not yet deleted
            await session.delete(rows)
            published += len(rows)
            self.relayed += len(rows)
            if len(rows) < self.batch:
                return published
