"""What a claim step reads, from the plans of its statements: auto_explain's, with actual rows,
for the statements inside claim_step (the tests of what the claim reads, seed 004)."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.store import Store
from orchestrator.store.queries import Q

# auto_explain, for the statements a function runs: every one, with its actual rows, as JSON.
EXPLAIN_NESTED = {
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_nested_statements": "on",
    "auto_explain.log_format": "json",
    "client_min_messages": "log",
}


async def claim_rows_read(store: Store, pool: str, index: str = "jobs_queued_idx") -> int:
    """The rows a claim step of `pool` (limit 10) reads from `index`, from the plans of the claim's
    statements (`claim_plans`)."""
    return sum(_rows_read_from(plan, index) for plan in await claim_plans(store, pool))


async def claim_plans(store: Store, pool: str) -> list[Any]:
    """The plans, with actual rows, of the statements a claim step of `pool` (limit 10) runs:
    auto_explain sends those inside the function to this session as notices, in a transaction
    rolled back (it runs the claim), so nothing is claimed."""
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
            await conn.fetch(Q["job_claim_step"], pool, 10, None, None)
        finally:
            await tx.rollback()
            conn.remove_log_listener(heard)
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    assert plans, "auto_explain sent no plan of the claim"
    return plans


def relations_read(plan: object) -> set[str]:
    """Every table a plan (of `claim_plans`) reads."""
    if isinstance(plan, dict):
        found = {plan["Relation Name"]} if "Relation Name" in plan else set()
        return found.union(*(relations_read(value) for value in plan.values()))
    if isinstance(plan, list):
        return set().union(*(relations_read(value) for value in plan))
    return set()


def rows_read(plans: object, relation: str) -> int:
    """The rows the scans of `relation` in these plans (of `claim_plans`) read, by whatever index."""
    return _rows_read_from(plans, relation, key="Relation Name")


def rows_made(plans: object, function: str) -> int:
    """The rows the scans of set-returning `function` in these plans (of `claim_plans`) made."""
    return _rows_read_from(plans, function, key="Function Name")


def _rows_read_from(plan: object, name: str, key: str = "Index Name") -> int:
    total = 0
    if isinstance(plan, dict):
        if plan.get(key) == name:
            total += int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)) + int(
                plan.get("Rows Removed by Filter", 0)
            )
        for value in plan.values():
            total += _rows_read_from(value, name, key)
    elif isinstance(plan, list):
        for value in plan:
            total += _rows_read_from(value, name, key)
    return total
