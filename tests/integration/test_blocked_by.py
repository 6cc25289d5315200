"""`blocked_by` on `GET /v1/jobs/{id}`: each reason a queued job waits, with its numbers, its
position among the jobs competing for the same slots, and the wait estimated from the drain."""

from __future__ import annotations

from typing import Any

import aiohttp

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import CapacityUnknown
from tests import factories
from tests.support import eventually, submit


async def blocked(system_http: aiohttp.ClientSession, job_id: str) -> dict[str, Any] | None:
    async with system_http.get(f"/v1/jobs/{job_id}") as resp:
        assert resp.status == 200
        return (await resp.json())["blocked_by"]


def reasons(b: dict[str, Any]) -> list[str]:
    return [c["reason"] for c in b["constraints"]]


async def finished_lately(store: Store, n: int) -> None:
    """`n` jobs of pool default that ended in the last minute: a drain rate of n per minute."""
    ids = await factories.queue(store, n, payload={"command": ["true"]}, priority=-10)
    async with store.connection() as conn:
        await conn.execute("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY($1::uuid[])", ids)


async def test_capacity_runners_pause_position_and_estimate(
    system_http: aiohttp.ClientSession, store: Store, bus: Bus, system: Runtime
) -> None:
    await factories.pool(store, labels=["linux", "x86_64", "gpu"], max_concurrent=1)
    # No runner offers `gpu`: nothing could take it.
    gpu = await submit(system_http, labels=["gpu"], abandon_after_s=600)
    b = await blocked(system_http, gpu["id"])
    assert b is not None and b["reason"] == "no_free_runner" and b["estimated_wait_s"] is None
    assert b["constraints"][0]["numbers"] == {"runners": 1, "matching": 0, "matching_slots": 0, "matching_busy": 0}

    # One reservation holds the pool's only slot; two more wait at max_concurrent, in order.
    holder = await submit(system_http, abandon_after_s=600)

    async def held() -> bool:
        row = await store.job_get(holder["id"])
        return row is not None and row["state"] == "running"

    await eventually(held, what="the first reservation to hold the slot")
    first = await submit(system_http, abandon_after_s=600)
    second = await submit(system_http, abandon_after_s=600)
    b1, b2 = await blocked(system_http, first["id"]), await blocked(system_http, second["id"])
    assert b1 is not None and b2 is not None
    assert b1["reason"] == "at_capacity" and b1["message"] == "pool 'default' is at max_concurrent = 1"
    at_capacity = next(c for c in b1["constraints"] if c["reason"] == "at_capacity")
    assert at_capacity["numbers"] == {"in_flight": 1, "max_concurrent": 1}
    assert (b1["position"], b1["competing"], b2["position"], b2["competing"]) == (0, 2, 1, 2)
    assert b1["estimated_wait_s"] is None  # nothing drained lately: no rate to estimate from

    # Six jobs ended in the last minute: one every 10 s, so the second waits for two of them.
    await finished_lately(store, 6)
    b2 = await blocked(system_http, second["id"])
    assert b2 is not None and (b2["drained_last_minute"], b2["estimated_wait_s"]) == (6, 20.0)

    # Paused comes first, and makes the wait unpredictable.
    async with system_http.patch("/v1/pools/default", json={"paused": True}) as resp:
        assert resp.status == 200
    b1 = await blocked(system_http, first["id"])
    assert b1 is not None and reasons(b1)[:1] == ["paused"] and "at_capacity" in reasons(b1)
    assert b1["estimated_wait_s"] is None

    # Not waiting: no blocked_by.
    assert await blocked(system_http, holder["id"]) is None
    async with system_http.delete(f"/v1/jobs/{holder['id']}") as resp:
        assert resp.status == 202


async def test_capacity_unknown_is_reported_with_why(
    system_http: aiohttp.ClientSession, store: Store, bus: Bus
) -> None:
    await factories.pool(store, labels=["linux", "x86_64"], paused=True)
    job = await submit(system_http, abandon_after_s=600)
    await bus.publish(bus.subjects.capacity_unknown.at("default"), CapacityUnknown(pool="default", reason="db down"))

    async def heard() -> dict[str, Any] | None:
        b = await blocked(system_http, job["id"])
        return b if b is not None and "capacity_unknown" in reasons(b) else None

    b = await eventually(heard, what="the API to hear CapacityUnknown")
    assert reasons(b) == ["paused", "capacity_unknown"]
    assert b["constraints"][1]["numbers"] == {"why": "db down"}


async def test_no_dispatcher_leader(settings: Settings, store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=2)
    runtime = Runtime(settings, ["admission", "api"], migrate=True)  # no dispatcher at all
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as system_http:
            job = await submit(system_http, abandon_after_s=600)
            b = await blocked(system_http, job["id"])
            assert b is not None and reasons(b) == ["no_leader"]
            assert b["message"].startswith("no dispatcher holds the lease of shard 'all'")
            assert (b["position"], b["estimated_wait_s"]) == (0, None)
    finally:
        await runtime.stop()


async def test_the_job_list_says_in_short_why_each_queued_job_waits(
    system_http: aiohttp.ClientSession, store: Store, system: Runtime
) -> None:
    await factories.pool(store, labels=["linux", "x86_64", "gpu"])
    gpu = await submit(system_http, labels=["gpu"], abandon_after_s=600)  # no runner offers gpu
    async with system_http.patch("/v1/pools/default", json={"paused": True}) as resp:
        assert resp.status == 200
    plain = await submit(system_http, payload={"command": ["true"]})

    async def listed() -> dict[str, Any]:
        async with system_http.get("/v1/jobs?limit=10") as resp:
            assert resp.status == 200
            return {j["id"]: j["blocked_by"] for j in (await resp.json())["jobs"]}

    waiting = await listed()
    assert waiting[plain["id"]]["reason"] == "paused"  # the most fundamental first
    assert waiting[gpu["id"]]["reason"] == "paused"
    async with system_http.patch("/v1/pools/default", json={"paused": False}) as resp:
        assert resp.status == 200

    async def ran() -> dict[str, Any] | None:
        now = await listed()
        return now if now[plain["id"]] is None else None  # no longer queued: no reason

    waiting = await eventually(ran, timeout=20, what="the plain job to leave the queue")
    assert waiting[gpu["id"]]["reason"] == "no_free_runner"
    assert "gpu" in waiting[gpu["id"]]["message"]
