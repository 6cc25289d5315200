"""Pools as configuration: the HTTP API, the pools file at start-up, `orchestrator pool set`,
the re-check of queued jobs on a change, and services acting on PoolUpdated without a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.cli import main
from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError
from orchestrator.pools import change_pool
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.pools import PoolConfig
from tests.support import Listener, call, eventually

DEFAULTS = PoolConfig().model_dump(mode="json")


def config_of(pool: dict[str, Any]) -> dict[str, Any]:
    return {k: pool[k] for k in DEFAULTS}


async def test_put_patch_and_get_pools(http: aiohttp.ClientSession, bus: Bus) -> None:
    async with Listener(bus, bus.subjects.pool_updated.any()) as updates:
        status, pool = await call(http, "PUT", "/v1/pools/gpu", json={"labels": ["gpu"], "max_concurrent": 2})
        assert status == 201
        assert config_of(pool) == {**DEFAULTS, "labels": ["gpu"], "max_concurrent": 2}
        created = await updates.wait(lambda e: e.pool == "gpu")
        assert created.previous is None and created.config.max_concurrent == 2

        status, pool = await call(http, "PATCH", "/v1/pools/gpu", json={"paused": True, "max_active": -1})
        assert status == 200
        assert config_of(pool) == {**DEFAULTS, "labels": ["gpu"], "max_concurrent": 2, "paused": True, "max_active": -1}
        patched = await updates.wait(lambda e: e.config.paused)
        assert patched.previous is not None and patched.previous.paused is False

        # PUT replaces: what it omits goes back to its default.
        status, pool = await call(http, "PUT", "/v1/pools/gpu", json={"mode": "leader"})
        assert (status, config_of(pool)) == (200, {**DEFAULTS, "mode": "leader"})

    status, got = await call(http, "GET", "/v1/pools/gpu")
    assert (status, config_of(got)) == (200, {**DEFAULTS, "mode": "leader"})
    status, listed = await call(http, "GET", "/v1/pools")
    assert "gpu" in [p["name"] for p in listed["pools"]]
    for method in ("GET", "PATCH"):
        status, body = await call(http, method, "/v1/pools/nowhere", json={})
        assert (status, body["error"]["code"], body["error"]["field"]) == (404, "not_found", "name")


@pytest.mark.parametrize(
    ("method", "kwargs", "status", "code", "field"),
    [
        ("PUT", {"data": b"{not json"}, 400, "malformed", None),
        ("PUT", {"json": ["gpu"]}, 422, "invalid", None),
        ("PUT", {"json": {"max_concurrent": "lots"}}, 422, "invalid", "max_concurrent"),
        ("PUT", {"json": {"max_active": 2**40}}, 422, "invalid", "max_active"),
        ("PUT", {"json": {"colour": "red"}}, 422, "invalid", "colour"),
        ("PUT", {"json": {"mode": "solo"}}, 422, "invalid", "mode"),
        ("PUT", {"json": {"labels": ["ok", "not ok!"]}}, 422, "invalid", "labels.1"),
        ("PATCH", {"json": {"paused": "maybe"}}, 422, "invalid", "paused"),
        ("PATCH", {"json": {"max_concurrent": None}}, 422, "invalid", "max_concurrent"),
        ("PATCH", {"json": {"name": "other"}}, 422, "invalid", "name"),
        ("PATCH", {"json": {"max_workers": -1}}, 422, "invalid", "max_workers"),
        ("PUT", {"json": {"provisioner": "no spaces"}}, 422, "invalid", "provisioner"),
        # A provisioner nothing could load: stored, it stopped the next start of `up`.
        ("PUT", {"json": {"provisioner": "nowhere"}}, 422, "invalid", "provisioner"),
        ("PATCH", {"json": {"provisioner": "nowhere"}}, 422, "invalid", "provisioner"),
        ("PATCH", {"json": {"provisioner": "no_such_module:factory"}}, 422, "invalid", "provisioner"),
        # Loads, but is no factory (a string).
        ("PUT", {"json": {"provisioner": "os:sep"}}, 422, "invalid", "provisioner"),
    ],
)
async def test_bad_pool_bodies_name_the_field_and_change_nothing(
    http: aiohttp.ClientSession, method: str, kwargs: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    assert (await call(http, "PUT", "/v1/pools/p", json={"max_concurrent": 3}))[0] == 201
    got_status, body = await call(http, method, "/v1/pools/p", **kwargs)
    assert got_status == status, body
    assert (body["error"]["code"], body["error"]["field"]) == (code, field)
    assert body["error"]["message"]
    _, pool = await call(http, "GET", "/v1/pools/p")
    assert config_of(pool) == {**DEFAULTS, "max_concurrent": 3}


async def test_a_provisioner_the_system_can_load_is_taken(http: aiohttp.ClientSession) -> None:
    status, pool = await call(http, "PUT", "/v1/pools/fleet", json={"provisioner": "local", "max_workers": 2})
    assert (status, pool["provisioner"]) == (201, "local")
    status, pool = await call(http, "PATCH", "/v1/pools/fleet", json={"provisioner": None})
    assert (status, pool["provisioner"]) == (200, None)


async def test_a_bad_pool_name_is_refused(http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "PUT", "/v1/pools/-bad.name", json={})
    assert (status, body["error"]["field"]) == (422, "name")


async def test_a_change_fails_the_queued_jobs_it_makes_unrunnable(http: aiohttp.ClientSession, bus: Bus) -> None:
    """In the change's own transaction: the response already counts them, the jobs are failed
    with reason `unsatisfiable`, and each one's JobFinished follows."""
    await call(http, "PUT", "/v1/pools/p", json={"labels": ["gpu", "linux"]})
    ids = {}
    for name, spec in {
        "gpu": {"labels": ["gpu"]},
        "linux": {"labels": ["linux"], "plan": "ci"},
        "plain": {"plan": "nightly"},
    }.items():
        status, job = await call(http, "POST", "/v1/jobs", json={"pool": "p", "key": name, **spec})
        assert status == 201, job
        ids[name] = job["id"]

    async def states() -> dict[str, tuple[str, str | None]]:
        out = {}
        for name, job_id in ids.items():
            _, job = await call(http, "GET", f"/v1/jobs/{job_id}")
            out[name] = (job["state"], job["reason"])
        return out

    failed = ("failed", "unsatisfiable")
    async with Listener(bus, bus.subjects.job_finished.any()) as finished:
        status, pool = await call(http, "PATCH", "/v1/pools/p", json={"labels": ["linux"]})
        assert (status, pool["failed_jobs"]) == (200, 1)
        assert await states() == {"gpu": failed, "linux": ("queued", None), "plain": ("queued", None)}
        event = await finished.wait(lambda e: str(e.job_id) == ids["gpu"])
        assert (event.state, event.reason, event.runner_id) == ("failed", "unsatisfiable", None)

        _, pool = await call(http, "PATCH", "/v1/pools/p", json={"allowed_plans": ["ci"]})
        assert pool["failed_jobs"] == 1
        assert await states() == {"gpu": failed, "linux": ("queued", None), "plain": failed}

        _, pool = await call(http, "PATCH", "/v1/pools/p", json={"max_concurrent": 0})
        assert pool["failed_jobs"] == 1
        assert await states() == {"gpu": failed, "linux": failed, "plain": failed}
        await finished.wait(lambda e: str(e.job_id) == ids["linux"])

        # A change that makes nothing unrunnable fails nothing.
        _, pool = await call(http, "PATCH", "/v1/pools/p", json={"max_concurrent": 5, "paused": True})
        assert pool["failed_jobs"] == 0


