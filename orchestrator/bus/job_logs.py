"""Job output: one JetStream stream per deployment, one subject per job (`<ns>.v1.logs.<job id>`).

Why JetStream, not Postgres: output is bulk data, and Postgres is the dispatcher's critical
resource; a runner publishes straight to the stream, and a chunk is durable once JetStream
acknowledged it (file storage: it survives restarts of the orchestrator). A chunk resent after a
reconnect carries the same `Nats-Msg-Id` (job, attempt, offset) and is stored once; retention by
age is the stream's `max_age`. There is no second store to archive into (GitLab lost logs moving
Redis chunks to object storage).

A chunk is one message: bytes of one source (stdout, stderr, or the orchestrator's own note)
and headers naming its byte offset in the job's output, and the attempt. Offsets count every
byte the job wrote (Buildkite's offset-addressed chunks), so they stay stable when the runner
drops the middle of a long output: a reader sees the gap, and shows it as a marker line
(`gap_note`). Whether an attempt's output is complete is the job's state: a runner stores its
output before it reports the end. A later attempt continues at
the offset where the last one's output ended; a chunk of an older attempt stored after a newer
attempt began (a lost runner still printing) is not part of the job's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from orchestrator.errors import BusUnavailable

if TYPE_CHECKING:
    from orchestrator.bus.bus import Bus

# A resent chunk is stored once within this window: a runner retries a chunk until stored, so
# the window covers its retries across a reconnect.
DEDUP_WINDOW_S = 300.0
# How long a runner waits for JetStream to store a chunk before sending it again.
STORE_TIMEOUT_S = 5.0
# The headers of a chunk.
OFFSET, ATTEMPT, SOURCE = "Orch-Offset", "Orch-Attempt", "Orch-Source"
ERR_NO_MESSAGE_FOUND = 10037  # JetStream's answer to deleting a message it no longer has


@dataclass(frozen=True)
class LogChunk:
    offset: int  # of its first byte in the job's output
    attempt: int
    source: str  # stdout, stderr, or orchestrator (its own notes)
    data: bytes
    tail: bool = False  # part of the exact tail stored at the end, over what was shown live
    seq: int = 0  # its sequence in the stream (0 until stored)

    @property
    def stop(self) -> int:
        return self.offset + len(self.data)


def gap_note(missing: int) -> bytes:
    """What a reader shows where the runner dropped the middle of a long output."""
    return (
        f"\n[orchestrator: {missing} bytes of output left out here; a job's log keeps the first and last "
        f"halves of ORCH_LOG_MAX_BYTES, and past the first shows at most 1 MiB/s live]\n"
    ).encode()


def _headers(job_id: UUID, chunk: LogChunk, trace: dict[str, str]) -> dict[str, str]:
    return {
        **trace,
        # Unique per chunk (a resend is stored once): the exact tail may repeat the offset of a
        # live chunk it replaces, and JetStream remembers an id after its message is deleted.
        "Nats-Msg-Id": f"{job_id}:{chunk.attempt}:{chunk.offset}{':tail' if chunk.tail else ''}",
        OFFSET: str(chunk.offset),
        ATTEMPT: str(chunk.attempt),
        SOURCE: chunk.source,
    }


def _chunk(seq: int, data: bytes | None, headers: dict[str, str] | None) -> LogChunk:
    h = headers or {}
    return LogChunk(
        offset=int(h.get(OFFSET, 0)),
        attempt=int(h.get(ATTEMPT, 1)),
        source=h.get(SOURCE, "stdout"),
        data=data or b"",
        seq=seq,
    )


class JobLogs:
    """The job-output stream, as runners write it and the API reads it."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    @property
    def stream(self) -> str:
        return self._bus.subjects.job_logs_stream

    async def ensure_stream(self, max_age_s: float, max_bytes: int | None) -> None:
        """The stream, keeping output `max_age_s` and, given `max_bytes`, at most that much in all
        (the oldest goes first when full). JetStream books `max_bytes` of its disk up front."""
        await self._bus.ensure_stream(
            StreamConfig(
                name=self.stream,
                subjects=[self._bus.subjects.job_log()],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=max_age_s,
                max_bytes=max_bytes or -1,
                discard=DiscardPolicy.OLD,
                duplicate_window=DEDUP_WINDOW_S,
                allow_direct=True,  # reads are direct gets, answered without a consumer
            )
        )

    async def append(self, job_id: UUID, chunk: LogChunk, trace: dict[str, str]) -> int:
        """Store `chunk`; its sequence in the stream. Raises BusUnavailable unless JetStream
        acknowledged it (sending it again is safe: it is stored once)."""
        try:
            ack = await self._bus.js.publish(
                self._bus.subjects.job_log(job_id),
                chunk.data,
                timeout=STORE_TIMEOUT_S,
                headers=_headers(job_id, chunk, trace),
            )
        except Exception as exc:
            raise BusUnavailable(f"cannot store output of job {job_id}: {type(exc).__name__}: {exc}") from exc
        return int(ack.seq)

    async def drop(self, seq: int) -> None:
        """Delete one stored chunk (the runner trimming the middle of a long output). Not
        erased on disk (`no_erase`): overwriting each deleted chunk made trimming, and so a
        long output, ten times slower; the space is reclaimed with the block."""
        request = json.dumps({"seq": seq, "no_erase": True}).encode()
        try:
            reply = await self._bus.nc.request(
                f"{self._bus.js_api_prefix}.STREAM.MSG.DELETE.{self.stream}", request, timeout=STORE_TIMEOUT_S
            )
            error = json.loads(reply.data).get("error")
        except Exception as exc:
            raise BusUnavailable(f"cannot trim output chunk {seq}: {type(exc).__name__}: {exc}") from exc
        if error is not None and error.get("err_code") != ERR_NO_MESSAGE_FOUND:  # gone already: fine
            raise BusUnavailable(f"cannot trim output chunk {seq}: {error.get('description')}")

    async def end(self, job_id: UUID) -> int:
        """The offset past every chunk of the job stored so far (where a retry continues)."""
        return max([chunk.stop async for chunk in self.chunks(job_id)], default=0)

    async def chunks(self, job_id: UUID, after_seq: int = 0) -> AsyncIterator[LogChunk]:
        """The job's chunks stored after `after_seq`, in stream order, up to the newest."""
        subject = self._bus.subjects.job_log(job_id)
        seq = after_seq + 1
        while True:
            try:
                msg = await self._bus.js.get_msg(self.stream, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                return
            except Exception as exc:
                raise BusUnavailable(f"cannot read output of job {job_id}: {type(exc).__name__}: {exc}") from exc
            chunk = _chunk(msg.seq or seq, msg.data, msg.headers)
            yield chunk
            seq = chunk.seq + 1

    @contextlib.asynccontextmanager
    async def watch(self, job_id: UUID) -> AsyncIterator[asyncio.Event]:
        """An event set whenever a chunk of the job is published (a follower's wake-up; what
        was stored is then read from the stream)."""
        stored = asyncio.Event()

        async def on_chunk(msg: Any) -> None:
            stored.set()

        sub = await self._bus.nc.subscribe(self._bus.subjects.job_log(job_id), cb=on_chunk)
        try:
            yield stored
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class Assembly:
    """A job's output from its chunks in stream order: a chunk of an attempt older than one
    already seen is left out, a gap in offsets is shown as a note, and bytes before `offset`
    are skipped. `next_offset` is where the text given so far ends."""

    def __init__(self, offset: int = 0) -> None:
        self.next_offset = offset
        self.attempt = 0
        self._seen = 0  # the offset every kept chunk has reached

    def add(self, chunk: LogChunk) -> bytes:
        if chunk.attempt < self.attempt:
            return b""
        self.attempt = chunk.attempt
        gap_from = max(self._seen, self.next_offset)
        note = gap_note(chunk.offset - gap_from) if self._seen and chunk.offset > gap_from else b""
        self._seen = max(self._seen, chunk.stop)
        if chunk.stop <= self.next_offset:
            return note
        start = max(0, self.next_offset - chunk.offset)
        self.next_offset = chunk.stop
        return note + chunk.data[start:]
