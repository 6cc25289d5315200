"""GET /metrics on a live system: valid Prometheus text with help on every metric, the counters
of what happened, and the queue gauges read from Postgres.

`promtool check metrics` (Debian's `prometheus` package) runs on the scrape when promtool is on
PATH (or named by ORCH_PROMTOOL). It is not a PyPI package, so `make test` cannot install it; the
same text is always checked with prometheus_client's own parser and for HELP and TYPE lines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests.support import eventually

PROMTOOL = os.environ.get("ORCH_PROMTOOL") or shutil.which("promtool")


async def scrape(system_http: aiohttp.ClientSession) -> str:
    async with system_http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def check_exposition(text: str) -> dict[str, Any]:
    """Parse `text` as Prometheus does; every metric has non-empty HELP and a TYPE. Returns the
    samples as {(name, sorted labels): value}."""
    lines = [line.split(" ", 3) for line in text.splitlines()]
    helps = {parts[2] for parts in lines if parts[:2] == ["#", "HELP"] and len(parts) == 4 and parts[3].strip()}
    types = {parts[2] for parts in lines if parts[:2] == ["#", "TYPE"]}
    samples: dict[Any, float] = {}
    for family in text_string_to_metric_families(text):
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert family.documentation, f"{exposed} has no help text"
        assert exposed in helps and exposed in types, f"{exposed} lacks HELP or TYPE"
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def submit(system_http: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, Any]:
    async with system_http.post("/v1/jobs", json=spec) as resp:
        return {"status": resp.status, **await resp.json()}


async def test_metrics_count_jobs_and_read_the_queue_from_postgres(
    system_http: aiohttp.ClientSession, system: Runtime, store: Store
) -> None:
    job = await submit(system_http, {"pool": "default", "payload": {"command": ["true"]}})
    assert job["status"] == 201
    assert (await submit(system_http, {"pool": "nowhere"}))["status"] == 422  # rejected: unsatisfiable
    # A pool with no runner: its jobs wait, and the gauges say so.
    await store.pool_create_if_absent("idle", [])
    for _ in range(2):
        assert (await submit(system_http, {"pool": "idle", "payload": {"command": ["true"]}}))["status"] == 201

    async def done() -> dict[str, Any] | None:
        samples = check_exposition(await scrape(system_http))
        finished = value(samples, "orchestrator_jobs_finished_total", pool="default", outcome="succeeded")
        return samples if finished else None

    samples = await eventually(done, timeout=20, what="the job to be counted as finished")
    assert value(samples, "orchestrator_jobs_admitted_total", pool="default") == 1
    assert value(samples, "orchestrator_jobs_admitted_total", pool="idle") == 2
    assert value(samples, "orchestrator_jobs_rejected_total", reason="unsatisfiable") == 1
    assert value(samples, "orchestrator_jobs_dispatched_total", pool="default") == 1
    assert value(samples, "orchestrator_queue_wait_seconds_count", pool="default") == 1
    assert value(samples, "orchestrator_pool_in_flight_peak", pool="default") == 1
    assert value(samples, "orchestrator_dispatch_leader", shard="all", instance=system.settings.instance_id) == 1
    # From Postgres, at scrape time.
    assert value(samples, "orchestrator_store_up") == 1
    assert value(samples, "orchestrator_pool_queued", pool="idle") == 2
    assert value(samples, "orchestrator_pool_free_slots", pool="idle") == 0
    assert value(samples, "orchestrator_pool_oldest_queued_seconds", pool="idle") > 0  # type: ignore[operator]
    assert value(samples, "orchestrator_pool_max_concurrent", pool="default") == 20
    # The runner's slot shows free again once the job has ended (read from Postgres at scrape
    # time; seen once a moment behind the finish counter under load: polled, not sampled once).

    async def slot_free() -> bool:
        samples = check_exposition(await scrape(system_http))
        return value(samples, "orchestrator_pool_free_slots", pool="default") == system.settings.runner_slots

    await eventually(slot_free, timeout=10, what="the runner's slot to show free")
    assert value(samples, "orchestrator_runners", pool="default", state="active") == 1
    for name in ("orchestrator_jobs_at_capacity_skips_total", "orchestrator_capacity_unknown_skips_total"):
        assert f"# HELP {name} " in await scrape(system_http)


async def test_slot_to_assign_is_measured_when_a_freed_slot_takes_waiting_work(
    system_http: aiohttp.ClientSession,
) -> None:
    # One slot at a time: every job after the first waits for the slot its predecessor frees.
    async with system_http.patch("/v1/pools/default", json={"max_concurrent": 1}) as resp:
        assert resp.status == 200
    for _ in range(3):  # each long enough for the next to be admitted while it runs
        assert (await submit(system_http, {"pool": "default", "payload": {"command": ["sleep", "0.2"]}}))[
            "status"
        ] == 201

    async def measured() -> dict[str, Any] | None:
        samples = check_exposition(await scrape(system_http))
        done = value(samples, "orchestrator_jobs_finished_total", pool="default", outcome="succeeded")
        return samples if done == 3 else None

    samples = await eventually(measured, timeout=20, what="three jobs to finish one after another")
    assert value(samples, "orchestrator_slot_to_assign_seconds_count", pool="default")  # at least one of two
    assert value(samples, "orchestrator_jobs_at_capacity_skips_total", pool="default")
    assert value(samples, "orchestrator_pool_in_flight_peak", pool="default") == 1


async def test_an_attempt_retried_by_its_policy_is_counted_as_a_retry_not_as_an_end(
    system_http: aiohttp.ClientSession,
) -> None:
    retry = {"on": ["failed"], "backoff_s": 0}
    job = await submit(
        system_http, {"pool": "default", "max_attempts": 2, "retry": retry, "payload": {"command": ["false"]}}
    )
    assert job["status"] == 201

    async def ended() -> dict[str, Any] | None:
        samples = check_exposition(await scrape(system_http))
        return samples if value(samples, "orchestrator_jobs_finished_total", pool="default", outcome="failed") else None

    samples = await eventually(ended, timeout=20, what="the job to fail twice")
    assert value(samples, "orchestrator_jobs_retried_total", pool="default", outcome="failed") == 1
    assert value(samples, "orchestrator_jobs_finished_total", pool="default", outcome="failed") == 1  # the job's end


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
async def test_promtool_accepts_the_live_metrics(system_http: aiohttp.ClientSession) -> None:
    assert (await submit(system_http, {"pool": "default", "payload": {"command": ["true"]}}))["status"] == 201
    text = await scrape(system_http)
    proc = await asyncio.create_subprocess_exec(
        str(PROMTOOL), "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()


async def test_a_process_without_the_api_serves_its_counters_on_the_metrics_port(settings: Settings) -> None:
    runtime = Runtime(settings.model_copy(update={"metrics_port": 0}), ["admission"], migrate=True)
    await runtime.start()
    try:
        server = runtime.services["metrics"]
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as resp:  # type: ignore[attr-defined]
            assert resp.status == 200
            text = await resp.text()
    finally:
        await runtime.stop()
    check_exposition(text)
    assert "# HELP orchestrator_jobs_admitted_total " in text
    assert "orchestrator_pool_queued" not in text  # the queue gauges are the api's alone
