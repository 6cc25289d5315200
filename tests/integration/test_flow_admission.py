"""Flow control at the door and in the API, with admission and the api only (jobs stay queued;
claims are made by the test): each `on_conflict` mode, rate limits set and read, bad input named
and refused without changing anything, and `blocked_by` naming the key, its limit and holders,
a rate limit's and a pool's next start."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import aiohttp
import pytest

from orchestrator.bus import Bus
from orchestrator.store import ClaimStep, End, Start, Store
from schemas.jobs import JobState
from tests import factories
from tests.support import Listener, call, database_rows, submit


def claimed_ids(step: ClaimStep) -> list[str]:
    return [str(a["id"]) for a in step.assignments]


async def job(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"/v1/jobs/{job_id}")
    assert status == 200, body
    return body


async def test_reject_refuses_a_job_that_would_wait_for_its_key(http: aiohttp.ClientSession, store: Store) -> None:
    await factories.pool(store)
    first = await submit(http, concurrency_key="deploy", concurrency_limit=2)
    assert (first["concurrency_key"], first["concurrency_limit"], first["on_conflict"]) == ("deploy", 2, "queue")
    await submit(http, concurrency_key="deploy", concurrency_limit=2, on_conflict="reject")  # room for two
    status, body = await call(
        http, "POST", "/v1/jobs", json={"pool": "default", "concurrency_key": "deploy", "on_conflict": "reject"}
    )
    assert status == 409, body
    error = body["error"]
    assert (error["code"], error["field"]) == ("concurrency_limit", "concurrency_key")
    assert "'deploy' is at its limit" in error["message"]
    await submit(http, concurrency_key="other", on_conflict="reject")  # another key: free
    # A repeat of an admitted spec is that job, with or without the defaults spelled out.
    spec = {"pool": "default", "key": "once", "concurrency_key": "solo"}
    again = {**spec, "concurrency_limit": 1, "on_conflict": "queue"}
    created, repeated = [await call(http, "POST", "/v1/jobs", json=s) for s in (spec, again)]
    assert (created[0], repeated[0], repeated[1]["id"]) == (201, 200, created[1]["id"])


async def test_cancel_pending_replaces_the_key_s_queued_jobs(http: aiohttp.ClientSession, store: Store) -> None:
    await factories.pool(store)
    old = [await submit(http, concurrency_key="build/main") for _ in range(2)]
    bystander = await submit(http, concurrency_key="build/dev")
    new = await submit(http, concurrency_key="build/main", on_conflict="cancel_pending")
    for gone in old:
        row = await job(http, gone["id"])
        assert row["state"] == "cancelled" and row["reason"] == (
            f"superseded by job {new['id']} (concurrency_key 'build/main', on_conflict=cancel_pending)"
        )
    assert (await job(http, bystander["id"]))["state"] == "queued"
    assert (await job(http, new["id"]))["state"] == "queued"


async def test_cancel_in_progress_ends_the_key_s_jobs_and_runs_after_them(
    http: aiohttp.ClientSession, store: Store, bus: Bus
) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=4)
    running, assigned = [await submit(http, concurrency_key="deploy", concurrency_limit=2) for _ in range(2)]
    claimed = (await store.transitions.claim("default", 10)).assignments
    assert len(claimed) == 2
    await store.transitions.start_many([Start(UUID(running["id"]), "r1", 1)])
    async with Listener(bus, bus.subjects.cancel.at("r1")) as told:
        new = await submit(http, concurrency_key="deploy", concurrency_limit=2, on_conflict="cancel_in_progress")
        # The runner hears of both: the assignment it may not start, the process it must stop.
        for held in (running, assigned):
            await told.wait(lambda e, held=held: str(e.job_id) == held["id"])
    assert (await job(http, assigned["id"]))["state"] == "cancelled"
    still = await store.job_get(running["id"])
    assert still is not None and still["state"] == "running" and still["cancel_requested_at"] is not None
    # The new job takes the room the assigned one left; the running one holds the other until its
    # runner reports the end, so a third job of the key waits for it.
    assert claimed_ids(await store.transitions.claim("default", 10)) == [new["id"]]
    third = await submit(http, concurrency_key="deploy", concurrency_limit=2)
    assert (await store.transitions.claim("default", 10)).assignments == []
    await store.transitions.finish_many([End(UUID(running["id"]), "r1", 1, JobState.cancelled)])
    assert claimed_ids(await store.transitions.claim("default", 10)) == [third["id"]]


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        ({"concurrency_limit": 2}, "concurrency_limit", "invalid"),  # a limit of nothing
        ({"on_conflict": "reject"}, "on_conflict", "invalid"),
        ({"concurrency_key": "k", "on_conflict": "replace"}, "on_conflict", "invalid"),
        ({"concurrency_key": "k", "concurrency_limit": 0}, "concurrency_limit", "invalid"),
        ({"concurrency_key": "two words"}, "concurrency_key", "invalid"),
        ({"rate_limit_key": "a/b"}, "rate_limit_key", "invalid"),
        ({"rate_limit_key": "nobody-set-it"}, "rate_limit_key", "unsatisfiable"),
    ],
)
async def test_bad_flow_fields_are_named_and_change_nothing(
    http: aiohttp.ClientSession, store: Store, spec: dict[str, Any], field: str, code: str
) -> None:
    await factories.pool(store)
    before = await database_rows(store)
    status, body = await call(http, "POST", "/v1/jobs", json={"pool": "default", **spec})
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, code, field), body
    assert await database_rows(store) == before


async def test_rate_limits_are_set_read_and_validated(http: aiohttp.ClientSession, store: Store) -> None:
    assert (await call(http, "GET", "/v1/rate-limits/api"))[0] == 404
    status, created = await call(http, "PUT", "/v1/rate-limits/api", json={"limit": 10, "period_s": 60})
    assert status == 201 and (created["limit"], created["period_s"], created["burst"]) == (10, 60, 1)
    assert created["starts_left"] == 1 and created["next_start_at"] is None
    status, changed = await call(http, "PUT", "/v1/rate-limits/api", json={"limit": 20, "period_s": 60, "burst": 5})
    assert status == 200 and (changed["limit"], changed["burst"], changed["starts_left"]) == (20, 5, 5)
    assert (await call(http, "GET", "/v1/rate-limits/api"))[1] == changed
    before = await database_rows(store)
    for body, field in (
        ({"limit": 0, "period_s": 1}, "limit"),
        ({"limit": 1, "period_s": 0}, "period_s"),
        ({"limit": 2, "period_s": 1, "burst": 3}, "burst"),
        ({"limit": "5", "period_s": 1}, "limit"),
        ({"period_s": 1}, "limit"),
        ({"limit": 1, "period_s": 1, "per": "minute"}, "per"),
    ):
        status, answer = await call(http, "PUT", "/v1/rate-limits/api", json=body)
        assert (status, answer["error"]["field"]) == (422, field), (body, answer)
    status, answer = await call(http, "PUT", "/v1/rate-limits/not%20a%20key", json={"limit": 1, "period_s": 1})
    assert (status, answer["error"]["field"]) == (422, "key")
    assert await database_rows(store) == before
    # Now jobs may name it.
    await factories.pool(store)
    assert (await submit(http, rate_limit_key="api"))["rate_limit_key"] == "api"


async def test_blocked_by_names_the_key_its_limit_and_holders_and_the_next_starts(
    http: aiohttp.ClientSession, store: Store
) -> None:
    await factories.pool(store, max_starts_per_s=0.5)
    await factories.runner(store, "r1", slots=4)
    await call(http, "PUT", "/v1/rate-limits/hourly", json={"limit": 1, "period_s": 3600})
    holder = await submit(http, concurrency_key="deploy")
    assert claimed_ids(await store.transitions.claim("default", 10)) == [holder["id"]]
    waiting = await submit(http, concurrency_key="deploy", rate_limit_key="hourly")
    b = (await job(http, waiting["id"]))["blocked_by"]
    by_reason = {c["reason"]: c for c in b["constraints"]}
    pool_next = by_reason["max_starts_per_s"]
    assert pool_next["message"].startswith("pool 'default' starts at most 0.5 jobs per second: next start at ")
    assert 0 < pool_next["numbers"]["seconds_left"] <= 2
    key = by_reason["concurrency_key"]
    assert key["message"] == f"concurrency key 'deploy' is at its limit of 1: held by {holder['id']}"
    assert key["numbers"] == {"concurrency_key": "deploy", "concurrency_limit": 1, "held": 1, "holders": holder["id"]}
    assert "rate_limit" not in by_reason  # the hour's start is unspent
    assert (await call(http, "PATCH", "/v1/pools/default", json={"max_starts_per_s": None}))[0] == 200
    # Another job of the rate limit spends the hour's start: the waiting one now waits for both.
    spender = await submit(http, rate_limit_key="hourly")
    assert claimed_ids(await store.transitions.claim("default", 10)) == [spender["id"]]
    b = (await job(http, waiting["id"]))["blocked_by"]
    # No dispatcher runs here: no_leader comes first.
    assert [c["reason"] for c in b["constraints"]] == ["no_leader", "concurrency_key", "rate_limit"]
    rate = b["constraints"][-1]
    assert rate["message"] == f"rate limit hourly: next start at {rate['numbers']['next_start_at']}"
    assert 3590 < rate["numbers"]["seconds_left"] <= 3600
    # Counted where operators look: the stats the dashboard reads, and the scraped gauge.
    (stats,) = (await call(http, "GET", "/v1/stats"))[1]["pools"]
    assert (stats["held_by_key"], stats["held_by_rate"]) == (1, 0)  # its key holds it first
    async with http.get("/metrics") as resp:
        scraped = await resp.text()
    assert 'orchestrator_pool_queued_held_back{pool="default",reason="concurrency_key"} 1.0' in scraped
    assert 'orchestrator_pool_queued_held_back{pool="default",reason="rate_limit"} 0.0' in scraped
