"""Leader: one dispatcher per shard at a time, elected on a NATS KV lease, fenced in Postgres.

Every dispatch instance runs this service. It contends for its shard's lease: whoever creates
the key leads, with a fencing epoch Postgres issues (`dispatch_epochs`: one more than any term
before, so losing the lease store cannot make a new leader look older than an old one). It
announces `LeaderElected`, then tells the dispatcher (through the shared
`Leadership`), and renews every `lease_renew_s`, well inside the TTL. Its term ends when:
- a renewal is refused (someone else holds the key): `LeaderLost{taken}`;
- no renewal succeeded within the TTL, by this process's monotonic clock (NATS unreachable):
  `LeaderLost{expired}`; the dispatcher also checks that deadline itself before every claim;
- it stops gracefully: it deletes the key (`LeaderLost{released}`) and a standby takes over in
  milliseconds instead of a TTL;
- its claims are fenced although it holds the lease (its epoch was issued after a newer one,
  say its own issue stalled past the TTL): it deletes the key (`LeaderLost{fenced}`), and the
  next holder gets a new epoch.
Standbys watch the key and contend the moment it is deleted or expires, and retry every TTL in
case a watch event is lost. The holder also heeds the watch: when it may have missed changes (a
reconnect, a failed watch) or shows someone else's write, the holder re-reads the key at once and
steps down (`taken`) unless its own write is still the last (`Lease.verify`). A deposed leader
that has not noticed yet (paused, partitioned) is refused by the epoch check in every claim
transaction; that is what makes a stale term harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal, TypeVar

from pydantic import BaseModel

from orchestrator.bus import Bus, Topic
from orchestrator.bus.lease import Lease
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import OrchestratorError
from orchestrator.leadership import Leadership
from orchestrator.lifecycle import Service
from orchestrator.settings import LeaderSettings
from orchestrator.store import Fence, Store
from schemas.events import LeaderElected, LeaderLost

E = TypeVar("E", bound=BaseModel)

# After a failed attempt to contend (the lease store not answering), the next comes this soon.
CONTEND_AGAIN_S = 0.25


class Leader(Service):
    name = "leader"

    def __init__(
        self,
        config: LeaderSettings,
        store: Store,
        bus: Bus,
        leadership: Leadership,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.bus = bus
        self.leadership = leadership
        # `leadership` checks the term's deadline on its own clock: give both the same one.
        self.clock = clock
        self.lease = Lease(bus, leadership.shard, leadership.holder, ttl_s=config.lease_ttl_s)
        self._campaign_task: asyncio.Task[None] | None = None
        self._epoch: int | None = None
        self._deadline = 0.0  # monotonic: the term ends here unless a renewal moves it
        self._contend_failing = False  # the last attempt to contend found the lease store away

    async def on_start(self) -> None:
        await self.lease.open()
        self.on_cleanup(self.lease.close)
        # A lone instance leads by the time start() returns.
        await self._try_lead()
        self._campaign_task = self.spawn(self._campaign(), "campaign")

    async def on_stop(self) -> None:
        if self._campaign_task is not None:
            self._campaign_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign_task
        if self._epoch is not None:
            await self._step_down("released")

    async def _campaign(self) -> None:
        retry_s = self.config.retry_s or float(self.config.lease_ttl_s)
        wait_s = retry_s
        while True:
            if self._epoch is None:
                await self.lease.wait_vacated(wait_s)
                # The lease store failing (its stream electing a leader, NATS reconnecting):
                # contend again soon, not a whole retry later, so dispatch resumes as soon as it
                # answers. Told it is held: wait for it to be vacated, or the retry.
                wait_s = retry_s if await self._try_lead() else min(retry_s, CONTEND_AGAIN_S)
            else:
                await self._hold()

    async def _try_lead(self) -> bool:
        """Contend once; whether the lease store answered (taken, or held by someone else)."""
        started = self.clock.monotonic()
        shard = self.leadership.shard
        try:
            revision = await self.lease.acquire()
        except OrchestratorError as exc:  # said once per outage: it is tried again soon, and again
            level = logging.DEBUG if self._contend_failing else logging.WARNING
            self.log.log(level, "contending for shard %s failed: %s", shard, exc)
            self._contend_failing = True
            return False
        if self._contend_failing:
            self.log.info("contending for shard %s: the lease store answers again", shard)
            self._contend_failing = False
        if revision is None:
            return True
        try:
            epoch = await self.store.dispatch_epoch_issue(shard, self.leadership.holder)
        except OrchestratorError as exc:  # no term without an epoch: let another instance try
            self.log.warning("no epoch for shard %s from Postgres: %s; giving the lease up", shard, exc)
            with contextlib.suppress(OrchestratorError):
                await self.lease.release()
            return False
        self._epoch = epoch
        fence = Fence(self.leadership.shard, epoch, self.leadership.holder)
        self.log.info("leading shard %s as %s at epoch %d", fence.shard, fence.holder, epoch)
        # Announced before the dispatcher is told, so the news precedes the new leader's first dispatch.
        event = LeaderElected(shard=fence.shard, holder=fence.holder, epoch=epoch)
        await self._announce(self.bus.subjects.leader_elected, event)
        self._deadline = started + self.config.lease_ttl_s
        self.leadership.gain(epoch, self._deadline)
        return True

    async def _hold(self) -> None:
        """Renew until the lease is lost or the term runs out; then step down."""
        ttl = self.config.lease_ttl_s
        while True:
            if await self.lease.wait_doubt(self.config.lease_renew_s) and not await self._still_ours():
                return await self._step_down("taken")
            started = self.clock.monotonic()
            try:
                async with asyncio.timeout(max(self._deadline - started, 0.001)):
                    renewed = await self.lease.renew()
            except (OrchestratorError, TimeoutError) as exc:
                self.log.warning("renewing the lease of shard %s failed: %s", self.leadership.shard, exc)
                if self.clock.monotonic() >= self._deadline:
                    return await self._step_down("expired")
                continue
            if not renewed:
                return await self._step_down("taken")
            if self.leadership.epoch != self._epoch:  # deposed by a fenced claim (Leadership.deposed)
                return await self._step_down("fenced")
            # The server counts the TTL from when it got the renewal, later than `started`: a term
            # measured from `started` ends here no later than the lease ends there.
            self._deadline = started + ttl
            self.leadership.extend(self._deadline)

    async def _still_ours(self) -> bool:
        """After a watch gap: whether the key still holds our own last write. Unknown (NATS
        unreachable) counts as ours: the renewal that follows, or the term's deadline, decides."""
        try:
            ours = await self.lease.verify()
        except OrchestratorError as exc:
            self.log.warning("verifying the lease of shard %s failed: %s", self.leadership.shard, exc)
            return True
        if ours:
            self.log.info("the lease of shard %s is still ours after a gap in its watch", self.leadership.shard)
        return ours

    async def _step_down(self, reason: Literal["released", "taken", "expired", "fenced"]) -> None:
        epoch, self._epoch = self._epoch, None
        self.leadership.lose()
        if reason in ("released", "fenced"):
            await self.lease.release()
        self.log.info("stopped leading shard %s at epoch %s: %s", self.leadership.shard, epoch, reason)
        event = LeaderLost(shard=self.leadership.shard, holder=self.leadership.holder, epoch=epoch or 0, reason=reason)
        await self._announce(self.bus.subjects.leader_lost, event)

    async def _announce(self, topic: Topic[E], event: E) -> None:
        with contextlib.suppress(Exception):  # news only: Postgres and the lease are the truth
            await self.bus.publish(topic.at(self.leadership.shard), event)
