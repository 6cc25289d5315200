"""Publishing to JetStream and waiting until it stored every message: the relay's one by one path.

nats-py's `publish_async` costs 60 us of the client's CPU per message (a random token from
`secrets`, a semaphore, a future with its callback, the PubAck parsed into a dataclass). Here
every message's reply subject is one inbox of this publisher's and a number, under one wildcard
subscription; a batch counts its acks and waits once for the last, and an ack's JSON is read
only when it is a refusal: 33 us a message (2 cores; job events of 200 bytes, eight a batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from itertools import count

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orchestrator.errors import RequestFailed


class StoredBatch:
    """Messages published with `publish`, all stored by JetStream once `JetStreamPublisher.batch`
    ends."""

    def __init__(self, publisher: JetStreamPublisher) -> None:
        self._publisher = publisher
        self._numbers: list[int] = []  # of the messages published, in order
        self._answered = 0
        self._refusal: str | None = None  # the first refusal heard
        self._all_answered = asyncio.Event()

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        p = self._publisher
        n = next(p.numbers)
        p.waiting[n] = (self, subject)
        self._numbers.append(n)
        await p.nc.publish(subject, body, reply=f"{p.inbox}.{n}", headers=headers)

    def answered(self, refusal: str | None) -> None:
        if refusal is not None and self._refusal is None:
            self._refusal = refusal
        self._answered += 1
        if self._answered == len(self._numbers):
            self._all_answered.set()

    async def stored(self) -> None:
        """Once every message is answered: raises RequestFailed with the first refusal."""
        if self._answered < len(self._numbers):
            self._all_answered.clear()  # maybe set by an earlier last answer, before more were published
            await self._all_answered.wait()
        if self._refusal is not None:
            raise RequestFailed(self._refusal)

    def forget(self) -> None:
        for n in self._numbers:
            self._publisher.waiting.pop(n, None)


class JetStreamPublisher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.numbers = count()
        # By the number of each message still unanswered: its batch, and its subject.
        self.waiting: dict[int, tuple[StoredBatch, str]] = {}
        self._sub: Subscription | None = None

    async def start(self, pending_msgs: int, pending_bytes: int) -> None:
        self._sub = await self.nc.subscribe(
            f"{self.inbox}.*", cb=self._on_answer, pending_msgs_limit=pending_msgs, pending_bytes_limit=pending_bytes
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[StoredBatch]:
        """A batch to publish into, in order; on leaving, waits until JetStream stored each
        message (or had it already: a repeated `Nats-Msg-Id`), as long as the caller lets it (its
        timeout: acks that come later are dropped). Raises RequestFailed with the first refusal
        (no stream for a subject, a limit of the stream's) once every message was answered."""
        batch = StoredBatch(self)
        try:
            yield batch
            await batch.stored()
        finally:
            batch.forget()

    async def _on_answer(self, msg: Msg) -> None:
        try:
            n = int(msg.subject.rpartition(".")[2])
        except ValueError:  # not one of ours: someone published to this inbox
            return
        waiting = self.waiting.pop(n, None)
        if waiting is not None:  # else the answer to a batch that gave up
            batch, subject = waiting
            batch.answered(_refusal(msg, subject))


def _refusal(msg: Msg, subject: str) -> str | None:
    """Why JetStream did not store the message on `subject` this answer is for, or None: it did."""
    status = msg.headers.get("Status") if msg.headers else None
    if status == "503":  # from the server: nobody answers for the subject
        return f"no responders on {subject!r} (503: no stream stores it, or its stream has no leader)"
    if status is not None:
        return f"{subject!r}: status {status}"
    if b'"error"' not in msg.data:  # the usual case, read without parsing
        return None
    try:
        error = json.loads(msg.data).get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object: not a PubAck
        return f"{subject!r}: not a PubAck: {msg.data[:200]!r}"
    if error is None:  # a PubAck that only happens to say "error" (a domain's name)
        return None
    description = error.get("description", error) if isinstance(error, dict) else error
    return f"JetStream refused a message on {subject!r}: {description}"
