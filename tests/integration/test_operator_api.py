"""The operator API and its contract: `/openapi.json` generated from the models that validate the
bodies, drain, finish, queue depth, and bearer-token auth with roles."""

from __future__ import annotations

from typing import Any

import aiohttp

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.api import FinishBody
from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from services.api import Api
from tests import factories
from tests.support import call, eventually, with_tokens


async def test_openapi_describes_every_route_with_the_validating_models(
    system_http: aiohttp.ClientSession, system: Runtime
) -> None:
    status, doc = await call(system_http, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    api = system.services["api"]
    assert isinstance(api, Api)
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in api.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    schemas = doc["components"]["schemas"]
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/JobSpec"
    for model in (JobSpec, PoolConfig, FinishBody):
        assert schemas[model.__name__]["properties"].keys() == model.model_json_schema()["properties"].keys()
    take = doc["paths"]["/v1/jobs/{id}/take"]["post"]
    assert {p["name"] for p in take["parameters"]} == {"id", "token", "wait"}
    assert set(take["responses"]) == {"200", "403", "404", "422", "503"}
    assert doc["paths"]["/v1/pools/{name}"]["put"]["x-roles"] == ["operator"]


async def test_drain_finish_and_queue_depth(system_http: aiohttp.ClientSession, store: Store, system: Runtime) -> None:
    runner_id = system.services["runner"].runner_id  # type: ignore[attr-defined]
    await factories.pool(store, labels=["linux", "x86_64"], max_concurrent=1)
    # A reservation held by the local runner; its client ends it with an exit code.
    status, held = await call(system_http, "POST", "/v1/jobs", json={"pool": "default"})
    assert status == 201
    take = {"token": held["token"], "wait": "10"}
    assert (await call(system_http, "POST", f"/v1/jobs/{held['id']}/take", params=take))[0] == 200

    async def running() -> bool:  # a take answers once the runner acked; it reports the start after
        row = await store.job_get(held["id"])
        return row is not None and row["state"] == "running"

    await eventually(running, what="the runner to report the reservation started")
    status, waiting = await call(
        system_http, "POST", "/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}}
    )
    status, depth = await call(system_http, "GET", "/v1/queue")
    assert status == 200 and {"pool": "default", "queued": 1, "assigned": 0, "running": 1} in depth["pools"]
    finish = f"/v1/jobs/{held['id']}/finish"
    mine = {"token": held["token"]}
    for body, field in (({}, None), ({"exit_code": 0, "outcome": "failed"}, None), ({"exit_code": "x"}, "exit_code")):
        status, error = await call(system_http, "POST", finish, json=body, params=mine)
        assert (status, error["error"]["code"], error["error"]["field"]) == (422, "invalid", field), error
    # Only its client (the take token) or an operator may free the slot; a job with a command
    # ends when its command does.
    for params in ({}, {"token": "not-the-token"}):
        status, error = await call(system_http, "POST", finish, json={"exit_code": 0}, params=params)
        assert (status, error["error"]["code"], error["error"]["field"]) == (403, "forbidden", "token"), error
    waiting_finish = f"/v1/jobs/{waiting['id']}/finish"
    status, error = await call(
        system_http, "POST", waiting_finish, json={"exit_code": 0}, params={"token": waiting["token"]}
    )
    assert (status, error["error"]["code"]) == (409, "not_reservation")
    status, ended = await call(system_http, "POST", finish, json={"exit_code": 3}, params=mine)
    assert status == 200 and (ended["state"], ended["exit_code"]) == ("failed", 3)
    assert ended["timeout_s"] == 3600  # a reservation without timeout_s takes its pool's reservation_timeout_s
    status, error = await call(system_http, "POST", finish, json={"outcome": "succeeded"}, params=mine)
    assert (status, error["error"]["code"]) == (409, "not_held")

    async def succeeded() -> bool:  # the freed slot is used at once
        row = await store.job_get(waiting["id"])
        return row is not None and row["state"] == "succeeded"

    await eventually(succeeded, what="the waiting job to run in the freed slot")
    row = await store.job_get(held["id"])
    assert row is not None and row["state"] == "failed"  # the runner's late report changed nothing

    # A drained runner keeps its state across heartbeats and is given nothing more.
    status, drained = await call(system_http, "POST", f"/v1/runners/{runner_id}/drain")
    assert (status, drained["state"]) == (200, "draining")
    status, job = await call(
        system_http, "POST", "/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}}
    )

    async def blocked() -> dict[str, Any] | None:
        _, got = await call(system_http, "GET", f"/v1/jobs/{job['id']}")
        return got["blocked_by"] if got["blocked_by"] and got["blocked_by"]["reason"] == "no_free_runner" else None

    assert (await eventually(blocked, what="blocked_by"))["constraints"][0]["numbers"]["matching"] == 0
    status, runners = await call(system_http, "GET", "/v1/runners")
    assert [r["state"] for r in runners["runners"] if r["id"] == runner_id] == ["draining"]
    assert (await call(system_http, "POST", "/v1/runners/nobody/drain"))[0] == 404


async def test_auth_roles(settings: Settings, store: Store) -> None:
    await factories.pool(store)
    tokens = {"producer_tokens": "p1,p2", "runner_tokens": "r1", "operator_tokens": "o1"}
    runtime = Runtime(with_tokens(settings, **tokens), ["admission", "api"], migrate=True)
    await runtime.start()

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as system_http:
            status, body = await call(system_http, "POST", "/v1/jobs", json={"pool": "default"})
            assert (status, body["error"]["code"]) == (401, "unauthorized")
            status, body = await call(system_http, "POST", "/v1/jobs", json={"pool": "default"}, headers=bearer("nope"))
            assert (status, body["error"]["code"]) == (403, "forbidden")
            status, body = await call(system_http, "POST", "/v1/jobs", json={"pool": "default"}, headers=bearer("r1"))
            assert status == 403 and "role 'runner' may not POST /v1/jobs" in body["error"]["message"]
            assert await store.job_list(pool=None, state=None, key=None, limit=10) == []  # refused: nothing made

            status, job = await call(system_http, "POST", "/v1/jobs", json={"pool": "default"}, headers=bearer("p2"))
            assert status == 201
            assert (await call(system_http, "GET", f"/v1/jobs/{job['id']}", headers=bearer("r1")))[0] == 200
            assert (await call(system_http, "GET", "/v1/pools", headers=bearer("p1")))[0] == 200
            assert (await call(system_http, "PATCH", "/v1/pools/default", json={}, headers=bearer("p1")))[0] == 403
            assert (await call(system_http, "PATCH", "/v1/pools/default", json={"paused": True}, headers=bearer("o1")))[
                0
            ] == 200
            # Public: health, the contract, and the take (its own token is its credential).
            for path in ("/healthz", "/openapi.json"):
                assert (await call(system_http, "GET", path))[0] == 200
            take = f"/v1/jobs/{job['id']}/take"
            assert (await call(system_http, "POST", take, params={"token": "wrong"}))[0] == 403
            assert (await call(system_http, "POST", take, params={"token": job["token"]}))[0] == 503
            async with system_http.post(
                "/profile/default/enqueue", params={"unique_id": "u", "qualified_repo": "r", "run_id": "1"}
            ) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    finally:
        await runtime.stop()
