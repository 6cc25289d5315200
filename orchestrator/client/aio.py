"""The async client: one aiohttp session, a bearer token, typed answers.

Waiting for a job polls `GET /v1/jobs/{id}` with a backoff (the API has no long poll for a job's
end; the log follow ends with the job but carries its output): fast at first, since most waits
are short, then at most once a second, and fast again after a change, when the next one tends to
follow (queued -> assigned -> running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from orchestrator.client import calls
from orchestrator.client.calls import Call, JobId
from orchestrator.client.errors import ApiError
from schemas.api import JobCreated, JobDetail, JobListed, LeaderView, PoolChanged, PoolDeleted, RunnerView, Stats
from schemas.jobs import JobSpec, JobView
from schemas.pools import PoolConfig, PoolView
from schemas.rate_limits import RateLimitConfig, RateLimitDeleted, RateLimitView
from schemas.schedules import ScheduleDeleted, ScheduleSpec, ScheduleView

A = TypeVar("A", bound=BaseModel)

FIRST_POLL_S = 0.05
MAX_POLL_S = 1.0
RUNNERS_PAGE = 1000  # the API's largest page


def progress_of(job: JobDetail) -> tuple[object, ...]:
    """What a watcher is told about: the job's state and attempt, and where and why it waits.
    Not the estimates and counters that move on every read."""
    why = job.blocked_by
    return job.state, job.attempt, job.runner_id, why and why.reason, why and why.position


class Client:
    """`async with Client("http://127.0.0.1:8080", token=...) as client:` (the session opens on
    first use, in the running event loop). Errors are `ApiError`."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- any endpoint ------------------------------------------------------------------------

    async def send(self, call: Call[A]) -> A:
        """The call's answer, as its model."""
        return call.parse(await self.send_json(call))

    async def send_json(self, call: Call[Any]) -> Any:
        """The call's answer as the API sent it (parsed JSON, nothing dropped or reformatted)."""
        async with self._answer(call.method, call.path, call.params, call.body) as resp:
            text = await resp.text()
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise ApiError(resp.status, "malformed_answer", f"not JSON: {text[:200]!r}") from None

    @contextlib.asynccontextmanager
    async def _answer(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, once its status says success; else the API's error as an ApiError."""
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers)
        timeout = timeout or aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self._http.request(method, self.url + path, params=params, json=body, timeout=timeout) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise ApiError.from_answer(resp.status, _json_or_none(text), text)
                yield resp
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(None, "unreachable", f"cannot reach the orchestrator at {self.url}: {exc}") from None
        except TimeoutError:
            raise ApiError(None, "timeout", f"the orchestrator at {self.url} did not answer {method} {path}") from None

    # --- jobs ----------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobCreated:
        """Admit a job (201), or the job an earlier submission with the same key and spec admitted."""
        return await self.send(calls.submit(spec))

    async def get(self, job_id: JobId) -> JobDetail:
        """The job, and while it waits why (`blocked_by`)."""
        return await self.send(calls.get_job(job_id))

    async def list(
        self, *, pool: str | None = None, state: str | None = None, key: str | None = None, limit: int | None = None
    ) -> list[JobListed]:
        """Jobs, newest first."""
        return (await self.send(calls.list_jobs(pool=pool, state=state, key=key, limit=limit))).jobs

    async def cancel(self, job_id: JobId) -> JobView:
        """Cancel a job: a queued or assigned one at once; a running one's runner is told to stop it."""
        return await self.send(calls.cancel_job(job_id))

    async def watch(self, job_id: JobId) -> AsyncIterator[JobDetail]:
        """The job now, then each time it progresses (`progress_of`), until it has ended."""
        job = await self.get(job_id)
        yield job
        seen, pause = progress_of(job), FIRST_POLL_S
        while not job.state.final:
            await asyncio.sleep(pause)
            job = await self.get(job_id)
            if progress_of(job) != seen:
                seen, pause = progress_of(job), FIRST_POLL_S
                yield job
            else:
                pause = min(pause * 2, MAX_POLL_S)

    async def wait(self, job_id: JobId, *, timeout_s: float | None = None) -> JobDetail:
        """The job once it has ended; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            async for job in self.watch(job_id):
                if job.state.final:
                    return job
        raise AssertionError("unreachable: watch ends with the job's end")

    async def logs(self, job_id: JobId, *, offset: int = 0, follow: bool = False) -> AsyncIterator[bytes]:
        """The job's output from byte `offset`, as it arrives; followed, until the job has ended
        and all of it is out (no read timeout: a job may print nothing for hours)."""
        params = {"offset": str(offset), **({"follow": "true"} if follow else {})}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s) if follow else None
        async with self._answer("GET", calls.logs_path(job_id), params, timeout=timeout) as resp:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except aiohttp.ClientPayloadError:
                message = f"the orchestrator at {self.url} closed the stream of job {job_id}'s output"
                raise ApiError(None, "stream_closed", message) from None

    # --- pools, runners, the leader ------------------------------------------------------------

    async def pools(self) -> list[PoolView]:
        return (await self.send(calls.list_pools())).pools

    async def pool(self, name: str) -> PoolView:
        return await self.send(calls.get_pool(name))

    async def put_pool(self, name: str, config: PoolConfig) -> PoolChanged:
        """Create or replace a pool: what `config` leaves out takes its default."""
        return await self.send(calls.put_pool(name, config))

    async def patch_pool(self, name: str, fields: Mapping[str, Any]) -> PoolChanged:
        """Change only the given fields of an existing pool."""
        return await self.send(calls.patch_pool(name, fields))

    async def delete_pool(self, name: str) -> PoolDeleted:
        """Delete a pool with no live jobs and no live runners (409 says what holds it)."""
        return await self.send(calls.delete_pool(name))

    # --- schedules ----------------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleView]:
        return (await self.send(calls.list_schedules())).schedules

    async def schedule(self, name: str) -> ScheduleView:
        """A schedule: its next fire time and the last job it fired."""
        return await self.send(calls.get_schedule(name))

    async def put_schedule(self, name: str, spec: ScheduleSpec) -> ScheduleView:
        """Create or replace a schedule (a changed cron or time zone starts it again from now)."""
        return await self.send(calls.put_schedule(name, spec))

    async def delete_schedule(self, name: str) -> ScheduleDeleted:
        """It fires no more; the jobs it fired are left as they are."""
        return await self.send(calls.delete_schedule(name))

    # --- rate limits --------------------------------------------------------------------------

    async def rate_limits(self) -> list[RateLimitView]:
        """Every rate limit, by key."""
        return (await self.send(calls.list_rate_limits())).rate_limits

    async def rate_limit(self, key: str) -> RateLimitView:
        """A rate limit, and where it stands now (its starts left, its next start)."""
        return await self.send(calls.get_rate_limit(key))

    async def put_rate_limit(self, key: str, config: RateLimitConfig) -> RateLimitView:
        """Create or change a rate limit (a change keeps the starts already made)."""
        return await self.send(calls.put_rate_limit(key, config))

    async def delete_rate_limit(self, key: str) -> RateLimitDeleted:
        """Lift a rate limit: jobs already admitted that name it start without it; new ones naming
        it are refused until it is set again."""
        return await self.send(calls.delete_rate_limit(key))

    # --- runners, the leader, stats ------------------------------------------------------------

    async def runners(self) -> list[RunnerView]:
        """Every runner, in id order (the API's pages, walked to the last)."""
        found: list[RunnerView] = []
        after: str | None = None
        while True:
            page = await self.send(calls.list_runners(limit=RUNNERS_PAGE, after=after))
            found += page.runners
            if page.next is None:
                return found
            after = page.next

    async def leader(self) -> LeaderView:
        return await self.send(calls.get_leader())

    async def stats(self) -> Stats:
        return await self.send(calls.get_stats())


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
