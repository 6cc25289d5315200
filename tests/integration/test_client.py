"""The Python client (`orchestrator.client`) against the real api: every method, its errors as
the API gave them, bearer tokens, and the blocking wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.runtime import Runtime
from orchestrator.client import ApiError, Client, SyncClient
from orchestrator.settings import Settings
from schemas.api import JobCreated, JobDetail
from schemas.jobs import JobSpec, JobState
from schemas.pools import PoolConfig
from schemas.rate_limits import RateLimitConfig, RateLimitDeleted, RateLimitView
from tests.support import with_tokens


@pytest.fixture
async def client(system: Runtime) -> AsyncIterator[Client]:
    async with Client(system.http_url or "") as c:
        yield c


def command(*argv: str, **spec: object) -> JobSpec:
    return JobSpec.model_validate({"pool": "default", "payload": {"command": list(argv)}, **spec})


async def test_submit_get_list_wait_and_logs(client: Client) -> None:
    job = await client.submit(command("sh", "-c", "echo hello; echo world >&2", key="greeting"))
    assert isinstance(job, JobCreated) and job.token and job.key == "greeting"
    got = await client.get(job.id)
    assert isinstance(got, JobDetail) and got.id == job.id

    ended = await client.wait(job.id, timeout_s=30)
    assert (ended.state, ended.exit_code) == (JobState.succeeded, 0)
    assert sorted((await _read(client.logs(job.id))).splitlines()) == [b"hello", b"world"]
    assert await _read(client.logs(job.id, offset=6)) in (b"world\n", b"hello\n")  # the 2nd line

    listed = await client.list(pool="default", key="greeting")
    assert [j.id for j in listed] == [job.id]
    assert await client.list(state="queued") == []

    # Followed: streamed until the job has ended, then everything is there.
    slow = await client.submit(command("sh", "-c", "echo one; sleep 0.3; echo two"))
    assert await _read(client.logs(slow.id, follow=True)) == b"one\ntwo\n"
    assert (await client.get(slow.id)).state == JobState.succeeded


async def test_watch_reports_each_step_until_the_end(client: Client) -> None:
    job = await client.submit(command("sleep", "0.5"))
    seen = [j.state async for j in client.watch(job.id)]
    assert seen[-1] == JobState.succeeded and JobState.running in seen
    order = list(JobState)
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)


async def test_cancel_and_a_paused_pools_wait(client: Client) -> None:
    await client.patch_pool("default", {"paused": True})
    job = await client.submit(command("true"))
    waiting = await client.get(job.id)
    assert waiting.blocked_by is not None and waiting.blocked_by.reason == "paused"
    with pytest.raises(TimeoutError):
        await client.wait(job.id, timeout_s=0.3)

    cancelled = await client.cancel(job.id)
    assert cancelled.state == JobState.cancelled
    with pytest.raises(ApiError) as refused:
        await client.cancel(job.id)
    error = refused.value
    assert (error.status, error.code, error.field) == (409, "final", "id")
    assert "already ended" in error.message


async def test_pools_runners_leader_and_stats(client: Client, system: Runtime) -> None:
    created = await client.put_pool("gpu", PoolConfig(labels=["gpu"], max_concurrent=2))
    assert (created.name, created.max_concurrent, created.failed_jobs) == ("gpu", 2, 0)
    assert (await client.patch_pool("gpu", {"paused": True})).paused
    assert (await client.pool("gpu")).paused
    assert {p.name for p in await client.pools()} == {"default", "gpu"}

    runners = await client.runners()
    assert [(r.pool, r.state) for r in runners] == [("default", "active")]
    assert (await client.leader()).holder is not None
    stats = await client.stats()
    assert {p.pool for p in stats.pools} == {"default", "gpu"}
    assert [(r.pool, r.state, r.runners) for r in stats.runners] == [("default", "active", 1)]

    deleted = await client.delete_pool("gpu")
    assert (deleted.name, deleted.deleted_jobs) == ("gpu", 0)
    with pytest.raises(ApiError) as in_use:
        await client.delete_pool("default")
    assert (in_use.value.status, in_use.value.code, in_use.value.field) == (409, "in_use", "name")


async def test_rate_limits_set_listed_read_and_deleted(client: Client, system: Runtime) -> None:
    assert await client.rate_limits() == []
    created = await client.put_rate_limit("search", RateLimitConfig(limit=10, period_s=60, burst=2))
    assert isinstance(created, RateLimitView) and (created.key, created.limit, created.starts_left) == ("search", 10, 2)
    await client.put_rate_limit("api", RateLimitConfig(limit=1, period_s=1))
    assert [r.key for r in await client.rate_limits()] == ["api", "search"]
    assert await client.rate_limit("search") == created

    deleted = await client.delete_rate_limit("search")
    assert isinstance(deleted, RateLimitDeleted) and deleted.deleted and deleted.rate_limit.limit == 10
    for gone in (client.rate_limit("search"), client.delete_rate_limit("search")):
        with pytest.raises(ApiError) as missing:
            await gone
        assert (missing.value.status, missing.value.code, missing.value.field) == (404, "not_found", "key")

    def use() -> list[str]:  # the blocking client's
        with SyncClient(system.http_url or "") as sync:
            sync.put_rate_limit("mail", RateLimitConfig(limit=5, period_s=60))
            assert sync.rate_limit("mail").limit == 5 and sync.delete_rate_limit("api").key == "api"
            return [r.key for r in sync.rate_limits()]

    assert await asyncio.to_thread(use) == ["mail"]  # the api serves on this test's loop


async def test_errors_carry_the_apis_code_and_field(client: Client) -> None:
    with pytest.raises(ApiError) as unknown_pool:
        await client.submit(command("true", pool="nowhere"))
    error = unknown_pool.value
    assert (error.status, error.code, error.field) == (422, "unsatisfiable", "pool")
    assert "nowhere" in error.message and "nowhere" in str(error)

    with pytest.raises(ApiError) as missing:
        await client.get("00000000-0000-7000-8000-000000000000")
    assert (missing.value.status, missing.value.code, missing.value.field) == (404, "not_found", "id")
    with pytest.raises(ApiError) as invalid:
        await client.patch_pool("default", {"max_concurrent": "lots"})
    assert (invalid.value.status, invalid.value.field) == (422, "max_concurrent")

    async with Client("http://127.0.0.1:9") as nobody:
        with pytest.raises(ApiError) as unreachable:
            await nobody.pools()
    assert (unreachable.value.status, unreachable.value.code) == (None, "unreachable")
    assert "cannot reach the orchestrator at http://127.0.0.1:9" in unreachable.value.message


async def test_a_bearer_token(settings: Settings) -> None:
    runtime = Runtime(with_tokens(settings, operator_tokens="op-secret"), ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with Client(runtime.http_url or "") as anonymous:
            with pytest.raises(ApiError) as refused:
                await anonymous.list()
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        async with Client(runtime.http_url or "", token="op-secret") as operator:
            assert await operator.list() == []
    finally:
        await runtime.stop()


async def test_the_blocking_client(system: Runtime) -> None:
    def use() -> tuple[JobDetail, bytes]:
        with SyncClient(system.http_url or "") as client:
            job = client.submit(command("echo", "sync"))
            return client.wait(job.id, timeout_s=30), b"".join(client.logs(job.id, follow=True))

    ended, output = await asyncio.to_thread(use)  # the api serves on this test's loop
    assert (ended.state, output) == (JobState.succeeded, b"sync\n")


async def _read(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
