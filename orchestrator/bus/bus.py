"""The bus: one NATS connection (connection.py), publish / request / subscribe on typed topics
(topics.py), and the JetStream streams (the intake: intake.py; the job events: job_events.py),
each with the replicas the settings ask for (streams.py), every JetStream write riding out a
stream leader election with its `Nats-Msg-Id` (elections.py).

Only this package knows nats-py. Every message carries W3C trace context in its headers, and
every handler runs inside a consumer span continuing the sender's trace. A message that does not
parse, or holds what Postgres cannot store (NUL, in any field of any model), is answered (when it
is a request) with an error naming the field, and never reaches the handler; nor does a store
refusing a value as data (`InvalidInput`) leave a request unanswered.

Requests can travel in batches: `request_many` sends N events as one JSON array (header
`Orch-Batch`), the same subscription hands each to the handler concurrently and answers with
the array of replies, in order. Under load this turns N round trips into one, and lets the
handler's own batching (one transaction for many reports) see them together.

Bounded (issue 21): a subscription runs at most `MAX_HANDLERS` handler calls at once, batches
included (slots.py); its reader waits for a free slot, so a flood waits in the client's pending
buffer (`PENDING_MSGS` / `PENDING_BYTES` per subscription), and what overflows it is dropped by
nats-py as a slow consumer: counted per subscription (`dropped`) and logged, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError, SlowConsumerError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from orchestrator import telemetry
from orchestrator.bus import intake, job_events, streams
from orchestrator.bus.connection import CONNECT_WAIT_S, close, connect
from orchestrator.bus.credentials import NatsCredentials
from orchestrator.bus.jetstream_publish import JetStreamPublisher, StoredBatch
from orchestrator.bus.job_events import OutboxMessage
from orchestrator.bus.pull import Pull
from orchestrator.bus.slots import MAX_HANDLERS, HandlerSlots
from orchestrator.bus.subjects import Subjects
from orchestrator.bus.topics import RequestTopic, Topic, json_array, list_of
from orchestrator.errors import (
    BusUnavailable,
    InvalidInput,
    NoAnswer,
    NoResponders,
    RequestFailed,
    StoreUnavailable,
)
from schemas.events import ErrorDetail, Reply, error_from_validation
from schemas.storable import nul_in

if TYPE_CHECKING:
    from orchestrator.settings import Settings


M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")

_tracer = telemetry.tracer("orchestrator.bus")
_log = telemetry.get_logger("bus")

BATCH_HEADER = "Orch-Batch"
# What one subscription's client-side buffer holds while its handlers are busy, before nats-py
# drops messages as a slow consumer (its defaults, 512 Ki messages and 128 MiB, are per
# subscription too: a dozen busy subscriptions could hold 1.5 GB). A core subscription's
# messages are wakes (best effort: every consumer also sweeps) and requests (retried by their
# requester), so a drop costs latency, not a job.
PENDING_MSGS = 64 * 1024
PENDING_BYTES = 64 * 1024 * 1024


def _span_attrs(subject: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }


class Bus:
    def __init__(
        self,
        url: str,
        subjects: Subjects,
        *,
        name: str = "orchestrator",
        credentials: NatsCredentials | None = None,
        replicas: int = 1,
    ) -> None:
        self.url = url
        self.subjects = subjects
        self.name = name
        self.credentials = credentials or NatsCredentials()
        self.replicas = replicas  # of the streams and the lease bucket it creates (streams.py)
        self._on_reconnect: list[Callable[[], None]] = []
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._pulls: list[Pull] = []
        self._publisher: JetStreamPublisher | None = None  # made by the first stored_batch
        self._publisher_made = asyncio.Lock()
        self.atomic_events = False  # the job-events stream takes atomic batches (ensure_job_events_stream)
        # Messages nats-py dropped because a subscription's handlers fell behind, by the
        # subscription's subject (one key per subscription this process holds).
        self.dropped: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str, url: str | None = None) -> Bus:
        """The bus of a process of the orchestrator: the NATS at `url` (default: the settings'),
        in the settings' namespace, with their credentials."""
        url = url or settings.nats_url
        if not url:
            raise BusUnavailable("no NATS URL: set ORCH_NATS_URL")
        return cls(
            url,
            Subjects(settings.namespace),
            name=name,
            credentials=settings.nats_credentials,
            replicas=settings.nats_replicas,
        )

    async def connect(self, wait_s: float = CONNECT_WAIT_S) -> None:
        """Connect (see connection.py): raises BusUnavailable unless it did within `wait_s`."""
        self._nc = await connect(
            self.url,
            name=self.name,
            credentials=self.credentials,
            wait_s=wait_s,
            slow_consumer=self._dropped,
            on_reconnected=self._reconnected,
        )
        self._js = self._nc.jetstream(prefix=self.js_api_prefix)

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback()` each time the connection is back after an outage (what was heard over it
        meanwhile, a KV watch's news, may be missing); returns what stops it."""
        self._on_reconnect.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):  # stopped already
                self._on_reconnect.remove(callback)

        return stop

    def _reconnected(self) -> None:
        for callback in list(self._on_reconnect):
            callback()

    async def close(self) -> None:
        # A pull subscription has nothing to drain (what was not fetched is redelivered).
        for pull in self._pulls:
            with contextlib.suppress(Exception):  # already unsubscribed, or the connection is gone
                await pull.unsubscribe()
        self._pulls.clear()
        if self._publisher is not None:
            with contextlib.suppress(Exception):  # the connection is gone
                await self._publisher.stop()
            self._publisher = None
        if self._nc is not None:
            await close(self._nc)
        self._nc = None

    def _dropped(self, exc: SlowConsumerError) -> None:
        subject = exc.sub.subject if exc.sub is not None else exc.subject
        self.dropped[subject] += 1
        n = self.dropped[subject]
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood is told without a line per message
            _log.warning("NATS dropped a message on %s: its handlers fall behind (%d dropped so far)", subject, n)

    @property
    def js_api_prefix(self) -> str:
        """Where this client's account answers JetStream API requests (`$JS.API`, unless imported)."""
        return self.credentials.nats_js_api_prefix

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusUnavailable("the bus is not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusUnavailable("the bus is not connected")
        return self._js

    # --- core NATS -------------------------------------------------------------------------

    async def publish(self, topic: Topic[M], event: M) -> None:
        subject, body = topic.subject, topic.encode(event)
        with _tracer.start_as_current_span(
            f"send {subject}", kind=SpanKind.PRODUCER, attributes=_span_attrs(subject, "send")
        ):
            await self.nc.publish(subject, body, headers=telemetry.inject())

    async def publish_many(self, events: Sequence[tuple[Topic[M], M]]) -> None:
        """Publish a batch under one span: per-message spans cost more than the publish itself."""
        if not events:
            return
        messages = [(topic.subject, topic.encode(event)) for topic, event in events]
        with _tracer.start_as_current_span(
            "send batch",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.batch.message_count": len(events)},
        ):
            headers = telemetry.inject()
            for subject, body in messages:
                await self.nc.publish(subject, body, headers=headers)

    async def request(self, topic: RequestTopic[M, R], event: M, timeout: float) -> R:
        data = await self._request(topic.subject, topic.encode(event), {}, timeout)
        return self._reply(topic.subject, data, topic.reply.model_validate_json)

    async def request_many(self, topic: RequestTopic[M, R], events: Sequence[M], timeout: float) -> list[R]:
        """Many requests in one message; their replies in the same order."""
        subject = topic.subject
        data = await self._request(subject, topic.encode_many(events), {BATCH_HEADER: str(len(events))}, timeout)
        replies = self._reply(subject, data, list_of(topic.reply).validate_json)
        if len(replies) != len(events):
            raise RequestFailed(f"{subject} answered {len(replies)} of {len(events)} requests")
        return replies

    async def _request(self, subject: str, body: bytes, headers: dict[str, str], timeout: float) -> bytes:
        with _tracer.start_as_current_span(
            f"send {subject}", kind=SpanKind.CLIENT, attributes=_span_attrs(subject, "send")
        ):
            try:
                msg = await self.nc.request(subject, body, timeout=timeout, headers=telemetry.inject(headers))
            except NoRespondersError as exc:
                raise NoResponders(f"nobody serves {subject}") from exc
            except NatsTimeout as exc:
                raise NoAnswer(f"no answer on {subject} within {timeout}s") from exc
        return msg.data

    @staticmethod
    def _reply(subject: str, data: bytes, parse: Callable[[bytes], T]) -> T:
        try:
            return parse(data)
        except ValidationError:
            # A handler that failed to parse our request answers with a Reply naming the problem.
            reply = Reply.model_validate_json(data)
            detail = reply.error.message if reply.error else "unknown error"
            raise RequestFailed(f"{subject} refused the request: {detail}") from None

    async def subscribe(
        self,
        topic: Topic[M],
        handler: Callable[[M], Awaitable[BaseModel | None]],
        *,
        queue: str = "",
        invalid_reply: Callable[[ErrorDetail], BaseModel] = lambda error: Reply(ok=False, error=error),
        concurrent: bool = False,
        max_handlers: int = MAX_HANDLERS,
    ) -> Subscription:
        """Deliver the topic's parsed events to `handler`; a returned model is sent as the reply.

        A request that does not parse is answered with `invalid_reply(error)`. nats-py runs one
        subscription's callbacks one after another; `concurrent` handles each message in its own
        task instead, so independent requests can be batched together downstream. Either way at
        most `max_handlers` calls of `handler` run at once (the module note)."""
        subject = topic.subject
        slots = HandlerSlots(max_handlers)

        async def on_message(msg: Msg) -> None:
            ctx = telemetry.extract(msg.headers)
            with _tracer.start_as_current_span(
                f"process {subject}",
                context=ctx,
                kind=SpanKind.CONSUMER,
                attributes=_span_attrs(msg.subject, "process"),
            ) as span:
                batch = msg.headers is not None and BATCH_HEADER in msg.headers

                async def refuse(error: ErrorDetail) -> None:
                    span.set_status(trace.StatusCode.ERROR, error.message)
                    _log.warning("rejected message on %s: %s", msg.subject, error.message)
                    if msg.reply:
                        await msg.respond(invalid_reply(error).model_dump_json().encode())

                try:
                    events = topic.decode_many(msg.data) if batch else [topic.decode(msg.data)]
                except ValidationError as exc:
                    return await refuse(error_from_validation(exc))
                nul = nul_in(msg.data, events)
                if nul is not None:  # what Postgres cannot store is refused here, for every model
                    return await refuse(ErrorDetail(code="invalid", message=nul[1], field=nul[0]))
                try:
                    results = await slots.run(handler, events)
                except InvalidInput as exc:  # the store refused a value the schema let through
                    return await refuse(ErrorDetail(code="invalid", message=str(exc)))
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR, str(exc))
                    if isinstance(exc, StoreUnavailable | BusUnavailable):  # an outage, not a bug: no traceback
                        _log.warning("handler for %s failed: %s", msg.subject, exc)
                    else:
                        _log.exception("handler for %s failed", msg.subject)
                    return  # no reply: the requester times out and retries
                if msg.reply and all(result is not None for result in results):
                    body = json_array(results) if batch else results[0].model_dump_json().encode()  # type: ignore[union-attr]
                    await self.nc.publish(msg.reply, body, headers=telemetry.inject())

        async def in_turn(msg: Msg) -> None:
            await slots.take()
            try:
                await on_message(msg)
            finally:
                slots.give_back()

        in_flight: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.give_back()

        async def spawn(msg: Msg) -> None:
            await slots.take()  # the reader waits here for a free slot: the messages after wait in NATS's buffer
            task = asyncio.create_task(on_message(msg), name=f"bus.handle {subject}")
            in_flight.add(task)
            task.add_done_callback(done)

        return await self.nc.subscribe(
            subject,
            queue=queue,
            cb=spawn if concurrent else in_turn,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )

    # --- JetStream --------------------------------------------------------------------

    async def ensure_stream(self, config: StreamConfig) -> StreamInfo:
        """Create the stream with this bus's replicas, or bring an existing one to `config` (see
        streams.py)."""
        return await streams.ensure(self, config)

    async def ensure_intake_stream(self) -> None:
        await intake.ensure_stream(self)

    async def ensure_job_events_stream(self, max_age_s: float) -> None:
        """The stream of every job event (see `job_events.py`)."""
        self.atomic_events = await job_events.ensure_stream(self, max_age_s)

    @contextlib.asynccontextmanager
    async def stored_batch(self) -> AsyncIterator[StoredBatch]:
        """Messages published into it go to JetStream in order, all stored by the time it ends
        (RequestFailed names a refusal): see `jetstream_publish.py`."""
        async with self._publisher_made:  # the first caller makes it; the others wait for it
            if self._publisher is None:
                publisher = JetStreamPublisher(self.nc)
                await publisher.start(PENDING_MSGS, PENDING_BYTES)
                self._publisher = publisher
            publisher = self._publisher
        async with publisher.batch() as batch:
            yield batch

    async def publish_outbox(self, rows: Sequence[OutboxMessage]) -> None:
        """Publish the relay's rows to the job-events stream (see `job_events.py`)."""
        await job_events.publish(self, rows, atomic=self.atomic_events)

    async def intake_subscription(self, durable: str, *, ack_wait_s: float = 30.0) -> Pull:
        """A durable pull consumer shared by every admission instance (see `intake.py`); its
        `fetch` gives up to a batch of messages as soon as there are any."""
        pull = await intake.subscribe(self, durable, ack_wait_s)
        self._pulls.append(pull)
        return pull

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def ping(self, timeout: float, *, jetstream: bool = False) -> None:
        """A round trip to the server (and to JetStream), behind everything sent so far: raises
        unless answered in `timeout`."""
        await self._echo(timeout)
        if jetstream:
            await self.js.account_info()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the server has everything published, subscribed or unsubscribed so far."""
        try:
            await self._echo(timeout)
        except Exception as exc:
            raise BusUnavailable(f"cannot flush to NATS: {exc}") from exc

    async def _echo(self, timeout: float) -> None:
        """A message to ourselves, queued behind every command before it: once it is back, the
        server has processed them all. nats-py's own flush cannot say as much: it writes its
        PING straight to the socket, ahead of commands still in the client's buffer (2.16), so
        its PONG can come back before a SUB sent earlier has reached the server."""
        inbox = self.nc.new_inbox()
        echo = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(inbox, b"")
            await echo.next_msg(timeout=timeout)
        finally:
            with contextlib.suppress(Exception):  # already gone after its one message
                await echo.unsubscribe()

    async def submit(self, body: bytes, key: str | None, *, within_s: float = intake.SUBMIT_WITHIN_S) -> None:
        """Publish a job spec to the intake stream, as any producer would, until JetStream has
        it (a leader election in between: again with the same `Nats-Msg-Id`) or `within_s` has
        passed (BusUnavailable)."""
        await intake.submit(self, body, key, within_s=within_s)
