"""A job's output, captured by its runner and shipped to the job-output stream as it is written.

The runner reads the job's stdout and stderr as they come and ships them in chunks
(orchestrator/bus/job_logs.py) of one source each: at most `CHUNK_BYTES`, and whatever is
waiting every `FLUSH_EVERY_S`, so a follower sees a line within a fraction of a second.

Backpressure: at most `IN_FLIGHT` chunks wait for the stream. A job printing faster than
JetStream stores stops being read, its pipe fills, and its next write blocks: the runner's
memory stays bounded however much a job prints, and chunks are stored one at a time, each
awaited (a chunk whose acknowledgement is lost is sent again and stored once).

The cap (`ORCH_LOG_MAX_BYTES` per attempt): the first half, the head, is shipped as written.
Past it the runner keeps the latest other half in memory (the tail), and ships from it live at
most `TAIL_LIVE_BYTES_PER_S` (a follower still sees recent output; a job printing 100 MB does
not make the stream store and then delete 100 MB, which cost dispatch more than half its
throughput on a 2-core machine); live tail chunks older than the other half are deleted. At the
end, if anything was not shipped live, the live tail is replaced by the exact tail (stored under
ids of its own: JetStream would take a chunk at a live one's offset for a repeat). What is
dropped is a gap in offsets, which readers show as a marker line saying how many bytes: never a
silent drop.

A chunk JetStream does not store within `ship_timeout_s` (the stream is gone, its disk full) ends
the shipping of this attempt's output, with a warning: the job's end is reported all the same,
never held by its log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar
from uuid import UUID

from orchestrator import telemetry
from orchestrator.bus.job_logs import JobLogs, LogChunk
from orchestrator.errors import BusUnavailable
from orchestrator.retrying import retrying

CHUNK_BYTES = 64 * 1024
FLUSH_EVERY_S = 0.25
IN_FLIGHT = 4
TAIL_LIVE_BYTES_PER_S = 1024 * 1024
# After the job's process has exited, how long its pipes may stay open (a background child
# still holding them) before the runner stops reading; what comes later is not kept.
DRAIN_AFTER_EXIT_S = 2.0
RETRY_MAX_S = 2.0


class OutputLost(Exception):
    """The stream did not store a chunk in time: the rest of this attempt's output is dropped."""


log = logging.getLogger("orchestrator.runner.output")
T = TypeVar("T")


