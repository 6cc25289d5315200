"""Rate limits listed and deleted over HTTP, with admission and the api only (claims are made by
the test): the list by key, a delete answering what it lifted and 404 for a key not set, new
jobs naming a deleted key refused at the door, a job queued behind an exhausted limit claimable
once it is deleted, and who may do what with auth on."""

from __future__ import annotations

import aiohttp

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests import factories
from tests.integration.test_flow_admission import claimed_ids
from tests.support import call, database_rows, submit, with_tokens


async def test_rate_limits_are_listed_by_key_and_deleted(http: aiohttp.ClientSession, store: Store) -> None:
    assert (await call(http, "GET", "/v1/rate-limits")) == (200, {"rate_limits": []})
    for key, limit in (("search", 5), ("api", 10), ("mail", 1)):
        assert (await call(http, "PUT", f"/v1/rate-limits/{key}", json={"limit": limit, "period_s": 60}))[0] == 201
    status, listed = await call(http, "GET", "/v1/rate-limits")
    assert status == 200 and [r["key"] for r in listed["rate_limits"]] == ["api", "mail", "search"]
    # Each as the single GET shows it.
    assert listed["rate_limits"][0] == (await call(http, "GET", "/v1/rate-limits/api"))[1]

    status, deleted = await call(http, "DELETE", "/v1/rate-limits/mail")
    assert status == 200 and (deleted["key"], deleted["deleted"]) == ("mail", True)
    assert (deleted["rate_limit"]["limit"], deleted["rate_limit"]["period_s"]) == (1, 60)
    status, listed = await call(http, "GET", "/v1/rate-limits")
    assert [r["key"] for r in listed["rate_limits"]] == ["api", "search"]
    assert (await call(http, "GET", "/v1/rate-limits/mail"))[0] == 404

    before = await database_rows(store)
    for path in ("/v1/rate-limits/mail", "/v1/rate-limits/never-set", "/v1/rate-limits/not%20a%20key"):
        status, answer = await call(http, "DELETE", path)
        assert (status, answer["error"]["code"], answer["error"]["field"]) == (404, "not_found", "key"), answer
    assert "'never-set'" in (await call(http, "DELETE", "/v1/rate-limits/never-set"))[1]["error"]["message"]
    assert await database_rows(store) == before


async def test_a_deleted_limit_frees_its_queued_jobs_and_refuses_new_ones(
    http: aiohttp.ClientSession, store: Store
) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=4)
    assert (await call(http, "PUT", "/v1/rate-limits/hourly", json={"limit": 1, "period_s": 3600}))[0] == 201
    first, second = await submit(http, rate_limit_key="hourly"), await submit(http, rate_limit_key="hourly")
    step = await store.transitions.claim("default", 10)
    assert claimed_ids(step) == [first["id"]] and step.held_by_rate == 1  # the hour's start is spent

    assert (await call(http, "DELETE", "/v1/rate-limits/hourly"))[0] == 200
    # The claim reads a missing key as no limit: the job behind it starts now, not in an hour.
    step = await store.transitions.claim("default", 10)
    assert claimed_ids(step) == [second["id"]] and step.held_by_rate == 0

    # New jobs naming it are refused at the door until it is set again.
    status, answer = await call(http, "POST", "/v1/jobs", json={"pool": "default", "rate_limit_key": "hourly"})
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (422, "unsatisfiable", "rate_limit_key")
    assert (await call(http, "PUT", "/v1/rate-limits/hourly", json={"limit": 1, "period_s": 3600}))[0] == 201
    assert (await submit(http, rate_limit_key="hourly"))["rate_limit_key"] == "hourly"


async def test_any_role_lists_only_the_operator_deletes(settings: Settings, store: Store) -> None:
    tokens = {"producer_tokens": "p1", "runner_tokens": "r1", "operator_tokens": "o1"}
    runtime = Runtime(with_tokens(settings, **tokens), ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:

            def bearer(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            body = {"limit": 1, "period_s": 1}
            assert (await call(http, "PUT", "/v1/rate-limits/api", json=body, headers=bearer("o1")))[0] == 201
            for token in ("p1", "r1", "o1"):
                status, listed = await call(http, "GET", "/v1/rate-limits", headers=bearer(token))
                assert status == 200 and [r["key"] for r in listed["rate_limits"]] == ["api"]
            assert (await call(http, "GET", "/v1/rate-limits"))[0] == 401
            for token in ("p1", "r1"):
                status, answer = await call(http, "DELETE", "/v1/rate-limits/api", headers=bearer(token))
                assert (status, answer["error"]["code"]) == (403, "forbidden")
            assert (await call(http, "DELETE", "/v1/rate-limits/api"))[0] == 401
            assert await store.rate_limit_get("api") is not None  # refused: still there
            assert (await call(http, "DELETE", "/v1/rate-limits/api", headers=bearer("o1")))[0] == 200
            assert await store.rate_limit_get("api") is None
    finally:
        await runtime.stop()
