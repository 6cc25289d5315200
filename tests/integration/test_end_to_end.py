"""A job from producer to runner and back through every service in one process, on real NATS
and real Postgres, through each door: HTTP, JetStream and core request/reply."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from schemas.events import JobSubmitted
from tests.support import Listener, eventually

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


@pytest.fixture
async def http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


async def finished(http: aiohttp.ClientSession, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with http.get(f"/v1/jobs/{job_id}") as resp:
            job = await resp.json()
        return job if job["state"] in FINAL else None

    return await eventually(probe, timeout=timeout, what=f"job {job_id} to finish")


async def test_http_job_runs_on_the_local_runner_and_succeeds(http: aiohttp.ClientSession, system: Runtime) -> None:
    async with http.post("/v1/jobs", json={"pool": "default", "payload": {"command": ["echo", "hi"]}}) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["state"] == "queued" and created["token"]
    job = await finished(http, created["id"])
    assert job["state"] == "succeeded"
    assert job["exit_code"] == 0
    assert job["attempt"] == 1
    runner = system.services["runner"]
    assert job["runner_id"] == runner.runner_id  # type: ignore[attr-defined]
    assert job["started_at"] >= job["assigned_at"] >= job["created_at"]


async def test_exit_code_and_environment_reach_the_job(
    http: aiohttp.ClientSession, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's secrets stay with it; the rest of its environment reaches the job.
    monkeypatch.setenv("ORCH_OPERATOR_TOKENS", "op-Secret-e2e")
    monkeypatch.setenv("ORCH_URL", "http://orchestrator.example")
    script = (
        "import os, sys; open('out.txt', 'w').write(' '.join("
        "[os.environ['GREETING'], os.environ['ORCH_URL'], os.environ.get('ORCH_OPERATOR_TOKENS', '-')])); sys.exit(7)"
    )
    spec = {
        "pool": "default",
        "payload": {"command": [sys.executable, "-c", script], "env": {"GREETING": "hello"}, "cwd": str(tmp_path)},
    }
    async with http.post("/v1/jobs", json=spec) as resp:
        created = await resp.json()
    job = await finished(http, created["id"])
    assert (job["state"], job["exit_code"]) == ("failed", 7)
    assert (tmp_path / "out.txt").read_text() == "hello http://orchestrator.example -"


async def test_a_missing_cwd_fails_the_job_naming_the_cwd(http: aiohttp.ClientSession, tmp_path: Any) -> None:
    """A cwd that is not there fails the spawn with the same error as a missing program: the
    job's reason (and its output) must name the cwd, not call the command not found."""
    gone, a_file = tmp_path / "gone", tmp_path / "file"
    a_file.write_text("")
    for cwd, why in ((gone, "does not exist"), (a_file, "is not a directory")):
        spec = {"pool": "default", "payload": {"command": ["true"], "cwd": str(cwd)}}
        async with http.post("/v1/jobs", json=spec) as resp:
            created = await resp.json()
        job = await finished(http, created["id"])
        assert (job["state"], job["reason"]) == ("failed", f"cannot start 'true': its cwd {str(cwd)!r} {why}")
        async with http.get(f"/v1/jobs/{created['id']}/logs") as resp:
            assert job["reason"] in await resp.text()


async def test_timeout_kills_the_command(http: aiohttp.ClientSession) -> None:
    spec = {"pool": "default", "timeout_s": 0.5, "payload": {"command": ["sleep", "30"]}}
    async with http.post("/v1/jobs", json=spec) as resp:
        created = await resp.json()
    job = await finished(http, created["id"])
    assert job["state"] == "timed_out"


async def test_jetstream_submission_is_admitted_and_finishes(system: Runtime, bus: Bus) -> None:
    s = bus.subjects
    body = json.dumps({"pool": "default", "key": "js-1", "payload": {"command": ["true"]}}).encode()
    async with (
        Listener(bus, s.job_admitted.any()) as admitted,
        Listener(bus, s.job_finished.any()) as done,
    ):
        await bus.submit(body, key="js-1")
        event = await admitted.wait(lambda e: e.key == "js-1")
        end = await done.wait(lambda e: e.job_id == event.job_id)
    assert end.state == "succeeded"


async def test_same_jetstream_message_twice_is_one_job(system: Runtime, bus: Bus) -> None:
    body = json.dumps({"pool": "default", "key": "dup", "payload": {"command": ["true"]}}).encode()
    await bus.submit(body, key="dup")
    await bus.submit(body, key="dup")
    # The second copy is dropped by JetStream's dedup window; a third outside it by the key.
    await bus.js.publish(bus.subjects.submit.subject, body)  # no Nats-Msg-Id: only the job key dedups it
    store = system.store
    assert store is not None

    async def all_processed() -> bool:
        info = await bus.js.consumer_info(bus.subjects.intake_stream, "admission")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(all_processed, what="the intake to be drained")
    jobs = await store.job_list(pool=None, state=None, key="dup", limit=10)
    assert len(jobs) == 1


async def test_request_reply_door_answers_with_the_admission_result(system: Runtime, bus: Bus) -> None:
    spec = JobSubmitted(pool="default", key="rr-1", payload={"command": ["true"]})
    result = await bus.request(bus.subjects.submit_request, spec, 5)
    assert result.outcome == "admitted"
    assert result.job is not None and result.job.key == "rr-1"
    again = await bus.request(bus.subjects.submit_request, spec, 5)
    assert again.outcome == "existing" and again.job is not None and again.job.id == result.job.id


async def test_list_and_get_jobs(http: aiohttp.ClientSession) -> None:
    ids = []
    for i in range(3):
        async with http.post("/v1/jobs", json={"pool": "default", "key": f"l{i}", "payload": {}}) as resp:
            ids.append((await resp.json())["id"])
    async with http.get("/v1/jobs", params={"limit": "2"}) as resp:
        listed = (await resp.json())["jobs"]
    assert [j["id"] for j in listed] == ids[::-1][:2]  # newest first
    async with http.get("/v1/jobs", params={"key": "l1"}) as resp:
        assert [j["id"] for j in (await resp.json())["jobs"]] == [ids[1]]


async def test_cancel_a_running_job(http: aiohttp.ClientSession) -> None:
    spec = {"pool": "default", "payload": {"command": ["sleep", "30"]}}
    async with http.post("/v1/jobs", json=spec) as resp:
        job_id = (await resp.json())["id"]

    async def running() -> bool:
        async with http.get(f"/v1/jobs/{job_id}") as resp:
            return (await resp.json())["state"] == "running"

    await eventually(running, what="the job to run")
    async with http.delete(f"/v1/jobs/{job_id}") as resp:
        assert resp.status == 202
    job = await finished(http, job_id)
    assert job["state"] == "cancelled"
