"""`DELETE /v1/pools/{name}`: refused (409, saying what uses it, nothing changed) while the pool
has jobs queued, assigned or running or runners that are not lost; then the pool goes, with its
ended jobs and lost runners, and other pools are untouched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp

from app.runtime import Runtime
from orchestrator.store import Store
from tests import factories
from tests.support import call, database_rows, submit


async def test_a_pool_with_live_jobs_is_kept_and_an_unused_one_deleted(
    http: aiohttp.ClientSession, store: Store
) -> None:
    for name in ("gpu", "other"):
        assert (await call(http, "PUT", f"/v1/pools/{name}", json={"labels": ["gpu"]}))[0] == 201
    queued = [await submit(http, pool="gpu", key=f"k{i}") for i in range(2)]  # no dispatcher: they wait
    kept = await submit(http, pool="other")
    before = await database_rows(store)

    status, body = await call(http, "DELETE", "/v1/pools/gpu")
    assert status == 409, body
    assert (body["error"]["code"], body["error"]["field"]) == ("in_use", "name")
    assert "2 live jobs (2 queued, 0 assigned, 0 running)" in body["error"]["message"]
    assert await database_rows(store) == before

    # Ended jobs do not hold it: they go with it.
    for job in queued:
        assert (await call(http, "DELETE", f"/v1/jobs/{job['id']}"))[0] == 200
    status, deleted = await call(http, "DELETE", "/v1/pools/gpu")
    assert status == 200, deleted
    assert (deleted["name"], deleted["labels"], deleted["deleted_jobs"]) == ("gpu", ["gpu"], 2)
    assert (await call(http, "GET", "/v1/pools/gpu"))[0] == 404
    assert [(await call(http, "GET", f"/v1/jobs/{job['id']}"))[0] for job in queued] == [404, 404]
    status, body = await call(http, "DELETE", "/v1/pools/gpu")
    assert (status, body["error"]["code"], body["error"]["field"]) == (404, "not_found", "name")

    # The other pool and its job are as they were; a job for the deleted pool is refused.
    assert (await call(http, "GET", f"/v1/jobs/{kept['id']}"))[1]["state"] == "queued"
    assert (await call(http, "GET", "/v1/pools/other"))[0] == 200
    status, body = await call(http, "POST", "/v1/jobs", json={"pool": "gpu"})
    assert (status, body["error"]["code"]) == (422, "unsatisfiable")


async def test_a_pool_deleted_and_created_again_admits_the_same_jobs(http: aiohttp.ClientSession) -> None:
    """Admission remembers the shapes it made (a job's pool, labels, tenant): the deletion took
    the old pool's with it, and the new pool gets its own."""
    for attempt in range(2):
        assert (await call(http, "PUT", "/v1/pools/gpu", json={"labels": ["gpu"]}))[0] == 201
        job = await submit(http, pool="gpu", labels=["gpu"], tenant="t", key=f"k{attempt}")
        assert (await call(http, "DELETE", f"/v1/jobs/{job['id']}"))[0] == 200
        assert (await call(http, "DELETE", "/v1/pools/gpu"))[0] == 200


async def test_a_pool_with_a_live_runner_is_kept_until_the_runner_is_lost(
    http: aiohttp.ClientSession, store: Store
) -> None:
    assert (await call(http, "PUT", "/v1/pools/fleet", json={}))[0] == 201
    await factories.runner(store, "r1", pool="fleet")
    status, body = await call(http, "DELETE", "/v1/pools/fleet")
    assert status == 409, body
    assert "1 live runner (r1): stop it first" in body["error"]["message"]

    await store.transitions.mark_runners_lost(0, now=datetime.now(UTC) + timedelta(seconds=1))
    status, deleted = await call(http, "DELETE", "/v1/pools/fleet")
    assert (status, deleted["deleted_jobs"]) == (200, 0)
    assert await store.runner_get("r1") is None


async def test_default_is_deleted_like_any_pool_in_use_by_ups_runner(system: Runtime) -> None:
    """`up`'s local runner serves `default`: while it lives, the pool is in use."""
    async with aiohttp.ClientSession(base_url=system.http_url) as http:
        status, body = await call(http, "DELETE", "/v1/pools/default")
    assert status == 409, body
    assert "1 live runner" in body["error"]["message"]


async def test_the_route_is_in_the_openapi_document(http: aiohttp.ClientSession) -> None:
    _, document = await call(http, "GET", "/openapi.json")
    op = document["paths"]["/v1/pools/{name}"]["delete"]
    assert set(op["responses"]) == {"200", "404", "409"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PoolDeleted")
