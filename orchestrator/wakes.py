"""The wakes of the dispatcher (and the provisioner), on core NATS, best effort: a lost one costs
a sweep interval, never a job.

`SlotAvailable{pool, free}`: a pool has free capacity. Announced by whatever freed or added it:
capacity (a job ended, a runner joined or answers again, a new pool leader), the api (a
reservation finished by its client), the provisioner (a worker exited: its fleet has room).
`JobsQueued{pool, n}`: admission queued jobs, announced at its commit (the durable `JobAdmitted`
follows through the outbox, behind whatever backlog it has).

A job of a concurrency key that ends frees room in its key, which jobs of the key queued in other
pools may be waiting for: those pools are woken too (`announce_keys_freed`), as nothing else
would wake them before the safety sweep. So with a rate limit lifted or changed
(`announce_rate_limit_changed`): its waiting jobs' pools have a timer set for the start the old
limit allowed next, maybe an hour away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.bus import Bus
from orchestrator.store import Job, Store
from schemas.events import JobsQueued, SlotAvailable


async def announce_queued(bus: Bus, queued: dict[str, int]) -> None:
    for pool, n in queued.items():
        await bus.publish(bus.subjects.jobs_queued.at(pool), JobsQueued(pool=pool, n=n))


async def announce_slots(bus: Bus, pool: str, free: int) -> None:
    await bus.publish(bus.subjects.slot_available.at(pool), SlotAvailable(pool=pool, free=free))


async def announce_freed(bus: Bus, freed: Mapping[str, int]) -> None:
    """Announce the slots just freed, per pool, by ends recorded: an end frees its runner's slot,
    so no count in Postgres is needed (a draining or lost runner's slot is not free: the step it
    wakes then finds nothing to do)."""
    for pool, n in freed.items():
        await announce_slots(bus, pool, n)


async def announce_free(store: Store, bus: Bus, pools: Iterable[str]) -> None:
    """Count each pool's free slots in Postgres and announce those that have any."""
    for pool in pools:
        free = await store.pool_free(pool)
        if free > 0:
            await announce_slots(bus, pool, free)


async def announce_keys_freed(store: Store, bus: Bus, ended: Iterable[Job], woken: Iterable[str] = ()) -> None:
    """Jobs of concurrency keys left their slots (`ended`): wake the pools where jobs of those
    keys wait, but those already woken (`woken`). No query unless one of them had a key."""
    keys = {job.concurrency_key for job in ended if job.concurrency_key}
    if keys:
        pools = set(await store.concurrency_key_pools(sorted(keys))) - set(woken)
        await announce_free(store, bus, sorted(pools))


async def announce_ended(store: Store, bus: Bus, ended: Iterable[Job]) -> None:
    """Jobs that held a slot ended (cancelled, finished by their client): their pools have a free
    slot, and their keys room."""
    ended = list(ended)
    pools = {job.pool for job in ended if job.runner_id is not None}
    await announce_free(store, bus, sorted(pools))
    await announce_keys_freed(store, bus, ended, pools)


async def announce_rate_limit_changed(store: Store, bus: Bus, key: str) -> None:
    """Rate limit `key` was lifted or changed (committed): wake the pools where its jobs wait."""
    await announce_free(store, bus, await store.rate_limit_key_pools(key))
