"""The take protocol (seed 003) on real NATS and Postgres: every status of a take, the long poll
woken by the assignment, and abandonment (a queued job that is never dispatched, and a
reservation a runner holds but nobody takes)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.store import Store
from tests import factories
from tests.support import Listener, agent, eventually, submit


async def take(
    system_http: aiohttp.ClientSession, job_id: str, token: str | None, **params: Any
) -> tuple[int, dict[str, Any], Any]:
    query = {k: str(v) for k, v in {"token": token, **params}.items() if v is not None}
    async with system_http.post(f"/v1/jobs/{job_id}/take", params=query) as resp:
        return resp.status, await resp.json(), resp.headers


async def release(system_http: aiohttp.ClientSession, store: Store, job_id: str) -> None:
    """Cancel a reservation a runner holds, and wait until it let go (a fast teardown)."""
    async with system_http.delete(f"/v1/jobs/{job_id}") as resp:
        # 202 once its runner has started it (the runner is told); 200 while the runner has only
        # acknowledged the hand-off (held, and ended at once): a take can answer in between.
        assert resp.status in (200, 202)

    async def ended() -> bool:
        return await state_of(store, job_id) == "cancelled"

    await eventually(ended, what=f"job {job_id} to be cancelled")


async def state_of(store: Store, job_id: str) -> str:
    row = await store.job_get(job_id)  # type: ignore[arg-type]
    assert row is not None
    return row["state"]


async def test_take_answers_every_status(
    system_http: aiohttp.ClientSession, store: Store, bus: Bus, system: Runtime
) -> None:
    # `gpu` is offered by the pool but by no runner yet: the job waits.
    await factories.pool(store, labels=["linux", "x86_64", "gpu"])
    job = await submit(system_http, labels=["gpu"])
    assert job["token"] and job["abandon_after_s"] == 30  # a reservation is take-style by default

    status, body, _ = await take(system_http, "01a20789-382f-70f4-875f-e0c05fdb8cac", job["token"])
    assert (status, body["error"]["code"]) == (404, "not_found")
    for token in ("wrong", None):
        status, body, _ = await take(system_http, job["id"], token)
        assert (status, body["error"]["code"], body["error"]["field"]) == (403, "forbidden", "token")
    for wait in ("soon", -1, 1000, "nan"):
        status, body, _ = await take(system_http, job["id"], job["token"], wait=wait)
        assert (status, body["error"]["field"]) == (422, "wait"), body
    status, body, headers = await take(system_http, job["id"], job["token"])
    assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "not_ready", "1")
    assert await state_of(store, job["id"]) == "queued"  # bad takes changed nothing

    gpu = agent(system.settings, bus, runner_id="gpu-1", pool="default", labels=["gpu"], slots=1)
    await gpu.start()
    try:
        status, body, _ = await take(system_http, job["id"], job["token"], wait=10)
        assert status == 200, body
        assert body["job"]["id"] == job["id"] and body["job"]["state"] in ("assigned", "running")
        runner = body["runner"]
        assert (runner["id"], runner["pool"], runner["labels"]) == ("gpu-1", "default", ["gpu"])
        assert runner["metadata"]["labels"] == ["gpu"] and "hostname" in runner["metadata"]
        # Taking again (a retry that lost the answer) gives the same runner.
        status, again, _ = await take(system_http, job["id"], job["token"])
        assert (status, again["runner"]["id"]) == (200, "gpu-1")
        row = await store.job_get(job["id"])
        assert row is not None and row["taken_at"] is not None
        # Once the reservation ends there is nothing to take.
        await release(system_http, store, job["id"])
        status, body, _ = await take(system_http, job["id"], job["token"])
        assert status == 404 and "cancelled" in body["error"]["message"]
    finally:
        await gpu.stop()


async def test_long_poll_answers_the_moment_a_slot_frees(
    system_http: aiohttp.ClientSession, store: Store, system: Runtime
) -> None:
    await factories.pool(store, labels=["linux", "x86_64"], max_concurrent=1)
    holder = await submit(system_http)
    status, _, _ = await take(system_http, holder["id"], holder["token"], wait=10)
    assert status == 200
    waiting = await submit(system_http)
    poll = asyncio.create_task(take(system_http, waiting["id"], waiting["token"], wait=30))

    async def polling() -> bool:  # the long poll has recorded itself: heard from until its end
        row = await store.job_get(waiting["id"])
        return row is not None and row["last_polled_at"] is not None

    await eventually(polling, what="the long poll to start")
    assert not poll.done()
    async with system_http.delete(f"/v1/jobs/{holder['id']}") as resp:  # the runner lets the slot go
        assert resp.status == 202
    freed = time.monotonic()
    status, body, _ = await asyncio.wait_for(poll, 10)
    assert status == 200, body
    assert body["runner"]["id"] == system.services["runner"].runner_id  # type: ignore[attr-defined]
    assert time.monotonic() - freed < 2
    await release(system_http, store, waiting["id"])


async def test_long_poll_ends_when_the_server_stops(settings: Any, store: Store) -> None:
    await factories.pool(store)
    runtime = Runtime(settings, ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as system_http:
            job = await submit(system_http)
            poll = asyncio.create_task(take(system_http, job["id"], job["token"], wait=60))

            async def polling() -> bool:
                row = await store.job_get(job["id"])
                return row is not None and row["last_polled_at"] is not None

            await eventually(polling, what="the long poll to start")
            started = time.monotonic()
            await runtime.services["api"].stop()
            status, _, headers = await asyncio.wait_for(poll, 10)
            assert (status, headers["Retry-After"]) == (503, "1")
            assert time.monotonic() - started < 5
    finally:
        await runtime.stop()


async def test_queued_job_never_dispatched_expires_when_its_client_stops_polling(
    system_http: aiohttp.ClientSession, store: Store, bus: Bus
) -> None:
    await factories.pool(store, labels=["linux", "x86_64"], paused=True)  # admitted, never dispatched
    async with Listener(bus, bus.subjects.job_expired.any()) as expired:
        kept = await submit(system_http, abandon_after_s=1.0)
        dropped = await submit(system_http, abandon_after_s=1.0)
        # One client keeps polling past its abandon_after_s; the other never polls.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            status, _, _ = await take(system_http, kept["id"], kept["token"], wait=0.3)
            assert status == 503
        event = await expired.wait(lambda e: str(e.job_id) == dropped["id"])
        assert (event.pool, event.runner_id, event.reason) == ("default", None, "abandoned")
        assert await state_of(store, kept["id"]) == "queued"
        status, body, _ = await take(system_http, dropped["id"], dropped["token"])
        assert status == 404 and "did not poll for 1s" in body["error"]["message"]
        row = await store.job_get(dropped["id"])
        assert row is not None and (row["state"], row["reason"]) == ("expired", "abandoned")
        # Once its client stops too, the other one goes the same way.
        await expired.wait(lambda e: str(e.job_id) == kept["id"])


async def test_held_reservation_nobody_takes_expires_and_frees_the_slot(
    system_http: aiohttp.ClientSession, store: Store, bus: Bus, system: Runtime
) -> None:
    await factories.pool(store, labels=["linux", "x86_64", "solo"])
    solo = agent(system.settings, bus, runner_id="solo", pool="default", labels=["solo"], slots=1)
    await solo.start()
    try:
        async with Listener(bus, bus.subjects.job_expired.any()) as expired:
            held = await submit(system_http, labels=["solo"], abandon_after_s=1.0)

            async def on_solo() -> bool:  # assigned there, at least: the start report may come after the expiry
                row = await store.job_get(held["id"])
                return row is not None and row["runner_id"] == "solo"

            await eventually(on_solo, what="the solo runner to hold the reservation")
            event = await expired.wait(lambda e: str(e.job_id) == held["id"], timeout=10)
            assert event.runner_id == "solo"
        # The slot it held is free again: the next job runs there.
        after = await submit(system_http, labels=["solo"], payload={"command": ["true"]})

        async def succeeded() -> bool:
            return await state_of(store, after["id"]) == "succeeded"

        await eventually(succeeded, what="the next job to run on the freed slot")
        assert await state_of(store, held["id"]) == "expired"
        row = await store.job_get(after["id"])
        assert row is not None and row["runner_id"] == "solo"
    finally:
        await solo.stop()


async def test_taken_reservation_does_not_expire(system_http: aiohttp.ClientSession, store: Store, bus: Bus) -> None:
    first = await submit(system_http, abandon_after_s=1.0, timeout_s=60)
    status, _, _ = await take(system_http, first["id"], first["token"], wait=10)
    assert status == 200
    async with Listener(bus, bus.subjects.job_expired.any()) as expired:
        # Submitted after the take, the untaken one expires when the taken one is past its
        # abandon_after_s too.
        second = await submit(system_http, abandon_after_s=1.0, timeout_s=60)
        await expired.wait(lambda e: str(e.job_id) == second["id"])
    assert [e.job_id for e in expired.events if str(e.job_id) == first["id"]] == []

    async def running() -> bool:  # taken once its runner acked: the start report may come later
        return await state_of(store, first["id"]) == "running"

    await eventually(running, what="the taken reservation to be running")
    await release(system_http, store, first["id"])
