"""The dashboard at GET /: a plain page served by the api, and every JSON endpoint its script
polls answers with what the page draws. Where Debian's `chromium` is installed, a headless
browser also loads the page and sees a job change state (not installable by `make`: skipped
elsewhere)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.settings import Settings
from tests.support import eventually, with_tokens

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def test_dashboard_page_and_the_endpoints_it_polls(system_http: aiohttp.ClientSession, system: Runtime) -> None:
    async with system_http.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert "<title>orchestrator</title>" in page
    for table in ("shards", "pools", "schedules", "runners", "jobs"):
        assert f'<table id="{table}">' in page
    # The paths the script fetches, read from the page itself so the two cannot drift apart.
    polled = re.findall(r'"(/v1/[a-z]+(?:\?[^"]*)?)"', page)
    assert set(polled) == {"/v1/pools", "/v1/stats", "/v1/runners", "/v1/leader", "/v1/jobs?limit=25", "/v1/schedules"}

    async with system_http.post("/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}}) as resp:
        job = await resp.json()
    bodies = {}
    for path in polled:
        async with system_http.get(path) as resp:
            assert resp.status == 200, path
            bodies[path] = await resp.json()
    assert [p["name"] for p in bodies["/v1/pools"]["pools"]] == ["default"]
    [stats] = bodies["/v1/stats"]["pools"]
    assert stats["pool"] == "default" and stats["max_concurrent"] == 20
    assert {"queued", "in_flight", "free", "oldest_queued_s", "held_by_key", "held_by_rate"} <= set(stats)
    [runner] = bodies["/v1/runners"]["runners"]
    assert runner["slots"] == system.settings.runner_slots and "busy" in runner
    assert bodies["/v1/leader"]["holder"] == system.settings.instance_id
    [shard] = bodies["/v1/leader"]["shards"]
    assert (shard["shard"], shard["lease"]["holder"], shard["pools"]) == ("all", system.settings.instance_id, 1)
    assert bodies["/v1/pools"]["pools"][0]["dispatch_shard"] == "all"
    assert job["id"] in [j["id"] for j in bodies["/v1/jobs?limit=25"]["jobs"]]
    assert bodies["/v1/schedules"] == {"schedules": []}


async def rendered(url: str) -> str:
    """The page's DOM after its script has polled a few times, as headless Chromium sees it."""
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--virtual-time-budget=3000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


def job_state(dom: str, job_id: str) -> str | None:
    match = re.search(rf'<tr data-job="{job_id}">.*?<span class="state [a-z_]+">([a-z_]+)</span>', dom, re.S)
    return match.group(1) if match else None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
async def test_a_browser_sees_the_pool_and_a_job_change_state(
    system_http: aiohttp.ClientSession, system: Runtime
) -> None:
    url = f"{system.http_url}/"
    async with system_http.patch("/v1/pools/default", json={"paused": True}) as resp:
        assert resp.status == 200
    async with system_http.post("/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}}) as resp:
        job = await resp.json()
    schedule = {"cron": "0 3 * * *", "timezone": "Europe/Berlin", "job": {"pool": "default"}}
    async with system_http.put("/v1/schedules/nightly", json=schedule) as resp:
        assert resp.status == 201
    dom = await rendered(url)
    assert '<tr data-pool="default">' in dom and "paused" in dom
    shard = re.search(r'<tr data-shard="all">(.*?)</tr>', dom, re.S)
    assert shard is not None and system.settings.instance_id in shard.group(1)
    assert job_state(dom, job["id"]) == "queued"
    row = re.search(r'<tr data-schedule="nightly">(.*?)</tr>', dom, re.S)
    assert row is not None and "<code>0 3 * * *</code>" in row[1] and "Europe/Berlin" in row[1], dom

    async with system_http.patch("/v1/pools/default", json={"paused": False}) as resp:
        assert resp.status == 200

    async def succeeded() -> dict[str, Any] | None:
        async with system_http.get(f"/v1/jobs/{job['id']}") as resp:
            body = await resp.json()
        return body if body["state"] == "succeeded" else None

    await eventually(succeeded, timeout=20, what="the job to succeed")
    assert job_state(await rendered(url), job["id"]) == "succeeded"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
async def test_with_auth_on_the_page_sends_the_token_from_its_fragment(settings: Settings) -> None:
    runtime = Runtime(with_tokens(settings, operator_tokens="op-dashboard-1"), ["api"])
    await runtime.start()
    try:
        refused = status_line(await rendered(f"{runtime.http_url}/"))
        assert re.fullmatch(r"cannot reach the orchestrator: /v1/[a-z]+(\?\S*)?: 401", refused), refused
        allowed = status_line(await rendered(f"{runtime.http_url}/#token=op-dashboard-1"))
        assert allowed.startswith("updated "), allowed

    finally:
        await runtime.stop()


def status_line(dom: str) -> str:
    match = re.search(r'<div id="status"[^>]*>(.*?)</div>', dom, re.S)
    assert match, "no status line"
    return match.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
async def test_a_jobs_view_shows_it_and_follows_its_output_live(
    system_http: aiohttp.ClientSession, system: Runtime, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)  # the job prints, then waits on it: still running while the browser looks
    script = f"print('hello from the job', flush=True)\nopen({str(go)!r}).read()"
    async with system_http.post(
        "/v1/jobs", json={"pool": "default", "payload": {"command": [sys.executable, "-c", script]}}
    ) as resp:
        job = await resp.json()
    try:

        async def running() -> bool:
            async with system_http.get(f"/v1/jobs/{job['id']}") as resp:
                return (await resp.json())["state"] == "running"

        await eventually(running, timeout=20, what="the job to run")
        dom = await rendered(f"{system.http_url}/#job={job['id']}")
        view = re.search(r'<section id="jobview">(.*?)</section>', dom, re.S)
        assert view is not None, "the job's view is not shown"
        assert job["id"] in view.group(1)
        assert re.search(r'<span class="state running">running</span>', view.group(1))
        log = re.search(r'<pre id="log">(.*?)</pre>', view.group(1), re.S)
        assert log is not None and log.group(1) == "hello from the job\n"
    finally:
        await asyncio.to_thread(go.write_text, "done")
