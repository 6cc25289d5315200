"""The JetStream intake: the work-queue stream producers submit job specs to (deduplicated by
`Nats-Msg-Id`), and the durable pull consumer every admission instance shares."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from orchestrator import telemetry
from orchestrator.bus.elections import through_elections
from orchestrator.bus.pull import Pull

if TYPE_CHECKING:
    from orchestrator.bus.bus import Bus

# JetStream deduplicates on Nats-Msg-Id inside this window; the job key in Postgres beyond it.
DEDUP_WINDOW_S = 120.0
# How long a submit keeps trying while the intake stream elects a leader (5-8 s after a crash of
# its leader): inside the dedup window, so every attempt is the same message.
SUBMIT_WITHIN_S = 30.0


async def ensure_stream(bus: Bus) -> None:
    config = StreamConfig(
        name=bus.subjects.intake_stream,
        subjects=[bus.subjects.submit.subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DEDUP_WINDOW_S,
    )
    await bus.ensure_stream(config)


async def subscribe(bus: Bus, durable: str, ack_wait_s: float) -> Pull:
    """A durable pull consumer shared by every admission instance (WorkQueue: one consumer),
    created unless it exists, and read by this process's own pull requests (pull.py)."""
    stream = bus.subjects.intake_stream
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=bus.subjects.submit.subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,  # transient failures redeliver until the store answers; bad input is term()ed
        max_ack_pending=10_000,
    )

    async def ensure_consumer(timeout: float) -> None:
        try:
            await bus.js.consumer_info(stream, durable, timeout=timeout)
        except NotFoundError:
            await bus.js.add_consumer(stream, config, timeout=timeout)

    # its creation rides out an election, as at a cluster's start
    await through_elections(ensure_consumer, what=f"the intake consumer {durable}", within_s=SUBMIT_WITHIN_S)
    pull = Pull(bus.nc, f"{bus.js_api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}")
    await pull.start()
    return pull


async def submit(bus: Bus, body: bytes, key: str | None, *, within_s: float = SUBMIT_WITHIN_S) -> None:
    """Publish a job spec to the intake stream, as any producer would, until JetStream
    acknowledges it: sent again with the same `Nats-Msg-Id` (the key; without one, an id of its
    own, so a resend is still one job) through a leader election, for at most `within_s`."""
    headers = {**telemetry.inject(), "Nats-Msg-Id": key or uuid.uuid4().hex}
    subject = bus.subjects.submit.subject
    await through_elections(
        lambda timeout: bus.js.publish(subject, body, timeout=timeout, headers=headers),
        what=f"submitting {headers['Nats-Msg-Id']}",
        within_s=within_s,
    )
