"""Leader: one dispatcher per shard at a time, elected on a NATS KV lease, fenced in Postgres.

Every dispatch instance runs this service, and it contends for every dispatch shard
(orchestrator/shards.py), each in a campaign of its own: its own lease (KV key), its own fencing
epoch and its own `Leadership`, which the dispatcher reads. At start it first makes Postgres
spread the pools over this instance's number of shards (`dispatch_shards_set`): pools that move
leave their former shard's holder fenced out of them.

One shard's campaign: whoever creates the key leads, with a fencing epoch Postgres issues
(`dispatch_epochs`: newer than any term before, so losing the lease store cannot make a new
leader look older than an old one). It announces `LeaderElected`, then tells the dispatcher
(through the shard's `Leadership`), and renews every `lease_renew_s`, well inside the TTL. Its
term ends when:
- a renewal is refused (someone else holds the key): `LeaderLost{taken}`;
- no renewal succeeded within the TTL, by this process's monotonic clock (NATS unreachable):
  `LeaderLost{expired}`; the dispatcher also checks that deadline itself before every claim;
- it stops gracefully, or hands the shard over (below): it deletes the key
  (`LeaderLost{released}`) and a standby takes over in milliseconds instead of a TTL;
- its claims are fenced although it holds the lease (its epoch was issued after a newer one,
  say its own issue stalled past the TTL): it deletes the key (`LeaderLost{fenced}`), and the
  next holder gets a new epoch.
Standbys watch the key and contend the moment it is deleted or expires, and retry every TTL in
case a watch event is lost. The holder also heeds the watch: when it may have missed changes (a
reconnect, a failed watch) or shows someone else's write, the holder re-reads the key at once and
steps down (`taken`) unless its own write is still the last (`Lease.verify`). A deposed leader
that has not noticed yet (paused, partitioned) is refused by the epoch check in every claim
transaction; that is what makes a stale term harmless.

Sharing the shards: instances announce themselves (`Presence`), and rendezvous hashing over the
live ones names each shard's preferred holder. The preferred holder contends for a free shard at
once; any other instance waits `takeover_delay_s` first (unless, meanwhile, the preferred one
leaves and it becomes preferred itself), so a live preferred holder wins and a dead one's shards
still move. An instance that holds more shards than its share (it started first and took them
all) hands a shard whose preferred holder has been alive for `takeover_delay_s` over to it by
releasing the lease; so shares rebalance after a restart. Each handover gives a shard to the
instance the shares name, so they settle. With one shard nothing is handed over: a single-shard
deployment keeps its leader as long as it lives, as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal, TypeVar

from pydantic import BaseModel

from orchestrator.bus import Bus, Topic
from orchestrator.bus.lease import Lease
from orchestrator.bus.presence import Presence
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import OrchestratorError
from orchestrator.leadership import Leadership, Leaderships
from orchestrator.lifecycle import Service
from orchestrator.settings import LeaderSettings
from orchestrator.shards import preferred_holders
from orchestrator.store import Fence, Store
from schemas.events import LeaderElected, LeaderLost

E = TypeVar("E", bound=BaseModel)
# After a failed attempt to contend (the lease store not answering), the next comes this soon.
CONTEND_AGAIN_S = 0.25
# A handover nobody took (the preferred holder did not contend: another version, another shard
# count) is not tried again for this many lease TTLs, so the shard does not bounce.
HANDOVER_BACKOFF_TTLS = 10


class Leader(Service):
    name = "leader"

    def __init__(
        self,
        config: LeaderSettings,
        store: Store,
        bus: Bus,
        leaderships: Leaderships,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.bus = bus
        self.leaderships = leaderships
        # Each `Leadership` checks its term's deadline on its own clock: give all the same one.
        self.clock = clock
        self.presence = Presence(bus, leaderships.holder, ttl_s=config.lease_ttl_s, clock=clock.monotonic)
        self.campaigns = [Campaign(self, leadership) for leadership in leaderships]
        self._preferred: tuple[frozenset[str], dict[str, str]] = (frozenset(), {})
        self._announcing: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        moved = await self.store.dispatch_shards_set(self.leaderships.count)
        if moved:
            self.log.warning(
                "the number of dispatch shards is now %d: %d pools moved to another shard (%s)",
                self.leaderships.count,
                len(moved),
                ", ".join(f"{m.pool}: {m.before} -> {m.after}" for m in moved[:10]) + (", ..." * (len(moved) > 10)),
            )
        await self.presence.open()
        self.on_cleanup(self.presence.close)
        for campaign in self.campaigns:
            await campaign.lease.open()
            self.on_cleanup(campaign.lease.close)
        # A lone instance leads every shard by the time start() returns; among others, its share.
        await asyncio.gather(*(c.try_lead() for c in self.campaigns if self.preferred(c.shard)))
        for campaign in self.campaigns:
            campaign.task = self.spawn(campaign.run(), f"campaign.{campaign.shard}")
        self._announcing = self.spawn(self._announce(), "presence")

    async def on_stop(self) -> None:
        for task in (self._announcing, *(c.task for c in self.campaigns)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Gone from the live set first: the survivors are then the preferred holders of what
        # this instance releases, and take it at once instead of after the takeover delay.
        await self.presence.withdraw()
        await asyncio.gather(*(c.step_down("released") for c in self.campaigns if c.epoch is not None))

    async def _announce(self) -> None:
        while self.running:
            await asyncio.sleep(self.config.lease_renew_s)
            try:
                await self.presence.announce()
            except OrchestratorError as exc:
                self.log.warning("%s", exc)

    def _holders(self) -> dict[str, str]:
        """Shard -> its preferred holder among the live instances (cached per live set)."""
        live = frozenset(self.presence.live())
        if live != self._preferred[0]:
            self._preferred = (live, preferred_holders(self.leaderships.shards, live))
        return self._preferred[1]

    def preferred(self, shard: str) -> bool:
        return self._holders().get(shard) == self.leaderships.holder

    def hand_over_to(self, shard: str) -> str | None:
        """The instance to hand `shard` (held here) over to, if this one holds more than its share
        and the shard's preferred holder is another that has been alive for the takeover delay.
        Never with one shard: holding it is every instance's fair share, and moving it would
        only cost a failover."""
        if self.leaderships.count == 1:
            return None
        holders, me = self._holders(), self.leaderships.holder
        target = holders.get(shard)
        if target is None or target == me:
            return None
        share = sum(1 for holder in holders.values() if holder == me)
        if sum(1 for c in self.campaigns if c.epoch is not None) <= share:
            return None
        since = self.presence.live().get(target)
        if since is None or self.clock.monotonic() - since < self.config.takeover_delay_s:
            return None
        return target


class Campaign:
    """One shard's lease, contended for, held and renewed: the shard's term in this process."""

    def __init__(self, leader: Leader, leadership: Leadership) -> None:
        self.leader = leader
        self.log = leader.log
        self.leadership = leadership
        self.shard = leadership.shard
        config = leader.config
        self.lease = Lease(leader.bus, self.shard, leadership.holder, ttl_s=config.lease_ttl_s)
        self.task: asyncio.Task[None] | None = None
        self.epoch: int | None = None
        self._deadline = 0.0  # monotonic: the term ends here unless a renewal moves it
        self._handed_over = False
        self._no_handover_until = 0.0
        self._contend_failing = False  # the last attempt to contend found the lease store away

    async def run(self) -> None:
        config = self.leader.config
        retry_s = config.retry_s or float(config.lease_ttl_s)
        wait_s = retry_s
        # Not `while True`: on Python 3.11 asyncio.wait_for (under nats-py's requests) can swallow a
        # cancel that lands as its future completes, and the stop would wait for ever.
        while self.leader.running:
            if self.epoch is None:
                await self.lease.wait_vacated(wait_s)
                # The lease store failing (its stream electing a leader, NATS reconnecting):
                # contend again soon, not a whole retry later, so dispatch resumes as soon as it
                # answers. Told it is held: wait for it to be vacated, or the retry.
                wait_s = retry_s if await self._contend() else min(retry_s, CONTEND_AGAIN_S)
            else:
                await self._hold()

    async def _contend(self) -> bool:
        """Try to lead: at once as the preferred holder, else after the takeover delay (during
        which a live preferred holder takes it first). Whether the lease store answered."""
        clock, leader = self.leader.clock, self.leader
        deadline = clock.monotonic() + leader.config.takeover_delay_s
        while not leader.preferred(self.shard) and (left := deadline - clock.monotonic()) > 0:
            await leader.presence.wait_changed(left)
        return await self.try_lead()

    async def try_lead(self) -> bool:
        """Contend once; whether the lease store answered (taken, or held by someone else)."""
        clock = self.leader.clock
        started = clock.monotonic()
        holder = self.leadership.holder
        try:
            revision = await self.lease.acquire()
        except OrchestratorError as exc:  # said once per outage: it is tried again soon, and again
            level = logging.DEBUG if self._contend_failing else logging.WARNING
            self.log.log(level, "contending for shard %s failed: %s", self.shard, exc)
            self._contend_failing = True
            return False
        if self._contend_failing:
            self.log.info("contending for shard %s: the lease store answers again", self.shard)
            self._contend_failing = False
        if revision is None:
            return True
        try:
            epoch = await self.leader.store.dispatch_epoch_issue(self.shard, holder)
        except OrchestratorError as exc:  # no term without an epoch: let another instance try
            self.log.warning("no epoch for shard %s from Postgres: %s; giving the lease up", self.shard, exc)
            with contextlib.suppress(OrchestratorError):
                await self.lease.release()
            return False
        self.epoch = epoch
        if self._handed_over:  # handed over, and back here: nobody took it
            self._handed_over = False
            self._no_handover_until = clock.monotonic() + HANDOVER_BACKOFF_TTLS * self.leader.config.lease_ttl_s
        fence = Fence(self.shard, epoch, holder)
        self.log.info("leading shard %s as %s at epoch %d", fence.shard, fence.holder, epoch)
        # Announced before the dispatcher is told, so the news precedes the new leader's first dispatch.
        event = LeaderElected(shard=self.shard, holder=holder, epoch=epoch)
        await self._announce(self.leader.bus.subjects.leader_elected, event)
        self._deadline = started + self.leader.config.lease_ttl_s
        self.leadership.gain(epoch, self._deadline)
        return True

    async def _hold(self) -> None:
        """Renew until the lease is lost, the term runs out or the shard is handed over; then
        step down."""
        config, clock = self.leader.config, self.leader.clock
        while self.leader.running:
            if await self.lease.wait_doubt(config.lease_renew_s) and not await self._still_ours():
                return await self.step_down("taken")
            started = clock.monotonic()
            try:
                async with asyncio.timeout(max(self._deadline - started, 0.001)):
                    renewed = await self.lease.renew()
            except (OrchestratorError, TimeoutError) as exc:
                self.log.warning("renewing the lease of shard %s failed: %s", self.shard, exc)
                if clock.monotonic() >= self._deadline:
                    return await self.step_down("expired")
                continue
            if not renewed:
                return await self.step_down("taken")
            if self.leadership.epoch != self.epoch:  # deposed by a fenced claim (Leadership.deposed)
                return await self.step_down("fenced")
            # The server counts the TTL from when it got the renewal, later than `started`: a term
            # measured from `started` ends here no later than the lease ends there.
            self._deadline = started + config.lease_ttl_s
            self.leadership.extend(self._deadline)
            if started >= self._no_handover_until and (target := self.leader.hand_over_to(self.shard)):
                self.log.info("handing shard %s over to %s, its preferred holder", self.shard, target)
                self._handed_over = True
                return await self.step_down("released")

    async def _still_ours(self) -> bool:
        """After a watch gap: whether the key still holds our own last write. Unknown (NATS
        unreachable) counts as ours: the renewal that follows, or the term's deadline, decides."""
        try:
            ours = await self.lease.verify()
        except OrchestratorError as exc:
            self.log.warning("verifying the lease of shard %s failed: %s", self.shard, exc)
            return True
        if ours:
            self.log.info("the lease of shard %s is still ours after a gap in its watch", self.shard)
        return ours

    async def step_down(self, reason: Literal["released", "taken", "expired", "fenced"]) -> None:
        epoch, self.epoch = self.epoch, None
        self.leadership.lose()
        if reason in ("released", "fenced"):
            await self.lease.release()
        holder = self.leadership.holder
        self.log.info("stopped leading shard %s at epoch %s: %s", self.shard, epoch, reason)
        event = LeaderLost(shard=self.shard, holder=holder, epoch=epoch or 0, reason=reason)
        await self._announce(self.leader.bus.subjects.leader_lost, event)

    async def _announce(self, topic: Topic[E], event: E) -> None:
        with contextlib.suppress(Exception):  # news only: Postgres and the lease are the truth
            await self.leader.bus.publish(topic.at(self.shard), event)
