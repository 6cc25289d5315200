"""`GET /v1/runners` and `GET /v1/rejections` a page at a time (`limit`, `after` = the previous
page's `next`): a walk from the first page to the last sees every row there was when it began
exactly once, in order, while rows are added meanwhile; bad values answer 422 naming them; the
OpenAPI document describes both parameters; the Python client walks every page."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.client import Client
from orchestrator.store import Rejection, Store
from tests import factories
from tests.support import call


async def walk(http: aiohttp.ClientSession, path: str, key: str, limit: int, between: Callable[[], Awaitable[Any]]):
    """Every page of `path` from the first, `between` awaited after each; the rows, and how many pages."""
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for pages in itertools.count(1):
        status, body = await call(http, "GET", path, params=params)
        assert status == 200, body
        assert len(body[key]) <= limit
        seen += body[key]
        if body["next"] is None:
            return seen, pages
        params["after"] = body["next"]
        await between()
    raise AssertionError("unreachable")


async def reject(store: Store, n: int, what: str) -> list[int]:
    async with store.transitions.admission([], []) as tx:
        await tx.record([Rejection("malformed", f"{what} {i}", body="{") for i in range(n)])
    async with store.connection() as conn:
        return [r["id"] for r in await conn.fetch("SELECT id FROM rejections WHERE message LIKE $1", f"{what} %")]


async def test_rejections_every_page_once_newest_first_while_more_arrive(
    http: aiohttp.ClientSession, store: Store
) -> None:
    there = await reject(store, 57, "before")
    added: list[int] = []

    async def more() -> None:  # a refusal recorded between two pages
        added.extend(await reject(store, 3, f"during {len(added)}"))

    seen, pages = await walk(http, "/v1/rejections", "rejections", 10, more)
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)), "a rejection was listed twice"
    assert ids == sorted(ids, reverse=True)  # newest first, across pages too
    assert sorted(set(ids) - set(added)) == sorted(there)  # every one there was, none missing
    assert pages == 6 and added  # 57 in pages of 10; the ones added meanwhile were newer than the walk
    # Filtered by reason, the same way.
    status, body = await call(http, "GET", "/v1/rejections", params={"reason": "malformed", "limit": 1000})
    assert status == 200 and len(body["rejections"]) == len(there) + len(added) and body["next"] is None


async def test_runners_every_page_once_in_id_order_while_more_register(
    http: aiohttp.ClientSession, store: Store
) -> None:
    await factories.pool(store)
    there = [f"r{i:02d}" for i in range(23)]
    for runner_id in there:
        await factories.runner(store, runner_id)
    added: list[str] = []

    async def more() -> None:  # runners registering between two pages, before and after the cursor
        for prefix in ("a", "z"):
            added.append(f"{prefix}{len(added):02d}")
            await factories.runner(store, added[-1])

    seen, pages = await walk(http, "/v1/runners", "runners", 5, more)
    ids = [r["id"] for r in seen]
    assert len(ids) == len(set(ids)), "a runner was listed twice"
    assert ids == sorted(ids)
    assert [i for i in ids if i not in added] == there
    assert pages >= 5
    assert all(r["busy"] == 0 and r["state"] == "active" for r in seen)


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/runners", {"limit": "0"}, "limit"),
        ("/v1/runners", {"limit": "1001"}, "limit"),
        ("/v1/runners", {"limit": "ten"}, "limit"),
        ("/v1/runners", {"after": "not a runner id"}, "after"),
        ("/v1/runners", {"after": "r" * 65}, "after"),
        ("/v1/rejections", {"limit": "-1"}, "limit"),
        ("/v1/rejections", {"after": "abc"}, "after"),
        ("/v1/rejections", {"after": "0"}, "after"),
        ("/v1/rejections", {"after": str(2**63)}, "after"),
    ],
)
async def test_a_bad_page_parameter_is_refused_naming_it(
    http: aiohttp.ClientSession, path: str, query: dict[str, str], field: str
) -> None:
    status, body = await call(http, "GET", path, params=query)
    assert status == 422, body
    assert body["error"]["field"] == field
    assert field in body["error"]["message"]


async def test_the_document_describes_the_page_parameters(http: aiohttp.ClientSession) -> None:
    status, doc = await call(http, "GET", "/openapi.json")
    assert status == 200
    for path, names in (("/v1/runners", {"limit", "after"}), ("/v1/rejections", {"reason", "limit", "after"})):
        op = doc["paths"][path]["get"]
        params = {p["name"]: p["schema"] for p in op["parameters"]}
        assert set(params) == names
        assert params["limit"]["maximum"] == 1000 and params["limit"]["default"] == 100
        assert "422" in op["responses"]
    schemas = doc["components"]["schemas"]
    assert "next" in schemas["RunnerList"]["properties"] and "next" in schemas["RejectionList"]["properties"]


async def test_the_client_lists_every_runner_across_pages(front: Runtime, store: Store) -> None:
    await factories.pool(store)
    ids = [f"r{i:04d}" for i in range(1005)]  # more than the API's largest page
    await asyncio.gather(*(factories.runner(store, runner_id) for runner_id in ids[:500]))
    await asyncio.gather(*(factories.runner(store, runner_id) for runner_id in ids[500:]))
    assert front.http_url is not None
    async with Client(front.http_url) as client:
        assert [r.id for r in await client.runners()] == ids