@pytest.fixture
def slow_sweep(settings: Settings) -> Settings:
    """No safety sweep during the test: only an event can wake the dispatcher."""
    settings.sweep_interval_s = 600
    return settings


async def test_unpausing_a_pool_wakes_the_dispatcher_at_once(slow_sweep: Settings, system: Runtime) -> None:
    async with aiohttp.ClientSession(base_url=system.http_url) as http:
        await call(http, "PATCH", "/v1/pools/default", json={"paused": True})
        status, job = await call(http, "POST", "/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}})
        assert status == 201

        async def state() -> str:
            return (await call(http, "GET", f"/v1/jobs/{job['id']}"))[1]["state"]

        assert await state() == "queued"
        await call(http, "PATCH", "/v1/pools/default", json={"paused": False})
        await eventually(lambda: _equals(state(), "succeeded"), timeout=5, what="the unpaused job to run")


async def test_a_freed_slot_goes_to_the_waiting_job_at_once(
    slow_sweep: Settings, system: Runtime, tmp_path: Path
) -> None:
    """Guarantee 6: the finish of a job in a full pool wakes dispatch; no polling interval (the
    sweep is 10 minutes here) stands between a free slot and the job waiting for it."""
    release = tmp_path / "release"
    hold = ["sh", "-c", f'while [ ! -e "{release}" ]; do sleep 0.02; done']
    async with aiohttp.ClientSession(base_url=system.http_url) as http:
        await call(http, "PATCH", "/v1/pools/default", json={"max_concurrent": 1})
        _, first = await call(http, "POST", "/v1/jobs", json={"pool": "default", "payload": {"command": hold}})
        _, second = await call(http, "POST", "/v1/jobs", json={"pool": "default", "payload": {"command": ["true"]}})

        async def state(job: dict[str, Any]) -> str:
            return (await call(http, "GET", f"/v1/jobs/{job['id']}"))[1]["state"]

        await eventually(lambda: _equals(state(first), "running"), timeout=10, what="the first job to run")
        assert await state(second) == "queued"  # the pool is full
        release.touch()
        await eventually(lambda: _equals(state(second), "succeeded"), timeout=5, what="the waiting job to run")


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".toml", '[pools.gpu]\nlabels = ["gpu"]\nmax_concurrent = 4\n\n[pools.batch]\npaused = true\n'),
        (".json", json.dumps({"pools": {"gpu": {"labels": ["gpu"], "max_concurrent": 4}, "batch": {"paused": True}}})),
    ],
)
async def test_the_pools_file_is_applied_at_start(
    settings: Settings, store: Store, tmp_path: Path, suffix: str, text: str
) -> None:
    path = tmp_path / f"pools{suffix}"
    path.write_text(text)
    settings.pools_file = path
    runtime = Runtime(settings, ["admission"], migrate=True)
    await runtime.start()
    await runtime.stop()
    pools = {p["name"]: config_of(p) for p in await store.pool_list()}
    assert pools["gpu"] == {**DEFAULTS, "labels": ["gpu"], "max_concurrent": 4}
    assert pools["batch"] == {**DEFAULTS, "paused": True}


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("pools.toml", "[pools.gpu]\nmax_concurrent = 'four'\n", "pools.gpu.max_concurrent"),
        ("pools.json", "{", "does not parse"),
        ("pools.yaml", "pools: {}", "*.json or *.toml"),
    ],
)
async def test_a_bad_pools_file_stops_the_start(
    settings: Settings, tmp_path: Path, name: str, text: str, problem: str
) -> None:
    settings.pools_file = tmp_path / name
    settings.pools_file.write_text(text)
    with pytest.raises(ConfigurationError, match=problem.replace("*", r"\*")):
        await Runtime(settings, ["admission"], migrate=True).start()


