"""Why is my job waiting? `blocked_by` on `GET /v1/jobs/{id}` while a job is queued.

Every constraint that holds it back, most fundamental first, each with the numbers behind it:
no dispatcher holds the lease (nothing is dispatched at all), its pool is paused, its pool's
capacity could not be counted lately (`CapacityUnknown`: the dispatcher does not dispatch blind),
no runner that could take it has a free slot (none offers its labels, or all those are busy),
its pool is at `max_concurrent`, its pool's `max_starts_per_s` allows no start yet (and when the
next is), its concurrency key is at its limit (and which jobs hold it), its rate limit has no
start left (and when the next is), it is delayed and not due yet (`run_at` / `delay_s`:
"scheduled for ..."), its retry backoff has not run out. Then its position among the
queued jobs that compete for the same slots, and an estimated wait from how many jobs the pool
finished in the last minute. The numbers are read together from Postgres; the lease (of the
job's pool's dispatch shard) from NATS; `CapacityUnknown` is the news this process heard (one
subscription per API process), kept only for pools that exist (`KnownPools`: anyone on NATS can
name any pool) and only while fresh, so the news it keeps is bounded by the pools, however many
names a sender makes up.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from orchestrator.bus import Bus
from orchestrator.bus.lease import read_lease
from orchestrator.known_pools import KnownPools
from orchestrator.lifecycle import Service
from orchestrator.store import FlowWait, Store
from schemas.api import BlockedBy, Constraint, Waiting
from schemas.events import CapacityUnknown

# A `CapacityUnknown` heard this recently still holds: the dispatcher retries on its next wake.
CAPACITY_UNKNOWN_FRESH_S = 30.0
# Constraints that lift on an operator's action or the end of an outage, not with the drain.
UNPREDICTABLE = {"no_leader", "paused", "capacity_unknown"}


def constraints(
    job: dict[str, Any], n: dict[str, Any], *, leader: bool, shard: str, unknown: str | None
) -> list[Constraint]:
    """Everything holding `job` back, given the numbers `Store.job_waiting` read for it."""
    pool = n["pool"]
    name = job["pool"]
    found: list[Constraint] = []
    if not leader:
        found.append(
            Constraint(
                reason="no_leader",
                message=f"no dispatcher holds the lease of shard {shard!r}: nothing is dispatched until one does",
                numbers={"shard": shard},
            )
        )
    if pool["paused"]:
        found.append(Constraint(reason="paused", message=f"pool {name!r} is paused"))
    if unknown is not None:
        found.append(
            Constraint(
                reason="capacity_unknown",
                message=f"the capacity of pool {name!r} could not be counted ({unknown}): nothing is dispatched blind",
                numbers={"why": unknown},
            )
        )
    runners = {k: n[k] for k in ("runners", "matching", "matching_slots", "matching_busy")}
    if n["matching"] == 0:
        message = f"no runner of pool {name!r} that could take it is active (it needs labels {sorted(job['labels'])})"
        found.append(Constraint(reason="no_free_runner", message=message, numbers=runners))
    elif n["matching_busy"] >= n["matching_slots"]:
        message = f"every slot of the {n['matching']} runners that could take it is busy"
        found.append(Constraint(reason="no_free_runner", message=message, numbers=runners))
    cap = pool["max_concurrent"]
    if cap >= 0 and n["in_flight"] >= cap:
        found.append(
            Constraint(
                reason="at_capacity",
                message=f"pool {name!r} is at max_concurrent = {cap}",
                numbers={"in_flight": n["in_flight"], "max_concurrent": cap},
            )
        )
    found += _flow(name, pool, n.get("flow"))
    if n["backoff_s"] > 0:
        found.append(_not_due(job, n["backoff_s"]))
    return found


def _flow(name: str, pool: dict[str, Any], flow: FlowWait | None) -> list[Constraint]:
    """What flow control holds it back by: its pool's max_starts_per_s, its concurrency key at its
    limit (naming the jobs that hold it), its rate limit with no start left."""
    if flow is None:
        return []
    found = []
    if flow.pool_next_at is not None:
        rate = pool["max_starts_per_s"]
        message = f"pool {name!r} starts at most {rate:g} jobs per second: next start at {_when(flow.pool_next_at)}"
        numbers = {"max_starts_per_s": rate, **_next(flow.pool_next_at)}
        found.append(Constraint(reason="max_starts_per_s", message=message, numbers=numbers))
    if flow.key_full:
        key, limit = flow.concurrency_key, flow.key_limit or 1
        holders = ", ".join(str(h) for h in flow.key_holders)
        if flow.key_held > len(flow.key_holders):
            holders += f" and {flow.key_held - len(flow.key_holders)} more"
        message = f"concurrency key {key!r} is at its limit of {limit}: held by {holders}"
        numbers = {"concurrency_key": key, "concurrency_limit": limit, "held": flow.key_held, "holders": holders}
        found.append(Constraint(reason="concurrency_key", message=message, numbers=numbers))
    if flow.rate_empty and flow.rate_next_at is not None:
        message = f"rate limit {flow.rate_limit_key}: next start at {_when(flow.rate_next_at)}"
        numbers = {"rate_limit_key": flow.rate_limit_key, **_next(flow.rate_next_at)}
        found.append(Constraint(reason="rate_limit", message=message, numbers=numbers))
    return found


def _when(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _next(at: datetime) -> dict[str, str | float]:
    return {"next_start_at": _when(at), "seconds_left": round(max(0.0, at.timestamp() - time.time()), 3)}


def _delayed(job: dict[str, Any]) -> bool:
    """Whether a job waiting for its `not_before` waits for its first due time (delayed: nothing
    has run yet), not for a retry's backoff."""
    return job.get("run_at") is not None and job["attempt"] == 0


