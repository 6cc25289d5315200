"""Bad input through the HTTP door gets a clear error naming what was wrong, and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.store import Store


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
