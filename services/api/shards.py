"""Who dispatches: each dispatch shard's newest term (Postgres) and its lease holder right now
(NATS), for `GET /v1/leader`, the dashboard and `orchestrator status`. The shards are those of
the number Postgres holds (set by the last dispatch instance started), not this process's
setting: the api may run where ORCH_DISPATCH_SHARDS is not set."""

from __future__ import annotations

import asyncio

from orchestrator.bus import Bus
from orchestrator.bus.lease import read_lease
from orchestrator.shards import shard_names
from orchestrator.store import Store
from schemas.api import LeaderView, LeaseView, ShardLeader


async def shard_leaders(store: Store, bus: Bus) -> list[ShardLeader]:
    names = shard_names(await store.dispatch_shards_get())
    terms = await store.dispatch_epoch_list(names)
    leases = await asyncio.gather(*(read_lease(bus, name) for name in names))
    return [
        ShardLeader(
            shard=term.shard,
            holder=term.holder,
            epoch=term.epoch,
            since=term.since,
            lease=LeaseView(holder=lease.holder, revision=lease.revision) if lease else None,
            pools=term.pools,
        )
        for term, lease in zip(terms, leases, strict=True)
    ]


async def leader_view(store: Store, bus: Bus) -> LeaderView:
    shards = await shard_leaders(store, bus)
    return LeaderView(**shards[0].model_dump(), shards=shards)