def _not_due(job: dict[str, Any], seconds_left: float) -> Constraint:
    numbers: dict[str, int | float | str | None] = {"seconds_left": round(seconds_left, 3)}
    if _delayed(job):
        numbers["run_at"] = job["run_at"].isoformat()
        message = f"scheduled for {job['run_at']:%Y-%m-%d %H:%M:%S} UTC (in {seconds_left:.1f}s)"
        return Constraint(reason="scheduled", message=message, numbers=numbers)
    message = f"retry backoff: not before another {seconds_left:.1f}s"
    return Constraint(reason="backoff", message=message, numbers=numbers)


def estimate(found: list[Constraint], n: dict[str, Any]) -> float | None:
    """Seconds until it runs, from the recent drain rate (no sooner than a backoff or a start
    it waits for); None when that cannot say."""
    if any(c.reason in UNPREDICTABLE for c in found) or n["matching"] == 0:
        return None
    if not found and n["ahead"] == 0:
        return 0.0
    if n["drained_last_minute"] == 0:
        return None
    floor = max([n["backoff_s"], *(float(c.numbers.get("seconds_left") or 0) for c in found)])
    return round(max((n["ahead"] + 1) * 60.0 / n["drained_last_minute"], floor), 1)


def blocked_by(job: dict[str, Any], n: dict[str, Any], *, leader: bool, shard: str, unknown: str | None) -> BlockedBy:
    found = constraints(job, n, leader=leader, shard=shard, unknown=unknown)
    if found:
        reason, message = found[0].reason, found[0].message
    elif n["ahead"]:
        reason, message = "queued_behind", f"{n['ahead']} jobs competing for the same slots go first"
    else:
        reason, message = "dispatching", "nothing holds it back: it is next"
    return BlockedBy(
        reason=reason,
        message=message,
        constraints=found,
        position=n["ahead"],
        competing=n["competing"],
        drained_last_minute=n["drained_last_minute"],
        estimated_wait_s=estimate(found, n),
    )


class Why:
    """Answers `blocked_by` for this API process."""

    def __init__(self, store: Store, bus: Bus, known_pools: KnownPools | None = None) -> None:
        self.store = store
        self.bus = bus
        # The process's (started by its runtime), or one of its own, started with the API.
        self._own_known_pools = known_pools is None
        self.known_pools = known_pools or KnownPools(store, bus)
        self.known_pools.on_gone(self._forget)
        self._unknown: dict[str, tuple[str, float]] = {}  # pool -> (why, when heard); pools that exist

    async def start(self, service: Service) -> None:
        if self._own_known_pools:
            await self.known_pools.start()
            service.on_cleanup(self.known_pools.stop)
        sub = await self.bus.subscribe(self.bus.subjects.capacity_unknown.any(), self._on_unknown)
        service.on_cleanup(sub.unsubscribe)

    async def _on_unknown(self, event: CapacityUnknown) -> None:
        if await self.known_pools.knows(event.pool):
            self._unknown[event.pool] = (event.reason, time.monotonic())

    def _forget(self, pool: str) -> None:
        self._unknown.pop(pool, None)

    def capacity_unknown(self, pool: str) -> str | None:
        heard = self._unknown.get(pool)
        if heard is None:
            return None
        if time.monotonic() - heard[1] > CAPACITY_UNKNOWN_FRESH_S:  # stale: the dispatcher has retried since
            del self._unknown[pool]
            return None
        return heard[0]

    async def waiting(self, jobs: list[dict[str, Any]]) -> dict[Any, Waiting]:
        """In short, why each queued one of `jobs` waits: read once per pool and shape (what
        its runners must offer), not per job, so a list stays cheap."""
        queued = [j for j in jobs if j["state"] == "queued"]
        if not queued:
            return {}
        leaders: dict[str, bool] = {}  # per shard: someone holds its lease
        by_shape: dict[int, list[Constraint]] = {}
        found: dict[Any, Waiting] = {}
        for job in queued:
            shape = job["shape_id"]  # the runners it needs: pool, labels, tenant, tolerations
            if shape not in by_shape:
                numbers = await self.store.job_waiting(job)
                shard = numbers["pool"]["dispatch_shard"]
                if shard not in leaders:
                    leaders[shard] = await read_lease(self.bus, shard) is not None
                unknown = self.capacity_unknown(job["pool"])
                held = constraints(job, numbers, leader=leaders[shard], shard=shard, unknown=unknown)
                by_shape[shape] = [c for c in held if c.reason not in ("backoff", "scheduled")]  # the job's own
            held = by_shape[shape]
            backoff = job.get("not_before")
            if held:
                found[job["id"]] = Waiting(reason=held[0].reason, message=held[0].message)
            elif backoff is not None and backoff.timestamp() > time.time():
                not_due = _not_due(job, backoff.timestamp() - time.time())
                found[job["id"]] = Waiting(reason=not_due.reason, message=not_due.message)
            else:
                found[job["id"]] = Waiting(reason="queued", message="nothing holds it back: it waits its turn")
        return found

    async def blocked_by(self, job: dict[str, Any]) -> BlockedBy:
        numbers = await self.store.job_waiting(job)
        shard = numbers["pool"]["dispatch_shard"]
        leader = await read_lease(self.bus, shard) is not None
        return blocked_by(job, numbers, leader=leader, shard=shard, unknown=self.capacity_unknown(job["pool"]))
