"""Ownership (issue 21): a producer token bound to a tenant (`ORCH_TENANT_TOKENS`) submits that
tenant's jobs only, and sees, lists, follows and cancels no other tenant's: another tenant's job
answers as a job that does not exist. An unbound producer token and the operator see them all."""

from __future__ import annotations

from typing import Any

import aiohttp

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests import factories
from tests.support import call, with_tokens

TOKENS = {"tenant_tokens": "acme=acme-secret,globex=globex-secret", "producer_tokens": "any", "operator_tokens": "op"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_tenants_token_owns_its_tenants_jobs_and_no_others(settings: Settings, store: Store) -> None:
    await factories.pool(store)
    runtime = Runtime(with_tokens(settings, **TOKENS), ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:

            async def submit(token: str, **spec: Any) -> tuple[int, Any]:
                return await call(http, "POST", "/v1/jobs", json={"pool": "default", **spec}, headers=bearer(token))

            # A bound token's job is its tenant's, named or not; naming another is refused, unmade.
            status, acme = await submit("acme-secret")
            assert status == 201 and acme["tenant"] == "acme"
            status, named = await submit("acme-secret", tenant="acme", key="named")
            assert status == 201 and named["tenant"] == "acme"
            status, body = await submit("acme-secret", tenant="globex", key="forged")
            assert (status, body["error"]["field"]) == (403, "tenant")
            assert await store.job_list(pool=None, state=None, key="forged", limit=1) == []
            status, globex = await submit("globex-secret")
            assert status == 201 and globex["tenant"] == "globex"

            # Each sees its own only: listed, read, its logs, cancelled; another's is a 404.
            for token, mine, theirs in (("acme-secret", acme, globex), ("globex-secret", globex, acme)):
                status, listed = await call(http, "GET", "/v1/jobs", headers=bearer(token))
                assert status == 200 and {j["tenant"] for j in listed["jobs"]} == {mine["tenant"]}
                assert (await call(http, "GET", f"/v1/jobs/{mine['id']}", headers=bearer(token)))[0] == 200
                for method, path in (("GET", ""), ("GET", "/logs"), ("DELETE", "")):
                    status, body = await call(http, method, f"/v1/jobs/{theirs['id']}{path}", headers=bearer(token))
                    assert (status, body["error"]["code"]) == (404, "not_found"), (method, path, body)
            assert (await store.job_get(globex["id"]))["state"] == "queued"  # type: ignore[index]
            assert (await call(http, "DELETE", f"/v1/jobs/{acme['id']}", headers=bearer("acme-secret")))[0] == 200

            # Unbound: the producer token and the operator see every tenant's jobs.
            for token in ("any", "op"):
                status, listed = await call(http, "GET", "/v1/jobs", headers=bearer(token))
                assert {j["tenant"] for j in listed["jobs"]} == {"acme", "globex"}
                assert (await call(http, "GET", f"/v1/jobs/{globex['id']}", headers=bearer(token)))[0] == 200
    finally:
        await runtime.stop()


async def test_a_tenants_token_schedules_its_tenants_jobs_and_sees_no_others_schedules(
    settings: Settings, store: Store
) -> None:
    await factories.pool(store)
    runtime = Runtime(with_tokens(settings, **TOKENS), ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            nightly = {"cron": "0 3 * * *", "job": {"pool": "default"}}
            status, made = await call(http, "PUT", "/v1/schedules/nightly", json=nightly, headers=bearer("acme-secret"))
            assert status == 201 and made["job"]["tenant"] == "acme"  # its jobs will be acme's
            forged = {"cron": "0 3 * * *", "job": {"pool": "default", "tenant": "globex"}}
            status, body = await call(http, "PUT", "/v1/schedules/other", json=forged, headers=bearer("acme-secret"))
            assert (status, body["error"]["field"]) == (403, "job.tenant")
            # Another tenant: not listed, not read, not deleted, not replaced.
            globex = bearer("globex-secret")
            assert (await call(http, "GET", "/v1/schedules", headers=globex))[1]["schedules"] == []
            for method in ("GET", "DELETE"):
                assert (await call(http, method, "/v1/schedules/nightly", headers=globex))[0] == 404
            status, body = await call(http, "PUT", "/v1/schedules/nightly", json=nightly, headers=globex)
            assert (status, body["error"]["field"]) == (403, "name")
            listed = (await call(http, "GET", "/v1/schedules", headers=bearer("op")))[1]["schedules"]
            assert [(s["name"], s["job"]["tenant"]) for s in listed] == [("nightly", "acme")]
    finally:
        await runtime.stop()