class JobOutput:
    """One attempt's output: `open`, `pump` each pipe, then `close` (or `abort`)."""

    def __init__(
        self, logs: JobLogs, job_id: UUID, attempt: int, runner_id: str, max_bytes: int, ship_timeout_s: float
    ) -> None:
        self._logs = logs
        self.job_id = job_id
        self.attempt = attempt
        self.runner_id = runner_id
        self._max_bytes = max_bytes
        self._ship_timeout_s = ship_timeout_s
        self.lost = False  # shipping gave up (OutputLost): the rest is dropped
        self.offset = 0  # where the next byte goes in the job's output
        self._head_end = 0  # bytes before this offset are the head: kept as written
        self._buf = bytearray()
        self._source = "stdout"
        # A chunk to store; a list: the exact tail, to replace the live one; None: the end.
        self._queue: asyncio.Queue[LogChunk | list[LogChunk] | None] = asyncio.Queue(IN_FLIGHT)
        self._tail_budget = max_bytes - max_bytes // 2
        self._ring: collections.deque[LogChunk] = collections.deque()  # the latest tail bytes
        self._ring_bytes = 0
        self._live: collections.deque[tuple[int, int]] = collections.deque()  # (seq, size) shipped live
        self._live_bytes = 0
        self._allowance = float(TAIL_LIVE_BYTES_PER_S)  # a token bucket of one second
        self._refilled = time.monotonic()
        self._skipped = False  # some tail was not shipped live: the exact tail goes at the end
        self._trace = telemetry.inject()  # the run span: each chunk is linked to it
        self._tasks: list[asyncio.Task[None]] = []
        # Two pipes feed one buffer: a chunk's bytes and offset are decided under this lock.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Start shipping. A retry continues where the job's output ended, after a note."""
        if self.attempt > 1:  # after everything stored so far (a late chunk of an older attempt too)
            try:
                self.offset = await self._until_done(lambda: self._logs.end(self.job_id), "read the log's end")
            except OutputLost:
                self.lost = True
        self._head_end = self.offset + self._max_bytes // 2
        self._tasks = [
            asyncio.create_task(self._send(), name=f"output.send.{self.job_id}"),
            asyncio.create_task(self._tick(), name=f"output.tick.{self.job_id}"),
        ]
        if self.attempt > 1:
            await self.note(f"[orchestrator: attempt {self.attempt}, on runner {self.runner_id}]\n")

    async def note(self, text: str) -> None:
        """A line of the orchestrator's own in the job's output."""
        await self._add("orchestrator", text.encode())
        async with self._lock:
            await self._flush()

    async def pump(self, source: str, reader: asyncio.StreamReader) -> None:
        """Ship what the job writes to one pipe until it closes. Cancelled, it stops reading;
        what it read is kept (the buffer and offsets are never left half-updated)."""
        while data := await reader.read(CHUNK_BYTES):
            await asyncio.shield(self._add(source, data))

    async def close(self) -> None:
        """Ship what is left; returns once all of it is stored."""
        async with self._lock:
            await self._flush()
            if self._skipped:
                await self._queue.put([replace(c, tail=True) for c in _coalesced(self._ring)])
        await self._queue.put(None)
        send, tick = self._tasks
        tick.cancel()
        await send

    def abort(self) -> None:
        """Stop shipping at once (the job was dropped or fenced: not ours to report)."""
        for task in self._tasks:
            task.cancel()

    # --- inside ---------------------------------------------------------------------------------

    async def _add(self, source: str, data: bytes) -> None:
        async with self._lock:
            if source != self._source and self._buf:
                await self._flush()  # a chunk has one source
            self._source = source
            self._buf += data
            while len(self._buf) >= CHUNK_BYTES:
                await self._flush(CHUNK_BYTES)

    async def _flush(self, size: int | None = None) -> None:
        """Queue up to `size` buffered bytes (all by default) as chunks, split where the head
        ends so the head is exact; past it, into the tail."""
        take = bytes(self._buf[: size or len(self._buf)])  # under self._lock
        del self._buf[: len(take)]
        while take:
            cut = len(take)
            if self.offset < self._head_end < self.offset + cut:
                cut = self._head_end - self.offset
            chunk = LogChunk(self.offset, self.attempt, self._source, take[:cut])
            if chunk.offset < self._head_end:
                await self._queue.put(chunk)
            else:
                await self._keep(chunk)
            self.offset += cut
            take = take[cut:]

    async def _keep(self, chunk: LogChunk) -> None:
        """A chunk past the head: into the tail, and shipped live if the rate allows."""
        self._ring.append(chunk)
        self._ring_bytes += len(chunk.data)
        while self._ring_bytes > self._tail_budget:  # the oldest bytes leave (the front, cut)
            front = self._ring.popleft()
            extra = self._ring_bytes - self._tail_budget
            if len(front.data) > extra:
                self._ring.appendleft(replace(front, offset=front.offset + extra, data=front.data[extra:]))
                self._ring_bytes -= extra
            else:
                self._ring_bytes -= len(front.data)
        now = time.monotonic()
        self._allowance = min(TAIL_LIVE_BYTES_PER_S, self._allowance + (now - self._refilled) * TAIL_LIVE_BYTES_PER_S)
        self._refilled = now
        if self._allowance >= len(chunk.data):
            self._allowance -= len(chunk.data)
            await self._queue.put(chunk)
        else:
            self._skipped = True

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            async with self._lock:
                await self._flush()

    async def _send(self) -> None:
        while (item := await self._queue.get()) is not None:
            if self.lost:
                continue  # drained, so nothing waiting to queue a chunk is held
            try:
                await self._ship(item)
            except OutputLost as exc:
                self.lost = True
                log.warning("job %s: the rest of its output is dropped: %s", self.job_id, exc)

    async def _ship(self, item: LogChunk | list[LogChunk]) -> None:
        if isinstance(item, list):  # the exact tail replaces what was shipped of it live
            while self._live:
                await self._drop_oldest_live()
            for chunk in item:
                await self._store(chunk)
            return
        seq = await self._store(item)
        if item.offset >= self._head_end and item.data:
            self._live.append((seq, len(item.data)))
            self._live_bytes += len(item.data)
            while self._live_bytes > self._tail_budget:
                await self._drop_oldest_live()

    async def _store(self, chunk: LogChunk) -> int:
        return await self._until_done(lambda: self._logs.append(self.job_id, chunk, self._trace), "store output")

    async def _drop_oldest_live(self) -> None:
        seq, size = self._live.popleft()
        self._live_bytes -= size
        await self._until_done(lambda: self._logs.drop(seq), "trim output")

    async def _until_done(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call()` until the stream answers, for up to `ship_timeout_s` (then OutputLost)."""
        try:
            return await retrying(
                call,
                retry_on=BusUnavailable,
                what=f"job {self.job_id}: {what}",
                log=log,
                first_s=0.05,
                max_s=RETRY_MAX_S,
                give_up_after_s=self._ship_timeout_s,
            )
        except BusUnavailable as exc:
            raise OutputLost(f"cannot {what} for {self._ship_timeout_s:g}s: {exc}") from exc


async def pump_until(output: JobOutput, pumps: list[asyncio.Task[None]]) -> None:
    """After the job's process exited: let its pipes drain, up to DRAIN_AFTER_EXIT_S."""
    _, pending = await asyncio.wait(pumps, timeout=DRAIN_AFTER_EXIT_S)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if pending:
        await output.note(
            f"\n[orchestrator: output not read within {DRAIN_AFTER_EXIT_S:g}s of the job's process exiting is "
            "not kept (a process that left its session held its stdout or stderr)]\n"
        )


def _coalesced(chunks: collections.deque[LogChunk]) -> list[LogChunk]:
    """Adjacent chunks of one source joined, up to CHUNK_BYTES each (the tail was kept in the
    pieces it came in, some of them small)."""
    out: list[LogChunk] = []
    for chunk in chunks:
        last = out[-1] if out else None
        if (
            last
            and last.source == chunk.source
            and last.stop == chunk.offset
            and len(last.data) + len(chunk.data) <= CHUNK_BYTES
        ):
            out[-1] = replace(last, data=last.data + chunk.data)
        else:
            out.append(chunk)
    return out
