"""The client for code without an event loop: each method runs the async client's on a private
loop, kept for the client's life (so is its HTTP session: connections are reused)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from orchestrator.client.aio import Client
from orchestrator.client.calls import JobId
from schemas.api import JobCreated, JobDetail, JobListed, LeaderView, PoolChanged, PoolDeleted, RunnerView, Stats
from schemas.jobs import JobSpec, JobView
from schemas.pools import PoolConfig, PoolView
from schemas.rate_limits import RateLimitConfig, RateLimitDeleted, RateLimitView
from schemas.schedules import ScheduleDeleted, ScheduleSpec, ScheduleView

T = TypeVar("T")


class SyncClient:
    """`with SyncClient("http://127.0.0.1:8080", token=...) as client:`; the methods are the async
    `Client`'s (see there). Not for use inside a running event loop: use `Client` there."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self._loop = asyncio.Runner()
        self.client = Client(url, token=token, timeout_s=timeout_s)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def submit(self, spec: JobSpec) -> JobCreated:
        return self._run(self.client.submit(spec))

    def get(self, job_id: JobId) -> JobDetail:
        return self._run(self.client.get(job_id))

    def list(
        self, *, pool: str | None = None, state: str | None = None, key: str | None = None, limit: int | None = None
    ) -> list[JobListed]:
        return self._run(self.client.list(pool=pool, state=state, key=key, limit=limit))

    def cancel(self, job_id: JobId) -> JobView:
        return self._run(self.client.cancel(job_id))

    def wait(self, job_id: JobId, *, timeout_s: float | None = None) -> JobDetail:
        return self._run(self.client.wait(job_id, timeout_s=timeout_s))

    def logs(self, job_id: JobId, *, offset: int = 0, follow: bool = False) -> Iterator[bytes]:
        chunks = self.client.logs(job_id, offset=offset, follow=follow)
        try:
            while True:
                try:
                    yield self._run(anext(chunks))
                except StopAsyncIteration:
                    return
        finally:
            self._run(chunks.aclose())

    def pools(self) -> list[PoolView]:
        return self._run(self.client.pools())

    def pool(self, name: str) -> PoolView:
        return self._run(self.client.pool(name))

    def put_pool(self, name: str, config: PoolConfig) -> PoolChanged:
        return self._run(self.client.put_pool(name, config))

    def patch_pool(self, name: str, fields: Mapping[str, Any]) -> PoolChanged:
        return self._run(self.client.patch_pool(name, fields))

    def delete_pool(self, name: str) -> PoolDeleted:
        return self._run(self.client.delete_pool(name))

    def schedules(self) -> list[ScheduleView]:
        return self._run(self.client.schedules())

    def schedule(self, name: str) -> ScheduleView:
        return self._run(self.client.schedule(name))

    def put_schedule(self, name: str, spec: ScheduleSpec) -> ScheduleView:
        return self._run(self.client.put_schedule(name, spec))

    def delete_schedule(self, name: str) -> ScheduleDeleted:
        return self._run(self.client.delete_schedule(name))

    def rate_limits(self) -> list[RateLimitView]:
        return self._run(self.client.rate_limits())

    def rate_limit(self, key: str) -> RateLimitView:
        return self._run(self.client.rate_limit(key))

    def put_rate_limit(self, key: str, config: RateLimitConfig) -> RateLimitView:
        return self._run(self.client.put_rate_limit(key, config))

    def delete_rate_limit(self, key: str) -> RateLimitDeleted:
        return self._run(self.client.delete_rate_limit(key))

    def runners(self) -> list[RunnerView]:
        return self._run(self.client.runners())

    def leader(self) -> LeaderView:
        return self._run(self.client.leader())

    def stats(self) -> Stats:
        return self._run(self.client.stats())