async def test_cli_pool_set(
    front: Runtime, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCH_URL", front.http_url or "")

    async def cli(*args: str) -> int:
        return await asyncio.to_thread(main, list(args))  # the CLI blocks; the API runs on this loop

    assert await cli("pool", "set", "--json", "gpu", "--max-concurrent", "3", "--labels", "gpu,linux", "--paused") == 0
    printed = json.loads(capsys.readouterr().out)
    assert config_of(printed) == {**DEFAULTS, "max_concurrent": 3, "labels": ["gpu", "linux"], "paused": True}
    assert await cli("pool", "set", "gpu", "--no-paused", "--max-active", "-1", "--allowed-plans", "ci") == 0
    pool = await store.pool_get("gpu")
    assert pool is not None
    assert (pool["paused"], pool["max_active"], pool["allowed_plans"], pool["max_concurrent"]) == (False, -1, ["ci"], 3)
    assert await cli("pool", "set", "gpu", "--mode", "leader", "--labels", "") == 0
    pool = await store.pool_get("gpu")
    assert pool is not None and (pool["mode"], pool["labels"]) == ("leader", [])
    capsys.readouterr()
    assert await cli("pool", "set", "gpu", "--max-concurrent", "99999999999") == 2
    assert "max_concurrent" in capsys.readouterr().err
    assert await cli("pool", "set", "gpu", "--provisioner", "local", "--max-workers", "2") == 0
    pool = await store.pool_get("gpu")
    assert pool is not None and (pool["provisioner"], pool["max_workers"]) == ("local", 2)
    capsys.readouterr()
    assert await cli("pool", "set", "gpu", "--max-workers", "-1") == 2
    assert "max_workers: must be 0 (no cap)" in capsys.readouterr().err


async def test_a_restart_keeps_an_operators_patch_and_applies_what_the_file_changed(
    settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """The pools file seeds and changes; the API changes. A restart with the same file leaves
    an operator's PATCH alone (it used to put the pool back, like a PUT); a field edited in the
    file since it was last applied is set, whatever was patched."""
    settings.pools_file = tmp_path / "pools.toml"

    async def start_with(text: str) -> None:
        assert settings.pools_file is not None
        settings.pools_file.write_text(text)
        runtime = Runtime(settings, ["admission"], migrate=True)
        await runtime.start()
        await runtime.stop()

    await start_with("[pools.gpu]\nmax_concurrent = 4\nlabels = ['gpu']\n")
    await change_pool(store, bus, "gpu", patch={"paused": True, "max_concurrent": 7})
    await start_with("[pools.gpu]\nmax_concurrent = 4\nlabels = ['gpu']\n")
    pool = await store.pool_get("gpu")
    assert pool is not None and (pool["paused"], pool["max_concurrent"]) == (True, 7)
    await start_with("[pools.gpu]\nmax_concurrent = 9\nlabels = ['gpu']\n")
    pool = await store.pool_get("gpu")
    assert pool is not None and (pool["paused"], pool["max_concurrent"], pool["labels"]) == (True, 9, ["gpu"])
