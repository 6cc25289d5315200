"""Servo's wire format (seed 003): its enqueue and take endpoints answer as Servo's queue does, and
the seed's own `curl --retry` command line gets a runner once capacity frees."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.store import Store
from services.runner import Runner
from tests import factories
from tests.support import agent, eventually

PROFILE = "servo-windows10"
# The seed's command line, as Servo's runner-select client sends it, with its server replaced.
SEED_COMMAND = (
    "unique_id=$RANDOM; curl --fail-with-body -sSX POST --retry-max-time 3600 --retry 3600 --retry-delay 1"
    " 'http://192.168.100.1:8002/take/'\"$unique_id\"'?token='\"$(curl --fail-with-body -sSX POST"
    ' --oauth2-bearer "$SERVO_CI_MONITOR_API_TOKEN"'
    " 'http://192.168.100.1:8002/profile/servo-windows10/enqueue?unique_id='\"$unique_id\"'"
    "&qualified_repo=delan/servo&run_id=123')\""
)


@pytest.fixture
async def windows(system: Runtime, store: Store, bus: Bus) -> AsyncIterator[Runner]:
    """Servo's profile as a pool with one slot, and a runner serving it."""
    await factories.pool(store, PROFILE, max_concurrent=1)
    runner = agent(system.settings, bus, runner_id="win-1", pool=PROFILE, labels=[], slots=1)
    await runner.start()
    yield runner
    await runner.stop()


async def enqueue(
    system_http: aiohttp.ClientSession, unique_id: str, pool: str = PROFILE, **params: str
) -> tuple[int, str]:
    query = {"unique_id": unique_id, "qualified_repo": "delan/servo", "run_id": "123", **params}
    async with system_http.post(f"/profile/{pool}/enqueue", params=query) as resp:
        return resp.status, await resp.text()


async def servo_take(
    system_http: aiohttp.ClientSession, unique_id: str, token: str, **params: str
) -> tuple[int, str, Any]:
    async with system_http.post(f"/take/{unique_id}", params={"token": token, **params}) as resp:
        return resp.status, await resp.text(), resp.headers


async def jobs_in(store: Store, pool: str) -> list[dict[str, Any]]:
    return await store.job_list(pool=pool, state=None, key=None, limit=100)


async def test_enqueue_and_take_answer_as_servo_does(
    system_http: aiohttp.ClientSession, store: Store, windows: Runner
) -> None:
    status, token = await enqueue(system_http, "u-1")
    assert status == 200 and token and "\n" not in token
    [job] = await jobs_in(store, PROFILE)
    assert job["payload"] == {"servo": {"unique_id": "u-1", "qualified_repo": "delan/servo", "run_id": "123"}}
    assert job["abandon_after_s"] == 30

    assert (await enqueue(system_http, "u-1"))[0] == 409  # already waiting
    assert (await servo_take(system_http, "nobody", token))[0] == 404
    status, body, _ = await servo_take(system_http, "u-1", "wrong")
    assert (status, body) == (403, "Bad token: 'u-1'\n")
    status, body, _ = await servo_take(system_http, "u-1", token, wait="10")
    assert status == 200, body
    runner = json.loads(body)
    assert (runner["id"], runner["pool"]) == ("win-1", PROFILE) and runner["metadata"]["hostname"]

    # The one slot is held: the next one waits (503 + Retry-After), and gets it when it frees.
    status, second = await enqueue(system_http, "u-2")
    assert status == 200
    status, body, headers = await servo_take(system_http, "u-2", second)
    assert (status, body, headers["Retry-After"]) == (503, "", "1")  # no body: curl's output stays JSON
    async with system_http.delete(f"/v1/jobs/{job['id']}") as resp:
        assert resp.status in (200, 202)  # assigned and acked, or started: held either way
    status, body, _ = await servo_take(system_http, "u-2", second, wait="10")
    assert status == 200 and json.loads(body)["id"] == "win-1"
    # The first one has ended: its unique_id is unknown again, and free to enqueue anew.
    assert (await servo_take(system_http, "u-1", token))[0] == 404
    [again] = [j for j in await jobs_in(store, PROFILE) if j["state"] in ("assigned", "running")]
    async with system_http.delete(f"/v1/jobs/{again['id']}") as resp:
        # Held since its runner acked it: cancelled at once while still `assigned` (200), or
        # asked of the runner once it has started it (202); the take does not wait for the start.
        assert resp.status in (200, 202)


@pytest.mark.parametrize(
    ("pool", "params", "status", "says"),
    [
        ("nowhere", {}, 422, "pool 'nowhere' does not exist"),
        (PROFILE, {"unique_id": ""}, 422, "unique_id is required"),
        (PROFILE, {"run_id": ""}, 422, "run_id is required"),
        ("bad name!", {}, 422, "profile: pool"),
    ],
)
async def test_bad_enqueues_are_refused_and_change_nothing(
    system_http: aiohttp.ClientSession, store: Store, windows: Runner, pool: str, params: dict, status: int, says: str
) -> None:
    params = dict(params)
    got, body = await enqueue(system_http, params.pop("unique_id", "u-9"), pool, **params)
    assert got == status and says in body, body
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []


async def test_unsatisfiable_profile_is_refused(system_http: aiohttp.ClientSession, store: Store) -> None:
    await factories.pool(store, "nothing-runs", max_concurrent=0)
    status, body = await enqueue(system_http, "u-1", "nothing-runs")
    assert status == 422 and "max_concurrent = 0" in body


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash")
async def test_the_seeds_curl_loop_gets_a_runner_once_capacity_frees(
    system_http: aiohttp.ClientSession, store: Store, windows: Runner, system: Runtime
) -> None:
    # Someone else holds the profile's only slot.
    status, token = await enqueue(system_http, "holder")
    assert status == 200
    assert (await servo_take(system_http, "holder", token, wait="10"))[0] == 200
    [holder] = await jobs_in(store, PROFILE)

    command = SEED_COMMAND.replace("http://192.168.100.1:8002", str(system.http_url))
    env = {**os.environ, "SERVO_CI_MONITOR_API_TOKEN": "unused-while-auth-is-off"}
    curl = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def enqueued_and_polling() -> bool:
            jobs = [j for j in await jobs_in(store, PROFILE) if j["id"] != holder["id"]]
            return bool(jobs) and jobs[0]["last_polled_at"] is not None

        await eventually(enqueued_and_polling, what="curl to enqueue and poll")
        assert curl.returncode is None  # still retrying: no capacity yet
        async with system_http.delete(f"/v1/jobs/{holder['id']}") as resp:
            assert resp.status == 202
        stdout, stderr = await asyncio.wait_for(curl.communicate(), 20)
    finally:
        if curl.returncode is None:
            curl.kill()
            await curl.wait()
    assert curl.returncode == 0, stderr
    runner = json.loads(stdout)
    assert (runner["id"], runner["pool"]) == ("win-1", PROFILE)
    [taken] = [j for j in await jobs_in(store, PROFILE) if j["state"] in ("assigned", "running")]
    assert taken["payload"]["servo"]["run_id"] == "123" and taken["taken_at"] is not None
    async with system_http.delete(f"/v1/jobs/{taken['id']}") as resp:
        assert resp.status == 202
