"""Guarantee 8 at the HTTP door: every route that takes a body, fed bad bodies by hypothesis
against the real api and admission (real NATS, real Postgres). A body the route's model refuses
gets a 4xx whose JSON error says what was wrong, and no table changes; no body gets a 5xx."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from app.runtime import Runtime
from orchestrator.pools import change_pool
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.api import FinishBody
from schemas.jobs import JobSpec
from schemas.pools import PoolConfig
from schemas.runners import RunnerTaints
from tests.fuzz import FUZZ, bodies, count, dumps, every_field_spoiled, refuses
from tests.support import database_rows, submit

GHOST_JOB = "01a20789-382f-70f4-875f-e0c05fdb8cac"
# (method, path, the model that validates the body, a valid body to spoil)
DOORS: list[tuple[str, str, type[BaseModel], dict[str, Any]]] = [
    ("POST", "/v1/jobs", JobSpec, {"pool": "default", "payload": {"command": ["true"]}}),
    ("PUT", "/v1/pools/fuzzed", PoolConfig, {"max_concurrent": 2}),
    ("PATCH", "/v1/pools/default", PoolConfig, {"paused": False}),
    ("PUT", "/v1/runners/ghost/taints", RunnerTaints, {"taints": ["gpu"]}),
    ("POST", f"/v1/jobs/{GHOST_JOB}/finish", FinishBody, {"exit_code": 0}),
]


@pytest.fixture
async def default_pool(front: Runtime) -> None:
    assert front.store is not None and front.bus is not None
    await change_pool(front.store, front.bus, "default", config=PoolConfig(labels=["linux"]))


async def send(http: aiohttp.ClientSession, method: str, path: str, body: bytes) -> tuple[int, Any]:
    async with http.request(method, path, data=body, headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        assert resp.content_type == "application/json", (resp.status, raw[:200])
        return resp.status, json.loads(raw)


def assert_names_the_problem(status: int, answer: Any) -> None:
    assert 400 <= status < 500, (status, answer)
    error = answer["error"]
    assert error["code"] and error["message"], answer
    if error["field"]:  # the message starts from the field it blames
        assert error["field"].split(".")[0] in error["message"] or error["code"] != "invalid", answer


@pytest.mark.parametrize(("method", "path", "model", "base"), DOORS, ids=[f"{m} {p}" for m, p, _, _ in DOORS])
@FUZZ
@given(data=st.data())
@example(data=None)  # the regression cases below, once each
async def test_bad_bodies_are_refused_and_change_nothing(
    http: aiohttp.ClientSession,
    store: Store,
    settings: Settings,
    default_pool: None,
    method: str,
    path: str,
    model: type[BaseModel],
    base: dict[str, Any],
    data: st.DataObject | None,
) -> None:
    if data is None:
        cases = every_field_spoiled(base, list(model.model_fields))
        cases.append(dumps({**base, "pad": "a" * settings.api.max_body_bytes}))
        # JSON has no NaN, and Postgres's jsonb refuses it; 1e400 parses as infinity.
        cases.append(b'{"pool": "default", "payload": {"n": NaN, "m": [1e400]}}')
    else:
        cases = [data.draw(bodies(base, list(model.model_fields)), label="body")]
    for body in cases:
        count(f"http {method} {path}")
        before = await database_rows(store)
        status, answer = await send(http, method, path, body)
        assert status < 500, (status, answer, body[:200])
        if len(body) > settings.api.max_body_bytes:
            assert status == 413 and answer["error"]["code"] == "too_large", answer
            assert str(settings.api.max_body_bytes) in answer["error"]["message"], answer
        if refuses(model, body):  # an empty body too: every route that takes one refuses it without
            assert_names_the_problem(status, answer)
            assert await database_rows(store) == before, body[:200]


async def test_the_front_still_admits_after_the_fuzz(http: aiohttp.ClientSession, default_pool: None) -> None:
    """The same fixtures, no fuzz: the baseline the fuzz tests rely on (a valid job is admitted)."""
    job = await submit(http, payload={"command": ["true"]})
    assert job["state"] == "queued"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/pools/a%00b"),
        ("POST", "/v1/runners/a%00b/drain"),
        ("PUT", "/v1/runners/a%00b/taints"),
        ("POST", "/take/a%00b?token=t"),
        ("GET", "/v1/jobs?pool=a%00b"),
        ("GET", "/v1/jobs?key=a%00b"),
        ("GET", "/v1/rejections?reason=a%00b"),
        ("POST", "/profile/default/enqueue?unique_id=u&qualified_repo=a%00b&run_id=1"),
    ],
)
async def test_nul_in_a_path_or_query_is_refused_not_a_500(
    http: aiohttp.ClientSession, store: Store, default_pool: None, method: str, path: str
) -> None:
    count("http NUL in path or query")
    before = await database_rows(store)
    async with http.request(method, path, json={"taints": []}) as resp:
        assert 400 <= resp.status < 500 or resp.status == 200, (resp.status, await resp.text())
    assert await database_rows(store) == before
