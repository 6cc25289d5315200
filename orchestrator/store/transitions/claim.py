"""The claim step itself (queued -> assigned), inside the caller's transaction."""

from __future__ import annotations

from typing import Any

import asyncpg

from orchestrator.store.queries import Q
from orchestrator.store.transitions.args import ClaimStep


async def claim_in(conn: asyncpg.Connection, pool: str, limit: int, epoch: int | None) -> ClaimStep:
    """The claim itself, inside the caller's transaction (and, with a fence, its epoch lock)."""
    cfg = await conn.fetchrow(Q["pool_lock_for_claim"], pool)
    if cfg is None:
        return ClaimStep("unknown_pool")
    if cfg["paused"]:
        return ClaimStep("paused")
    budget = limit
    if cfg["max_concurrent"] >= 0:
        in_flight = await conn.fetchval(Q["pool_in_flight"], pool)
        budget = min(budget, cfg["max_concurrent"] - in_flight)
        if budget <= 0:
            return ClaimStep("at_capacity")
    runners = await conn.fetch(Q["runner_free_slots"], pool)
    if not runners:
        return ClaimStep("no_runner")
    # Runners with the same labels and taints can take the same jobs: claim once per such set.
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[Any]]] = {}
    for r in runners:
        groups.setdefault((tuple(sorted(r["labels"])), tuple(sorted(r["taints"]))), []).append([r["id"], r["free"]])
    assignments: list[dict[str, Any]] = []
    for (labels, taints), members in groups.items():
        if budget <= 0:
            break
        want = min(budget, sum(free for _, free in members))
        claimed = await conn.fetch(Q["job_claim"], pool, list(labels), want, epoch, list(taints))
        for row in claimed:
            member = max(members, key=lambda m: m[1])  # spread over the freest runners
            member[1] -= 1
            assignments.append({**dict(row), "runner_id": member[0]})
        budget -= len(claimed)
    if not assignments:
        return ClaimStep("no_job")
    await conn.execute(Q["job_shape_served"], list({a["shape_id"] for a in assignments}))
    await conn.execute(Q["job_set_runner"], [a["id"] for a in assignments], [a["runner_id"] for a in assignments])
    in_flight_after = None if cfg["max_concurrent"] < 0 else in_flight + len(assignments)
    return ClaimStep("dispatched", assignments, in_flight_after)
