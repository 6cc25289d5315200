"""Flow control with every service in one process and real runners: a key's limit reached and
never exceeded over many jobs (from the transition history), a rate limit's starts exactly
spaced over several periods and never stalling (its next start is a timer, not a poll), a job
behind an exhausted rate limit started at once when the limit is deleted or raised, a pool's
max_starts_per_s, the next job of a key dispatched as soon as one ends (in another pool too,
with the safety sweep too slow to be what woke it), and cancel_in_progress stopping the job its
runner runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import Store
from services.runner import Runner
from tests import factories, history
from tests.support import agent, call, eventually, record_history, submit
from tests.system.processes import ended


@asynccontextmanager
async def flow_system(
    settings: Settings, runners: Sequence[tuple[str, str, int]], **pools: dict[str, Any]
) -> AsyncIterator[tuple[Runtime, aiohttp.ClientSession]]:
    """Capacity, admission, dispatch and the api in this process, the transition history
    recorded, `pools` (name -> config) and `runners` (id, pool, slots) running real commands."""
    runtime = Runtime(settings, ["capacity", "admission", "dispatch", "api"])
    await runtime.start()
    assert runtime.store is not None and runtime.bus is not None
    started: list[Runner] = []
    try:
        await record_history(runtime.store)
        for name, config in pools.items():
            await factories.pool(runtime.store, name, max_active=-1, **config)
        for runner_id, pool, slots in runners:
            runner = agent(settings, runtime.bus, runner_id, pool=pool, labels=[], slots=slots)
            await runner.start()
            started.append(runner)
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            yield runtime, http
    finally:
        for runner in started:
            await runner.stop()
        await runtime.stop()


def slow_sweep(settings: Settings) -> Settings:
    """`settings` with the safety sweep a minute away: whatever dispatches within a test, a wake
    or a timer did, not the sweep."""
    return Settings.model_validate({**settings.model_dump(), "sweep_interval_s": 60.0})


async def transitions(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        return await history.read(conn)


async def all_ended(http: aiohttp.ClientSession, ids: Sequence[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    return [await ended(http, job_id, timeout) for job_id in ids]


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


def most_in_any_window(times: Sequence[float], window_s: float) -> int:
    """The most of `times` inside any half-open window [t, t + window_s)."""
    return max(sum(1 for u in times if t <= u < t + window_s) for t in times)


async def test_a_key_s_limit_is_reached_and_never_exceeded(settings: Settings) -> None:
    limits = {"k1": 1, "k2": 2, "k3": 3}
    runners = [(f"r{i}", "p", 3) for i in range(4)]  # room for every key's limit and unkeyed jobs besides
    async with flow_system(settings, runners, p={"max_concurrent": 12, "paused": True}) as (runtime, http):
        ids = []
        for i in range(36):  # all queued first, so every key has more jobs waiting than its limit
            key = f"k{i % 3 + 1}"
            spec = {"concurrency_key": key, "concurrency_limit": limits[key]} if i % 4 else {}
            ids.append((await submit(http, pool="p", payload={"command": ["sleep", "0.2"]}, **spec))["id"])
        assert (await call(http, "PATCH", "/v1/pools/p", json={"paused": False}))[0] == 200
        jobs = await all_ended(http, ids)
        assert {j["state"] for j in jobs} == {"succeeded"} and {j["attempt"] for j in jobs} == {1}
        assert runtime.store is not None
        peaks = history.concurrency_key_peaks(await transitions(runtime.store))
    assert peaks == limits  # each key ran up to its limit, never past it


@pytest.mark.parametrize(("limit", "period_s", "jobs"), [(1, 1.0, 4), (3, 1.0, 9)])
async def test_a_rate_limit_spaces_starts_exactly_and_never_stalls(
    settings: Settings, limit: int, period_s: float, jobs: int
) -> None:
    async with flow_system(slow_sweep(settings), [("r1", "p", 10)], p={}) as (runtime, http):
        body = {"limit": limit, "period_s": period_s}
        assert (await call(http, "PUT", "/v1/rate-limits/api", json=body))[0] == 201
        ids = [
            (await submit(http, pool="p", rate_limit_key="api", payload={"command": ["true"]}))["id"]
            for _ in range(jobs)
        ]
        await all_ended(http, ids, timeout=30)
        assert runtime.store is not None
        starts = history.claim_times(await transitions(runtime.store), "rate_limit_key", "api")
        held = runtime.metrics.count("orchestrator_dispatch_held_back", pool="p", reason="rate_limit")
    interval = period_s / limit
    assert len(starts) == jobs
    # Exact: one start per interval at most, so never more than `limit` in any period...
    assert min(gaps(starts)) >= interval - 1e-6, gaps(starts)
    assert most_in_any_window(starts, period_s) == limit
    # ... and no stall: each next start follows its due time within a step's latency (a timer).
    assert max(gaps(starts)) < interval + 0.25, gaps(starts)
    assert held >= 1  # the steps that passed the waiting jobs over were counted


@pytest.mark.parametrize(
    ("method", "body"), [("DELETE", None), ("PUT", {"limit": 36000, "period_s": 3600})], ids=["deleted", "raised"]
)
async def test_a_job_behind_an_exhausted_rate_limit_starts_once_it_is_lifted(
    settings: Settings, method: str, body: dict[str, Any] | None
) -> None:
    """Its pool's timer is set for the hour's next start and the sweep is a minute away: only the
    wake the api sends after the change can start it within seconds."""
    async with flow_system(slow_sweep(settings), [("r1", "p", 4)], p={}) as (_, http):
        assert (await call(http, "PUT", "/v1/rate-limits/hourly", json={"limit": 1, "period_s": 3600}))[0] == 201
        first = await submit(http, pool="p", rate_limit_key="hourly", payload={"command": ["true"]})
        await ended(http, first["id"], timeout=10)
        waiting = await submit(http, pool="p", rate_limit_key="hourly", payload={"command": ["true"]})

        async def held_by_rate() -> bool:
            why = (await job_listed(http, waiting["id"]))["blocked_by"]
            return why is not None and why["reason"] == "rate_limit"

        await eventually(held_by_rate, what="the job to wait for the hour's next start")
        lifted_at = datetime.now(UTC).timestamp()
        assert (await call(http, method, "/v1/rate-limits/hourly", json=body))[0] == 200
        done = await ended(http, waiting["id"], timeout=10)
    assert done["state"] == "succeeded"
    assert datetime.fromisoformat(done["assigned_at"]).timestamp() - lifted_at < 2.0, done


async def test_a_pool_s_max_starts_per_s_spaces_its_starts(settings: Settings) -> None:
    async with flow_system(slow_sweep(settings), [("r1", "p", 10)], p={"max_starts_per_s": 4.0}) as (runtime, http):
        ids = [(await submit(http, pool="p", payload={"command": ["true"]}))["id"] for _ in range(6)]
        await all_ended(http, ids, timeout=30)
        assert runtime.store is not None
        starts = history.claim_times(await transitions(runtime.store), "pool", "p")
        throttled = runtime.metrics.count("orchestrator_dispatch_held_back", pool="p", reason="max_starts_per_s")
    assert len(starts) == 6
    assert min(gaps(starts)) >= 0.25 - 1e-6 and max(gaps(starts)) < 0.5, gaps(starts)
    assert throttled >= 1


def assigned_after(job: dict[str, Any], other: dict[str, Any]) -> float:
    """Seconds from the end of `other` to the assignment of `job`."""
    return (
        datetime.fromisoformat(job["assigned_at"]).timestamp()
        - datetime.fromisoformat(other["finished_at"]).timestamp()
    )


async def test_the_next_job_of_a_key_starts_as_soon_as_one_ends_in_any_pool(settings: Settings, tmp_path: Any) -> None:
    runners = [("ra", "a", 2), ("rb", "b", 2)]
    gate = tmp_path / "gate"
    until_gate = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"]
    # Only the end of the key's job can wake its pools in time.
    async with flow_system(slow_sweep(settings), runners, a={}, b={}) as (_, http):
        first = await submit(http, pool="a", concurrency_key="db", payload={"command": until_gate})
        await eventually(lambda: is_state(http, first["id"], "running"), what="the key's first job to run")
        same_pool = await submit(http, pool="a", concurrency_key="db", payload={"command": ["sleep", "0.3"]})
        other_pool = await submit(http, pool="b", concurrency_key="db", payload={"command": ["true"]})
        for waiting in (same_pool, other_pool):
            listed = await job_listed(http, waiting["id"])
            assert listed["blocked_by"]["reason"] == "concurrency_key", listed  # what the dashboard shows
        gate.touch()
        done = {j["id"]: j for j in await all_ended(http, [first["id"], same_pool["id"], other_pool["id"]], 20)}
    assert {j["state"] for j in done.values()} == {"succeeded"}
    # One after the other (limit 1), each dispatched within moments of the end before it.
    order = sorted(done.values(), key=lambda j: j["assigned_at"])
    assert order[0]["id"] == first["id"]
    for before, after in pairwise(order):
        assert 0 <= assigned_after(after, before) < 1.0, (before, after)


async def is_state(http: aiohttp.ClientSession, job_id: str, state: str) -> bool:
    return (await call(http, "GET", f"/v1/jobs/{job_id}"))[1]["state"] == state


async def job_listed(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    status, body = await call(http, "GET", "/v1/jobs", params={"state": "queued"})
    assert status == 200
    return next(j for j in body["jobs"] if j["id"] == job_id)


async def test_cancel_in_progress_stops_the_running_job_then_runs(settings: Settings, tmp_path: Any) -> None:
    marker = tmp_path / "old-finished"
    async with flow_system(settings, [("r1", "p", 2)], p={}) as (runtime, http):
        command = ["sh", "-c", f"sleep 30 && touch {marker}"]
        old = await submit(http, pool="p", concurrency_key="deploy", payload={"command": command})
        await eventually(lambda: is_state(http, old["id"], "running"), what="the old deployment to run")
        new = await submit(
            http, pool="p", concurrency_key="deploy", on_conflict="cancel_in_progress", payload={"command": ["true"]}
        )
        old_done, new_done = await all_ended(http, [old["id"], new["id"]], timeout=30)
        assert runtime.store is not None
        peaks = history.concurrency_key_peaks(await transitions(runtime.store))
    assert (old_done["state"], new_done["state"]) == ("cancelled", "succeeded")
    assert not marker.exists()  # its process was stopped, not left to finish
    assert new_done["assigned_at"] >= old_done["finished_at"] and peaks == {"deploy": 1}
