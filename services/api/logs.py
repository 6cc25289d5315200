"""`GET /v1/jobs/{id}/logs`: a job's output (orchestrator/bus/job_logs.py), as text/plain or as
Server-Sent Events.

The whole output so far, or from byte `offset`; with `follow=true`, streamed as it is written
until the job has ended and every byte is out (a runner stores its output before it reports the
end, so once the job is final one more read has everything). Events name their end offset as
their `id`, so a browser's EventSource reconnect resumes exactly from `Last-Event-ID`.

A follower wakes on each chunk published for the job and on the job's news (finished, expired);
it also checks the job every `CHECK_EVERY_S`, in case either was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp_sse import sse_response

from orchestrator.bus.job_logs import Assembly, JobLogs
from orchestrator.store import Store
from schemas.jobs import JobState
from services.api.responses import error_response
from services.api.take import Waiters

CHECK_EVERY_S = 5.0
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _final(job: dict[str, Any] | None) -> bool:
    return job is None or JobState(job["state"]).final


class JobLogsView:
    def __init__(self, store: Store, logs: JobLogs, news: Waiters) -> None:
        self.store = store
        self.logs = logs
        self.news = news

    async def handle(self, request: web.Request, job: dict[str, Any]) -> web.StreamResponse:
        sse = "text/event-stream" in request.headers.get("Accept", "")
        given = request.query.get("offset") or (request.headers.get("Last-Event-ID") if sse else None) or "0"
        if not given.isdigit():
            return error_response(422, "invalid", f"offset {given!r} is not a byte offset (an integer >= 0)", "offset")
        follow = request.query.get("follow", "").lower()
        if follow not in TRUE + FALSE:
            return error_response(422, "invalid", f"follow {follow!r} is not true or false", "follow")
        texts = self._texts(job["id"], int(given), follow in TRUE)
        headers = {"Cache-Control": "no-cache"}
        if trace_id := _trace_id(job):
            headers["Orch-Trace-Id"] = trace_id  # the job's trace: its run span links every chunk
        if sse:
            async with sse_response(request, headers=headers) as events:
                async for text, end in texts:
                    await events.send(text.decode("utf-8", errors="replace"), id=str(end))
            return events
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        async for text, _ in texts:
            await response.write(text)
        await response.write_eof()
        return response

    async def _texts(self, job_id: UUID, offset: int, follow: bool) -> AsyncIterator[tuple[bytes, int]]:
        """The job's output from `offset`, each piece with the offset it ends at."""
        output = Assembly(offset)
        seq = 0

        async def read() -> AsyncIterator[tuple[bytes, int]]:
            nonlocal seq
            async for chunk in self.logs.chunks(job_id, seq):
                seq = chunk.seq
                if text := output.add(chunk):
                    yield text, output.next_offset

        if not follow:
            async for piece in read():
                yield piece
            return
        with self.news.watch(job_id) as news:
            async with self.logs.watch(job_id) as stored:
                while True:
                    stored.clear()
                    async for piece in read():
                        yield piece
                    if _final(await self.store.job_get(job_id)):
                        async for piece in read():  # stored before the end was reported
                            yield piece
                        return
                    await _either(stored, news, CHECK_EVERY_S)


async def _either(stored: asyncio.Event, news: asyncio.Queue[Any], timeout: float) -> None:
    """Until a chunk is published, the job has news, or `timeout` has passed."""
    waits = [asyncio.ensure_future(stored.wait()), asyncio.ensure_future(news.get())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for w in waits:
            with contextlib.suppress(asyncio.CancelledError):
                await w


def _trace_id(job: dict[str, Any]) -> str | None:
    parent = (job.get("trace_context") or {}).get("traceparent", "")
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 else None
