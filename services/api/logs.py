"""`GET /v1/jobs/{id}/logs`: a job's output (orchestrator/bus/job_logs.py), as text/plain or as
Server-Sent Events.

The whole output so far, or from byte `offset`; with `follow=true`, streamed as it is written
until the job has ended and every byte is out. A runner stores its output before it reports the
end, so once the job is final one more read has everything; when the server ended it instead
(timed out, runner lost, expired), what its runner still ships later is in a later read, not in
the follow. Events name their end offset as their `id`, so a browser's EventSource reconnect
resumes exactly from `Last-Event-ID` (which wins over `offset`: EventSource reconnects to the
same URL); a last `end` event says the output is complete, so the browser stops reconnecting.

A follower wakes on each chunk published for the job and on the job's news (finished, expired);
it also checks the job every `CHECK_EVERY_S`, in case either was lost, and whether its client is
still there. It ends when the server stops. A client that went away is no error: a follow ends
quietly when a write finds it gone (`_delivered`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp_sse import sse_response

from orchestrator.bus.job_logs import Assembly, JobLogs
from orchestrator.store import Store
from schemas.jobs import JobState
from services.api.params import FOLLOW, FOLLOWING, OFFSET
from services.api.responses import error_response
from services.api.take import Waiters

CHECK_EVERY_S = 5.0
REREAD_AFTER_S = 0.05
LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")


def _final(job: dict[str, Any] | None) -> bool:
    return job is None or JobState(job["state"]).final


class JobLogsView:
    def __init__(self, store: Store, logs: JobLogs, news: Waiters) -> None:
        self.store = store
        self.logs = logs
        self.news = news

    async def handle(self, request: web.Request, job: dict[str, Any]) -> web.StreamResponse:
        sse = "text/event-stream" in request.headers.get("Accept", "")
        offset, follow = OFFSET.parse(request), FOLLOW.parse(request) in FOLLOWING
        if sse and "Last-Event-ID" in request.headers:
            given = request.headers["Last-Event-ID"]
            if not LAST_EVENT_ID.fullmatch(given):
                message = f"Last-Event-ID {given[:40]!r} is not a byte offset (0 or more)"
                return error_response(422, "invalid", message, "Last-Event-ID")
            offset = int(given)
        headers = {"Cache-Control": "no-cache"}
        if trace_id := _trace_id(job):
            headers["Orch-Trace-Id"] = trace_id  # the job's trace: its run span links every chunk
        async with contextlib.aclosing(self._texts(request, job["id"], offset, follow)) as texts:
            if sse:
                return await _events(request, headers, texts)
            response = web.StreamResponse(headers={**headers, "Content-Type": "text/plain; charset=utf-8"})
            if not await _delivered(response.prepare(request)):
                return response
            async for text, _ in texts:
                if not await _delivered(response.write(text)):
                    return response
            await _delivered(response.write_eof())
            return response

    async def _texts(
        self, request: web.Request, job_id: UUID, offset: int, follow: bool
    ) -> AsyncIterator[tuple[bytes, int]]:
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
        async with self.news.watch(job_id) as news, self.logs.watch(job_id) as stored:
            final = False
            while True:
                stored.clear()
                before = seq
                async for piece in read():
                    yield piece
                if final:  # read once more after the job was seen final: done
                    return
                if stored.is_set() and seq == before:
                    # Published, and heard before JetStream had stored it: read again shortly.
                    await asyncio.sleep(REREAD_AFTER_S)
                    continue
                final = _final(await self.store.job_get(job_id))
                if not final and not await _either(stored, news, CHECK_EVERY_S):
                    return  # the server is stopping
                if request.transport is None or request.transport.is_closing():
                    return  # its client has gone


async def _events(
    request: web.Request, headers: dict[str, str], texts: AsyncIterator[tuple[bytes, int]]
) -> web.StreamResponse:
    """As Server-Sent Events: UTF-8 decoded across chunk boundaries, each event's id the offset
    of the last byte it carries in full, and an `end` event once the output is complete."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async with sse_response(request, headers=headers) as events:
        async for text, end in texts:
            piece = decoder.decode(text)
            held = len(decoder.getstate()[0])  # an incomplete character waits for the next piece
            if piece and not await _delivered(events.send(piece, id=str(end - held))):
                return events
        tail = decoder.decode(b"", final=True)
        if tail and not await _delivered(events.send(tail)):
            return events
        await _delivered(events.send("", event="end"))
    return events


async def _delivered(write: Awaitable[Any]) -> bool:
    """Whether a write reached the client: False when it has gone (a follower that stopped, a tab
    closed), which is no error of ours. Only writes: a reset from upstream (NATS, Postgres) is one."""
    try:
        await write
    except ConnectionResetError:
        return False
    return True


async def _either(stored: asyncio.Event, news: asyncio.Queue[Any], timeout: float) -> bool:
    """Until a chunk is published, the job has news, or `timeout` has passed; False when the
    server is stopping (the news queue says so with None)."""
    waits = [asyncio.ensure_future(stored.wait()), asyncio.ensure_future(news.get())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for w in waits:
            with contextlib.suppress(asyncio.CancelledError):
                await w
    got = waits[1]
    return not (got.done() and not got.cancelled() and got.result() is None)


def _trace_id(job: dict[str, Any]) -> str | None:
    parent = (job.get("trace_context") or {}).get("traceparent", "")
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 else None
