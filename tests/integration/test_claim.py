"""The claim step against real Postgres: the cap holds, matching skips what no free runner can
take without scanning it (seed 004), priority then round-robin across tenants, paused pools."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.store import End, Start, Store
from orchestrator.store.queries import Q
from schemas.jobs import JobState
from tests import factories

# auto_explain, for the statements a function runs: every one, with its actual rows, as JSON.
EXPLAIN_NESTED = {
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_format": "json",
    "client_min_messages": "log",
}


async def finish(store: Store, assignments: list[dict]) -> None:
    runs = [Start(a["id"], a["runner_id"], a["attempt"] + 1) for a in assignments]
    assert len(await store.transitions.start_many(runs)) == len(runs)
    ends = [End(*run, JobState.succeeded, 0) for run in runs]
    assert len(await store.transitions.finish_many(ends)) == len(runs)


async def test_budget_is_the_lesser_of_cap_and_free_slots(store: Store) -> None:
    await factories.pool(store, max_concurrent=3)
    await factories.runner(store, "r1", slots=2)
    await factories.runner(store, "r2", slots=2)
    await factories.queue(store, 10)
    step = await store.transitions.claim("default", 100)
    assert step.status == "dispatched" and len(step.assignments) == 3
    assert (await store.transitions.claim("default", 100)).status == "at_capacity"
    await finish(store, step.assignments[:1])
    again = await store.transitions.claim("default", 100)
    assert len(again.assignments) == 1
    per_runner: dict[str, int] = {}
    for a in step.assignments[1:] + again.assignments:  # what is held now
        per_runner[a["runner_id"]] = per_runner.get(a["runner_id"], 0) + 1
    assert all(n <= 2 for n in per_runner.values())


async def test_no_runner_no_job_paused_unknown(store: Store) -> None:
    await factories.pool(store)
    assert (await store.transitions.claim("default", 10)).status == "no_runner"
    await factories.runner(store, "r1")
    assert (await store.transitions.claim("default", 10)).status == "no_job"
    await factories.queue(store, 1)
    await factories.pool(store, paused=True)
    assert (await store.transitions.claim("default", 10)).status == "paused"
    assert (await store.transitions.claim("nowhere", 10)).status == "unknown_pool"


async def test_runnable_job_is_found_without_scanning_unrunnable_ones(store: Store) -> None:
    await factories.pool(store, labels=["linux", "gpu"])
    await factories.runner(store, "cpu-only", labels=["linux"])
    # 2,000 jobs no free runner can take, queued ahead of the one it can.
    for _ in range(2):
        await factories.queue(store, 1000, labels=["gpu"], priority=5)
    (wanted,) = await factories.queue(store, 1, labels=["linux"])
    # The plans of the claim's statements touch only the matching shape's index range, whatever
    # waits elsewhere: auto_explain sends those inside the function to this session as notices
    # (in a transaction rolled back, since it runs the claim).
    notices: list[str] = []

    def heard(_conn: object, message: Any) -> None:
        notices.append(message.message)

    async with store.connection() as conn:
        conn.add_log_listener(heard)
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("LOAD 'auto_explain'")
            for setting, value in EXPLAIN_NESTED.items():
                await conn.execute(f"SET LOCAL {setting} = {value}")
            await conn.fetch(Q["job_claim_step"], "default", 10, None, None)
        finally:
            await tx.rollback()
            conn.remove_log_listener(heard)
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    scanned = sum(_rows_read_from(plan, "jobs_queued_idx") for plan in plans)
    assert plans and 1 <= scanned <= 10, f"the claim read {scanned} index rows"
    step = await store.transitions.claim("default", 10)
    assert [a["id"] for a in step.assignments] == [wanted]


def _rows_read_from(plan: object, index: str) -> int:
    total = 0
    if isinstance(plan, dict):
        if plan.get("Index Name") == index:
            total += int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)) + int(
                plan.get("Rows Removed by Filter", 0)
            )
        for value in plan.values():
            total += _rows_read_from(value, index)
    elif isinstance(plan, list):
        for value in plan:
            total += _rows_read_from(value, index)
    return total


async def test_priority_first_then_round_robin_across_tenants(store: Store) -> None:
    await factories.pool(store, max_concurrent=1)
    await factories.runner(store, "r1")
    flood = await factories.queue(store, 5, tenant="a")
    (other,) = await factories.queue(store, 1, tenant="b")
    (urgent,) = await factories.queue(store, 1, tenant="a", priority=10)
    order = []
    for _ in range(4):
        step = await store.transitions.claim("default", 10)
        order.append(step.assignments[0]["id"])
        await finish(store, step.assignments)
    # urgent first; then tenant b gets its turn before tenant a's flood continues.
    assert order[0] == urgent
    assert order[1:].count(other) == 1
    assert order[1:3] in ([flood[0], other], [other, flood[0]])
    assert order[3] == flood[1]
