"""The fencing check in the claim transaction, against real Postgres: a claim under an older
epoch than the one stored is refused and changes nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.store import Fence, RunnerSpec, Store
from tests import factories

SHARD = "all"


@pytest.fixture
async def queue(store: Store) -> Store:
    await factories.pool(store, "p", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r1", "p", [], 10), [])
    await factories.queue(store, 6, "p")
    return store


async def states(store: Store) -> list[tuple[str, int]]:
    jobs = await store.job_list(pool="p", state=None, key=None, limit=100)
    return sorted((j["state"], j["claim_epoch"] or 0) for j in jobs)


async def test_a_claim_under_an_older_epoch_is_fenced_and_changes_nothing(queue: Store) -> None:
    a = Fence(SHARD, await queue.dispatch_epoch_issue(SHARD, "a"), "a")
    first = await queue.transitions.claim("p", 2, a)
    assert first.status == "dispatched" and len(first.assignments) == 2

    b = Fence(SHARD, await queue.dispatch_epoch_issue(SHARD, "b"), "b")  # a new leader is elected
    before = await states(queue)
    refused = await queue.transitions.claim("p", 2, a)
    assert refused.status == "fenced" and refused.assignments == []
    assert await states(queue) == before

    second = await queue.transitions.claim("p", 2, b)
    assert second.status == "dispatched"
    assert sorted(e for s, e in await states(queue) if s == "assigned") == [a.epoch, a.epoch, b.epoch, b.epoch]


async def test_every_term_gets_a_newer_epoch_from_postgres(queue: Store) -> None:
    first = await queue.dispatch_epoch_issue(SHARD, "a")
    second = await queue.dispatch_epoch_issue(SHARD, "b")
    assert second > first
    row = await queue.dispatch_epoch_get(SHARD)
    assert row is not None and (row["epoch"], row["holder"]) == (second, "b")
    # A term Postgres never issued claims nothing.
    assert (await queue.transitions.claim("p", 1, Fence(SHARD, second + 1, "forged"))).status == "fenced"


async def test_unfenced_claims_still_work_without_election(queue: Store) -> None:
    step = await queue.transitions.claim("p", 3)
    assert step.status == "dispatched" and len(step.assignments) == 3
    assert await queue.dispatch_epoch_get(SHARD) is None


async def test_concurrent_steps_of_one_leader_do_not_block_each_other(queue: Store, store: Store) -> None:
    """Steps of one term share the epoch lock: pools drain in parallel."""
    await factories.pool(store, "q", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r2", "q", [], 10), [])
    await factories.queue(store, 6, "q")
    fence = Fence(SHARD, await store.dispatch_epoch_issue(SHARD, "a"), "a")
    steps = await asyncio.gather(*(store.transitions.claim(pool, 1, fence) for pool in ("p", "q") * 3))
    assert [s.status for s in steps] == ["dispatched"] * 6


async def test_unstarted_assignments_go_back_to_the_queue(queue: Store) -> None:
    await queue.transitions.claim("p", 2)
    assert await queue.transitions.requeue_unstarted(60) == []
    later = datetime.now(UTC) + timedelta(seconds=120)
    requeued = await queue.transitions.requeue_unstarted(60, now=later)
    assert len(requeued) == 2
    assert all(state == "queued" for state, _ in await states(queue))
