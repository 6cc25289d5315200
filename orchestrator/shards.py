"""Dispatch shards: their names, and which live dispatch instance should lead each one.

Pools are spread over `ORCH_DISPATCH_SHARDS` shards in Postgres (migration 0015: a pool's
explicit `shard`, else the CRC-32 of its name modulo the count). A shard is a lease (the NATS KV
key `dispatch.<name>`) and a fencing epoch (its `dispatch_epochs` row).

Names: a single shard is "all", the lease key and epoch row the one dispatcher always had, so a
one-shard deployment keeps its data and upgrades, even rolling, without ever having two leaders
(old and new instances contend for the same key). With n > 1 they are "0" .. "n-1".

Who should lead which: every instance computes the same answer from the same set of live
instances, with rendezvous (highest-random-weight) hashing of (shard, instance) bounded to a fair
load: shard by shard, the highest-weight instance that still has room takes it, room being an
equal share (shards // instances, one more for only as many instances as the remainder). So
three instances over three shards lead one each, and an instance that joins or leaves moves few
shards. It is a preference, not a lock: the lease decides who leads (services/leader.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

ALL = "all"


def shard_names(count: int) -> list[str]:
    """The names of `count` shards."""
    if count < 1:
        raise ValueError(f"there is at least one dispatch shard, not {count}")
    return [ALL] if count == 1 else [str(i) for i in range(count)]


def _weight(shard: str, instance: str) -> int:
    digest = hashlib.blake2b(f"{shard}\0{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_holders(shards: Sequence[str], instances: Collection[str]) -> dict[str, str]:
    """Shard -> the instance that should lead it, for the live `instances` (none: empty)."""
    if not instances:
        return {}
    base, extra = divmod(len(shards), len(instances))
    load = dict.fromkeys(instances, 0)
    at_most_plus_one = extra  # instances that may still take one more than `base`
    holders: dict[str, str] = {}
    for shard in shards:
        for instance in sorted(instances, key=lambda i: (_weight(shard, i), i), reverse=True):
            if load[instance] < base or (load[instance] == base and at_most_plus_one > 0):
                if load[instance] == base:
                    at_most_plus_one -= 1
                load[instance] += 1
                holders[shard] = instance
                break
    return holders
