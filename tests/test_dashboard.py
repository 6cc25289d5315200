"""The dashboard at GET /: a plain page served by the api, and every JSON endpoint its script
polls answers with what the page draws."""

from __future__ import annotations

import re

import aiohttp

from orchestrator.runtime import Runtime


async def test_dashboard_page_and_the_endpoints_it_polls(http: aiohttp.ClientSession, system: Runtime) -> None:
    async with http.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert "<title>orchestrator</title>" in page
    for table in ("pools", "runners", "jobs"):
        assert f'<table id="{table}">' in page
    # The paths the script fetches, read from the page itself so the two cannot drift apart.
    polled = re.findall(r'"(/v1/[a-z]+(?:\?[^"]*)?)"', page)
    assert set(polled) == {"/v1/pools", "/v1/stats", "/v1/runners", "/v1/leader", "/v1/jobs?limit=25"}

    async with http.post("/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}}) as resp:
        job = await resp.json()
    bodies = {}
    for path in polled:
        async with http.get(path) as resp:
            assert resp.status == 200, path
            bodies[path] = await resp.json()
    assert [p["name"] for p in bodies["/v1/pools"]["pools"]] == ["default"]
    [stats] = bodies["/v1/stats"]["pools"]
    assert stats["pool"] == "default" and stats["max_concurrent"] == 20
    assert {"queued", "in_flight", "free", "oldest_queued_s"} <= set(stats)
    [runner] = bodies["/v1/runners"]["runners"]
    assert runner["slots"] == system.settings.runner_slots and "busy" in runner
    assert bodies["/v1/leader"]["holder"] == system.settings.instance_id
    assert job["id"] in [j["id"] for j in bodies["/v1/jobs?limit=25"]["jobs"]]
