"""Bad input through the HTTP door gets a clear error naming what was wrong, and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.pools import change_pool
from orchestrator.store import Store
from schemas.pools import PoolConfig
from services.api import Api
from tests import factories
from tests.support import call, database_rows


@pytest.fixture
async def http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


async def post(http: aiohttp.ClientSession, **kwargs: object) -> tuple[int, dict, aiohttp.typedefs.LooseHeaders]:
    async with http.post("/v1/jobs", **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json(), resp.headers


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "field"),
    [
        ({"data": b"{not json"}, 400, "malformed", None),
        ({"json": {"labels": []}}, 422, "invalid", "pool"),
        ({"json": {"pool": "default", "priority": "high"}}, 422, "invalid", "priority"),
        ({"json": {"pool": "default", "colour": "red"}}, 422, "invalid", "colour"),
        ({"json": {"pool": "default", "timeout_s": -1}}, 422, "invalid", "timeout_s"),
        ({"json": {"pool": "default", "timeout_s": 0}}, 422, "invalid", "timeout_s"),
        # JSON types as the document declares them: a string is not a number, nor true an integer.
        ({"json": {"pool": "default", "priority": "5"}}, 422, "invalid", "priority"),
        ({"json": {"pool": "default", "max_attempts": True}}, 422, "invalid", "max_attempts"),
        ({"json": {"pool": "default", "timeout_s": "30"}}, 422, "invalid", "timeout_s"),
        ({"json": {"pool": "default", "payload": {"command": "echo hi"}}}, 422, "invalid", "payload.command"),
        ({"json": {"pool": "default", "payload": {"env": {"A": 1}}}}, 422, "invalid", "payload.env"),
        ({"json": {"pool": "default", "payload": {"env": {"A=B": "1"}}}}, 422, "invalid", "payload.env"),
        ({"json": {"pool": "nowhere"}}, 422, "unsatisfiable", "pool"),
        ({"json": {"pool": "default", "labels": ["gpu"]}}, 422, "unsatisfiable", "labels"),
        ({"data": b"x" * 2_000_000}, 413, "too_large", None),
    ],
)
async def test_bad_submissions_are_refused_and_change_nothing(
    http: aiohttp.ClientSession, store: Store, kwargs: dict, status: int, code: str, field: str | None
) -> None:
    got_status, body, _ = await post(http, **kwargs)
    assert got_status == status, body
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert body["error"]["message"]
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []


async def test_a_bad_env_is_refused_naming_the_variable(http: aiohttp.ClientSession, store: Store) -> None:
    for env, named in (({"PATH": "/bin", "A=B": "1"}, "'A=B'"), ({"RETRIES": 3}, "'RETRIES'")):
        status, body, _ = await post(http, json={"pool": "default", "payload": {"command": ["env"], "env": env}})
        assert (status, body["error"]["field"]) == (422, "payload.env"), body
        assert named in body["error"]["message"], body
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []


async def test_every_route_that_takes_a_body_refuses_a_request_without_one(front: Runtime, store: Store) -> None:
    """A PUT with no body used to replace a pool with every default (the default pool lost its
    labels); now every route whose table row declares a body answers 400 without one, and
    nothing changes. The routes are read from the route table, so a new one is covered too."""
    assert front.store is not None and front.bus is not None
    await change_pool(front.store, front.bus, "default", config=PoolConfig(labels=["linux"], max_concurrent=3))
    await factories.runner(front.store, "r1", labels=["linux"])
    [job] = await factories.queue(front.store)
    api = front.services["api"]
    assert isinstance(api, Api)
    ids = {"{id}": str(job), "{name}": "default", "{key}": "deploys"}
    routes = [r for r in api.routes if r.body is not None]
    assert {r.key for r in routes} >= {("PUT", "/v1/pools/{name}"), ("PUT", "/v1/runners/{id}/taints")}
    before = await database_rows(store)
    answers = {}
    async with aiohttp.ClientSession(base_url=front.http_url) as http:
        for route in routes:
            path = route.path.replace("/v1/runners/{id}", "/v1/runners/r1")
            for placeholder, value in ids.items():
                path = path.replace(placeholder, value)
            for sent in ({}, {"data": b""}, {"data": b"  ", "headers": {"Content-Type": "application/json"}}):
                answers[route.key, repr(sent)] = await call(http, route.method, path, **sent)
    assert await database_rows(store) == before
    accepted = {key: answer for key, (status, answer) in answers.items() if status != 400}
    assert not accepted, accepted
    for _, answer in answers.values():
        assert answer["error"]["code"] == "malformed" and "needs a JSON body" in answer["error"]["message"], answer


async def test_repeated_key_returns_the_job_and_another_body_conflicts(http: aiohttp.ClientSession) -> None:
    spec = {"pool": "default", "key": "k1", "payload": {}}
    first_status, first, _ = await post(http, json=spec)
    again_status, again, _ = await post(http, json=spec)
    assert (first_status, again_status) == (201, 200)
    assert again["id"] == first["id"]
    status, body, _ = await post(http, json={**spec, "priority": 5})
    assert status == 409
    assert body["error"]["code"] == "conflict" and body["error"]["field"] == "key"


async def test_unknown_job_is_404(http: aiohttp.ClientSession) -> None:
    for job_id in ("01a20789-382f-70f4-875f-e0c05fdb8cac", "not-a-uuid"):
        async with http.get(f"/v1/jobs/{job_id}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
