"""Provisioner: starts a one-shot worker per queued job in pools that name a provisioner (seed 001).

It is the fleet half of capacity, in its own service so capacity stays small and fleets can be
run where the provisioner's credentials live. It wakes on `JobsQueued`, `SlotAvailable`,
`PoolUpdated`, a worker's exit and the sweep; wakes coalesce into one loop that reconciles each
woken pool:
1. forget workers that have registered since they were spawned (they are runners now), and stop
   those that never did within `start_timeout_s`;
2. read the pool's demand from Postgres: runnable queued jobs, jobs in flight, free slots of its
   registered runners (pull runners and idle workers alike). A queued job not due yet (delayed,
   or in a retry backoff) is no demand until it is: the demand says when the first one is due,
   and a timer wakes the pool then (`DueTimers`, as dispatch keeps);
3. count live workers: from the provisioner itself (a failed count spawns nothing, never blind
   past the cap, and says so: `CapacityUnknown`, counted; the next wake retries), and from
   Postgres (`workers`: what every instance spawned, so a new leader counts its predecessor's
   workers too); the larger count wins;
4. spawn `spawn_budget(...)` workers: one per queued job that no free or starting runner will
   take, within `max_workers - live` and the pool's `max_concurrent` headroom. Before each
   spawn it checks it still leads, and reserves the worker's row in Postgres, counted under the
   pool's fleet lock: the cap holds exactly even while two instances believe they lead.
At the cap a job simply stays queued (never shed); when a worker exits the fleet has room again:
the reconcile announces it with `SlotAvailable` and spawns for what still waits. Workers
register like any runner and the dispatcher hands each one job, so pull runners and workers share
one `max_concurrent` budget, enforced by the claim step; `max_active` (admission) is unrelated.

A wake's pool is checked against the pools this process knows (`KnownPools`) first: a made-up
name costs no read of its demand and no entry. What it keeps per pool (the pool's provisioner,
its starting workers) goes when the pool is deleted.

One instance spawns at a time: under leader election it acts only while this process holds the
lease of the first dispatch shard (`Leaderships.first`, shard 0 or "all"), for every pool whatever
its shard: two would each count the same fleet and both spawn, so with many shards there is
still exactly one provisioner.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.bus import Bus
from orchestrator.bus.credentials import credentials_env
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.due import DueTimers
from orchestrator.errors import ConfigurationError
from orchestrator.known_pools import KnownPools
from orchestrator.leadership import Leadership, leads, sweep_on_gain
from orchestrator.lifecycle import Service, every
from orchestrator.metrics import Metrics
from orchestrator.provisioning import (
    Provisioner,
    ProvisionerContext,
    ProvisionerFactory,
    WorkerRequest,
    resolve,
    spawn_budget,
)
from orchestrator.settings import ProvisionerSettings, Retention, Timings
from orchestrator.store import Store
from orchestrator.wakes import announce_slots
from schemas.events import CapacityUnknown, JobsQueued, PoolUpdated, SlotAvailable


class Provisioning(Service):
    name = "provisioner"

    def __init__(
        self,
        config: ProvisionerSettings,
        timings: Timings,
        store: Store,
        bus: Bus,
        factories: Mapping[str, ProvisionerFactory],
        *,
        data_dir: Path,
        instance_id: str,
        leadership: Leadership | None = None,
        metrics: Metrics | None = None,
        known_pools: KnownPools | None = None,
        retention: Retention | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.config = config
        self.retention = retention or Retention()  # how long provisioners keep what workers leave
        self.timings = timings
        self.store = store
        self.bus = bus
        self.factories = factories
        self.data_dir = data_dir
        self.instance_id = instance_id  # who reserved a worker's row
        self.leadership = leadership
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._fleets: dict[str, tuple[str, Provisioner]] = {}  # pool -> (provisioner name, instance)
        # Spawned, not registered yet: pool -> runner id -> (the provisioner's handle, spawned at).
        self._starting: dict[str, dict[str, tuple[str, float]]] = {}
        self._runner_ids: dict[str, str] = {}  # a spawned worker's handle -> its runner id
        self._dirty: set[str] = set()
        self._exited: set[str] = set()
        self._gone: set[str] = set()  # workers that exited, to forget in Postgres
        self._deleted: set[str] = set()  # pools found deleted, whose fleets to let go
        self._kick = asyncio.Event()
        self._due = DueTimers(self.wake)  # per pool: when its first deferred job is due
        # The process's (started by its runtime), or one of its own, started with this service.
        self._own_known_pools = known_pools is None
        self.known_pools = known_pools or KnownPools(store, bus)
        if self._own_known_pools:  # a deleted pool's series go with it (the runtime's does that itself)
            self.known_pools.on_gone(self.metrics.forget_pool)
        self.known_pools.on_gone(self._pool_deleted)

    async def on_start(self) -> None:
        if self._own_known_pools:
            await self.known_pools.start()
            self.on_cleanup(self.known_pools.stop)
        # A pool naming a provisioner nobody can load is a configuration error: refuse to start.
        for row in await self.store.pools_provisioned():
            try:
                self._fleet(row["name"], row["provisioner"])
            except ConfigurationError as exc:  # say which pool: the name alone may be in many
                raise ConfigurationError(f"pool {row['name']!r}: {exc}") from exc
        s = self.bus.subjects
        for topic in (
            s.jobs_queued.any(),
            s.slot_available.any(),
            s.pool_updated.any(),  # a provisioner named, a cap raised, an unpause
        ):
            sub = await self.bus.subscribe(topic, self._on_wake)
            self.on_cleanup(sub.unsubscribe)
        sweep_on_gain(self.leadership, self, self.sweep)
        self.spawn(self._loop(), "loop")
        self.spawn(every(self.timings.sweep_interval_s, self.sweep, self.log, "fleet sweep"), "sweep")
        await self.sweep()

    async def on_stop(self) -> None:
        self._due.clear()
        for _, fleet in self._fleets.values():
            try:
                await fleet.close()
            except Exception as exc:  # keep closing the rest
                self.log.warning("closing a provisioner failed: %s", exc)

    async def _on_wake(self, event: JobsQueued | SlotAvailable | PoolUpdated) -> None:
        if await self.known_pools.knows(event.pool):
            self.wake(event.pool)

    def _pool_deleted(self, pool: str) -> None:
        self._due.forget(pool)
        self._deleted.add(pool)
        self.wake(pool)

    async def sweep(self) -> None:
        """Every provisioned pool: a lost event, or a worker exit nobody reported, costs one sweep."""
        for row in await self.store.pools_provisioned():
            self.wake(row["name"])

    def wake(self, pool: str) -> None:
        self._dirty.add(pool)
        self._kick.set()

    def _worker_exited(self, pool: str, handle: str) -> None:
        runner_id = self._runner_ids.pop(handle, None)
        if runner_id is not None:  # it counts no more (forgotten on the loop, with the reconcile)
            self._gone.add(runner_id)
        self._exited.add(pool)
        self.wake(pool)

    async def _loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            pools, self._dirty = self._dirty, set()
            for pool in sorted(pools):
                try:
                    await self.reconcile(pool)
                except Exception as exc:  # the next wake or sweep retries
                    self.log.warning("reconciling the fleet of %s failed: %s", pool, exc)

    def _fleet(self, pool: str, name: str) -> Provisioner:
        """The pool's provisioner instance, made on first use (and again if the pool names another)."""
        held = self._fleets.get(pool)
        if held is not None and held[0] == name:
            return held[1]
        t = self.timings
        ctx = ProvisionerContext(
            pool=pool,
            nats_url=self.bus.url,
            namespace=self.bus.subjects.namespace,
            data_dir=self.data_dir,
            retention_s=self.retention.retention_s,
            worker_exited=lambda worker: self._worker_exited(pool, worker),
            # Workers heartbeat and drain on the orchestrator's timings, and give NATS the
            # credentials this process gives it (the embedded NATS's token, in `up`).
            env={
                "ORCH_HEARTBEAT_INTERVAL_S": str(t.heartbeat_interval_s),
                "ORCH_RUNNER_TTL_S": str(t.runner_ttl_s),
                "ORCH_STOP_TIMEOUT_S": str(t.stop_timeout_s),
                "ORCH_KILL_GRACE_S": str(t.kill_grace_s),
                **credentials_env(self.bus.credentials),
            },
        )
        factory = resolve(name, self.factories)
        try:
            fleet = factory(ctx)
        except Exception as exc:  # not a factory of provisioners after all (a callable of another kind)
            raise ConfigurationError(f"provisioner {name!r} could not be made: {type(exc).__name__}: {exc}") from exc
        if not isinstance(fleet, Provisioner):
            raise ConfigurationError(f"provisioner {name!r} lacks spawn, count_live, stop or close")
        self._fleets[pool] = (name, fleet)
        return fleet

    def _count(self, pool: str, outcome: str) -> None:
        self.metrics.fleet.labels(pool, outcome).inc()

    async def _unknown(self, pool: str, reason: str) -> None:
        self._count(pool, "capacity_unknown")
        self.log.warning("fleet of %s not counted, spawning nothing: %s", pool, reason)
        await self.bus.publish(self.bus.subjects.capacity_unknown.at(pool), CapacityUnknown(pool=pool, reason=reason))

    async def reconcile(self, pool: str) -> None:
        for runner_id in list(self._gone):  # whether or not this instance leads
            await self.store.worker_forget(runner_id)
            self._gone.discard(runner_id)
        if pool in self._deleted:
            self._deleted.discard(pool)
            await self._let_go(pool)
            return
        if not leads(self.leadership):
            return
        # Forget registered workers before reading the demand, which then counts them as runners:
        # in the other order a worker registering in between would be counted by neither.
        starting = await self._still_starting(pool)
        demand = await self.store.pool_fleet_demand(pool, self.config.max_spawn * 16)
        if demand is None or demand["provisioner"] is None:
            return
        if demand["due_in_s"] is not None:
            self._due.arm(pool, demand["due_in_s"])
        try:
            fleet = self._fleet(pool, demand["provisioner"])
        except ConfigurationError as exc:
            await self._unknown(pool, str(exc))
            return
        try:
            live = await fleet.count_live()
        except Exception as exc:
            await self._unknown(pool, f"{demand['provisioner']}: {exc}")
            return
        live = max(live, await self.store.worker_count_live(pool, self.config.start_timeout_s))
        if pool in self._exited:  # the fleet has room again: say so (dispatch and we wake on it)
            self._exited.discard(pool)
            room = demand["max_workers"] - live if demand["max_workers"] > 0 else 1
            if room > 0:
                await announce_slots(self.bus, pool, room)
        if demand["paused"]:
            return
        budget = spawn_budget(
            queued=demand["queued"],
            free_slots=demand["free_slots"],
            starting=len(starting),
            live=live,
            max_workers=demand["max_workers"],
            max_concurrent=demand["max_concurrent"],
            in_flight=demand["in_flight"],
        )
        if budget == 0 and demand["queued"] > demand["free_slots"] + len(starting):
            self._count(pool, "at_cap")
        for _ in range(min(budget, self.config.max_spawn)):
            if not leads(self.leadership) or not await self._spawn(pool, fleet, demand, starting):
                break

    async def _spawn(
        self, pool: str, fleet: Provisioner, demand: dict[str, Any], starting: dict[str, tuple[str, float]]
    ) -> bool:
        """Spawn one worker, if the fleet cap still has room for it (False: it has not)."""
        runner_id = f"{pool[:48]}-w-{secrets.token_hex(5)}"
        reserved = await self.store.worker_reserve(
            pool, runner_id, self.instance_id, demand["max_workers"], self.config.start_timeout_s
        )
        if reserved is None:
            self._count(pool, "at_cap")
            return False
        try:
            handle = await fleet.spawn(WorkerRequest(pool=pool, runner_id=runner_id, labels=list(demand["labels"])))
        except BaseException:
            await self.store.worker_forget(runner_id)
            raise
        self._runner_ids[handle] = runner_id
        starting[runner_id] = (handle, self.clock.monotonic())
        self._starting[pool] = starting
        self._count(pool, "spawned")
        self.log.info("spawned worker %s for %s", runner_id, pool)
        return True

    async def _let_go(self, pool: str) -> None:
        """A deleted pool (none of its runners is live: deletion refuses that): stop what it was
        still starting, close its provisioner, forget it."""
        self._exited.discard(pool)
        starting = self._starting.pop(pool, {})
        held = self._fleets.pop(pool, None)
        if held is None:
            return
        for runner_id, (handle, _) in starting.items():
            self._runner_ids.pop(handle, None)
            await held[1].stop(handle)
            await self.store.worker_forget(runner_id)
        await held[1].close()

    async def _still_starting(self, pool: str) -> dict[str, tuple[str, float]]:
        """The pool's spawned workers that have not registered yet (those that have are runners now)."""
        starting = self._starting.get(pool)  # kept only while not empty (`_spawn` adds it back)
        if not starting:
            return {}
        for runner_id in await self.store.runners_known(list(starting)):
            del starting[runner_id]
        fleet = self._fleets[pool][1]  # it spawned them
        deadline = self.clock.monotonic() - self.config.start_timeout_s
        for runner_id, (handle, spawned_at) in list(starting.items()):
            if spawned_at < deadline:
                self.log.warning("worker %s never registered; stopping it", runner_id)
                del starting[runner_id]
                self._runner_ids.pop(handle, None)
                await fleet.stop(handle)
                await self.store.worker_forget(runner_id)
        if not starting:
            del self._starting[pool]
        return starting
