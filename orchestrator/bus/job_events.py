"""The job-events stream: its configuration, and the relay's publishing into it.

Durable outbox rows go to the stream with `Nats-Msg-Id` = the event id: a large batch as JetStream
atomic batches (one PubAck per batch instead of one per event); a batch holding an event the
stream already has (a relay that published but died before deleting its rows) is refused whole,
and is then published one by one, so JetStream drops the repeats. A small batch goes one by one
from the start: an atomic batch has a fixed cost of about 1.5 ms of nats-server's CPU and 2.5 ms
of waiting, where one event published alone costs 0.3 ms of CPU (client and server) and of
waiting. The rest (a runner's cancel notice) goes on core NATS, best effort.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from orchestrator import telemetry
from orchestrator.errors import BusUnavailable, RequestFailed

if TYPE_CHECKING:
    from orchestrator.bus.bus import Bus


class OutboxMessage(Protocol):
    """What the relay hands the bus (the store's outbox rows)."""

    id: Any
    subject: str
    body: bytes
    durable: bool


# The job-events stream's window: a relay that published but died before deleting the rows
# publishes them again when the next relay takes over (at once, or once the system is back):
# deduplicated inside this window; later than that a consumer sees the event id again.
EVENTS_DEDUP_WINDOW_S = 600.0
# How long the relay waits for JetStream to acknowledge a batch of events.
PUBLISH_ACK_TIMEOUT_S = 5.0
# Events per atomic batch: JetStream's default limit (max_batch_size) is 1000.
ATOMIC_BATCH_MAX = 1000
# Fewer durable events than this go one by one: below it that costs less CPU (the client's and
# nats-server's) and less waiting for the last PubAck. CPU an event, one by one vs atomic, three
# runs: 16 events 67 vs 162 us, 256: 34-43 vs 37-51, 512: 41-52 vs 36-45 (`python -m bench.atomic`,
# 2 cores; one by one through jetstream_publish.py: 256 was the bound with nats-py's publish_async).
# So a batch goes atomic only when the relay took as many rows as it takes at once (outbox.BATCH,
# 512: a backlog), all durable.
ATOMIC_BATCH_MIN = 512
# The relay gives the event loop back this often while it publishes a batch: publishing into the
# client's buffer never waits, and a backlog of 100k events would otherwise starve the process's
# other services (dispatch, admission) for seconds.
YIELD_EVERY = 64
# JetStream's refusal of an atomic batch holding a Nats-Msg-Id it already has.
ERR_BATCH_DUPLICATE_MSG_ID = 10201


def _batch_stored(ack: dict[str, Any], size: int) -> bool:
    """JetStream's answer to an atomic batch's commit: True when it stored all `size`, False when
    it refused the batch for a `Nats-Msg-Id` it already has (nothing of it stored); any other
    refusal raises."""
    error = ack.get("error")
    if error is not None:
        if error.get("err_code") == ERR_BATCH_DUPLICATE_MSG_ID:
            return False
        raise RequestFailed(f"atomic batch of {size} refused: {error.get('description')}")
    if ack.get("count") != size:
        raise RequestFailed(f"atomic batch of {size}: {ack.get('count')} stored")
    return True


async def ensure_stream(bus: Bus, max_age_s: float) -> bool:
    """The stream of every job event, kept `max_age_s` (producers follow it with durable
    consumers). Its subjects name each verb: never `jobs.submit` nor `jobs.submit.req`.
    Whether it takes atomic batches."""
    config = StreamConfig(
        name=bus.subjects.job_events_stream,
        subjects=[topic.any().subject for topic in bus.subjects.job_events],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age_s,
        duplicate_window=EVENTS_DEDUP_WINDOW_S,
        allow_atomic=True,
    )
    # A server before 2.12 ignores `allow_atomic`: the relay then publishes one by one.
    info = await bus.ensure_stream(config)
    return bool(info.config.allow_atomic)


async def publish(bus: Bus, rows: Sequence[OutboxMessage], *, atomic: bool, atomic_min: int | None = None) -> None:
    """Publish outbox rows in order: durable ones to the job-events stream with `Nats-Msg-Id` =
    the event id, acknowledged by JetStream; the rest on core NATS, best effort (not flushed).
    Raises BusUnavailable unless JetStream acknowledged every durable one.

    Durable rows go as atomic batches when there are at least `atomic_min` of them (by default
    `ATOMIC_BATCH_MIN`; one PubAck per batch instead of one per event), else one by one,
    pipelined. JetStream stores one connection's messages in the order they arrive, so these are
    stored in order too, except after a failure between two of them (the stream's leader lost
    mid-batch): the later one may be stored, the earlier only when the relay tries again. An
    atomic batch is stored whole or not at all. One holding an event the stream already has (a
    relay that published but died before deleting the rows) is refused whole by JetStream, and
    nothing of it is stored: those rows are then published one by one, each with its own PubAck,
    and JetStream drops the repeats."""
    headers = telemetry.inject()
    try:
        async with asyncio.timeout(PUBLISH_ACK_TIMEOUT_S):
            least = ATOMIC_BATCH_MIN if atomic_min is None else atomic_min
            if atomic and sum(row.durable for row in rows) >= least:
                await _publish_batches(bus, rows, headers)
            else:
                await _publish_each(bus, rows, headers)
            # Core rows after the last PubAck are not flushed: they are best effort (a runner's
            # cancel notice; its heartbeats carry the cancel too), and a flush cut short by this
            # timeout would break nats-py's read loop (it resolves the cancelled PONG future).
    except Exception as exc:
        raise BusUnavailable(f"cannot publish {len(rows)} events: {type(exc).__name__}: {exc}") from exc


async def _publish_batches(bus: Bus, rows: Sequence[OutboxMessage], headers: dict[str, str]) -> None:
    """In row order: core rows as they come, durable rows as atomic batches of at most
    ATOMIC_BATCH_MAX (each committed and acknowledged before the next begins)."""
    left = sum(1 for row in rows if row.durable)
    publish, absolute = bus.nc.publish, bus.subjects.absolute
    batch: list[OutboxMessage] = []
    batch_id = ""
    for n, row in enumerate(rows, 1):
        if n % YIELD_EVERY == 0:  # a backlog of events must not hold up the rest of the process
            await asyncio.sleep(0)
        subject = absolute(row.subject)
        if not row.durable:
            await publish(subject, row.body, headers=headers)
            continue
        if not batch:
            batch_id = uuid.uuid4().hex
        batch.append(row)
        left -= 1
        h = {
            **headers,
            "Nats-Msg-Id": str(row.id),
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": str(len(batch)),
        }
        if len(batch) < ATOMIC_BATCH_MAX and left:
            await publish(subject, row.body, headers=h)
            continue
        h["Nats-Batch-Commit"] = "1"
        reply = await bus.nc.request(subject, row.body, timeout=PUBLISH_ACK_TIMEOUT_S, headers=h)
        if not _batch_stored(json.loads(reply.data), len(batch)):
            await _publish_each(bus, batch, headers)
        batch = []


async def _publish_each(bus: Bus, rows: Sequence[OutboxMessage], headers: dict[str, str]) -> None:
    """One message per row, in order, pipelined: every durable one stored by JetStream before
    this returns (a repeat is dropped by JetStream)."""
    async with bus.stored_batch() as stored:
        for n, row in enumerate(rows, 1):
            if n % YIELD_EVERY == 0:  # as _publish_batches: a batch must not hold up the process
                await asyncio.sleep(0)
            subject = bus.subjects.absolute(row.subject)
            if row.durable:
                await stored.publish(subject, row.body, {**headers, "Nats-Msg-Id": str(row.id)})
            else:
                await bus.nc.publish(subject, row.body, headers=headers)
