"""The bus: typed events carry the sender's trace, and a request that does not parse is answered
with an error naming the field instead of reaching the handler."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.js.api import StreamConfig
from opentelemetry import trace

from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.bus.bus import BATCH_HEADER
from orchestrator.bus.topics import json_array
from orchestrator.errors import BusUnavailable, RequestFailed
from schemas.events import ErrorDetail, Reply, RunnerHeartbeat, SlotAvailable
from tests.support import eventually, stream_events


class Recorder:
    """A handler that accepts every request and remembers it."""

    def __init__(self) -> None:
        self.calls: list[RunnerHeartbeat] = []

    async def __call__(self, event: RunnerHeartbeat) -> Reply:
        self.calls.append(event)
        return Reply(ok=True)


async def test_consumer_continues_the_producers_trace(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recording for this test only (monkeypatch puts the flag back): the tests after it run
    # unrecorded, as they do on their own, whatever the order.
    monkeypatch.setattr(telemetry, "_configured", telemetry._configured)
    telemetry.setup(record=True)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(event: SlotAvailable) -> None:
        seen.set_result(trace.get_current_span().get_span_context().trace_id)

    topic = bus.subjects.slot_available.at("p1")
    await bus.subscribe(topic, handler)
    with telemetry.tracer("test").start_as_current_span("producer") as span:
        await bus.publish(topic, SlotAvailable(pool="p1", free=1))
        sent_trace = span.get_span_context().trace_id
    assert sent_trace != 0
    assert await asyncio.wait_for(seen, 5) == sent_trace


async def test_invalid_request_is_answered_with_the_field(bus: Bus) -> None:
    handler = Recorder()
    topic = bus.subjects.runner_heartbeat
    await bus.subscribe(topic, handler)
    msg = await bus.nc.request(topic.subject, b'{"runner_id": 5, "pool": "p"}', timeout=5)
    reply = Reply.model_validate_json(msg.data)
    assert not reply.ok and reply.error is not None
    assert (reply.error.code, reply.error.field) == ("invalid", "runner_id")
    msg = await bus.nc.request(topic.subject, b"{oops", timeout=5)
    assert Reply.model_validate_json(msg.data).error.code == "malformed"  # type: ignore[union-attr]
    assert handler.calls == []


async def test_a_batch_of_requests_is_answered_in_order_and_handled_together(bus: Bus) -> None:
    in_flight, most_in_flight = 0, 0
    release = asyncio.Event()

    async def handler(event: RunnerHeartbeat) -> Reply:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        if most_in_flight == 3:
            release.set()
        await release.wait()  # every item of the batch is handled at once, not one by one
        in_flight -= 1
        known = event.runner_id != "ghost"
        return Reply(ok=known, error=None if known else ErrorDetail(code="unknown_runner", message=event.runner_id))

    topic = bus.subjects.runner_heartbeat
    await bus.subscribe(topic, handler)
    events = [RunnerHeartbeat(runner_id=r, pool="p") for r in ("a", "ghost", "b")]
    replies = await bus.request_many(topic, events, 5)
    assert [r.ok for r in replies] == [True, False, True]
    assert replies[1].error is not None and replies[1].error.message == "ghost"
    assert most_in_flight == 3


async def test_a_batch_that_does_not_parse_fails_naming_the_item_and_field(bus: Bus) -> None:
    handler = Recorder()
    topic = bus.subjects.runner_heartbeat
    await bus.subscribe(topic, handler)
    good = RunnerHeartbeat(runner_id="a", pool="p")
    batch: list[Any] = [good, SlotAvailable(pool="p", free=1)]  # as an untyped caller would pass it
    with pytest.raises(TypeError, match="SlotAvailable"):  # the topic refuses it before it leaves
        await bus.request_many(topic, batch, 5)
    # As a sender that does not use the bus would send it:
    body = json_array(batch)
    msg = await bus.nc.request(topic.subject, body, timeout=5, headers={BATCH_HEADER: "2"})
    reply = Reply.model_validate_json(msg.data)
    assert reply.error is not None and reply.error.field == "1.type"  # item 1, field type
    with pytest.raises(RequestFailed, match=r"1\.runner_id contains a NUL"):  # parses, but cannot be stored
        await bus.request_many(topic, [good, RunnerHeartbeat(runner_id="b\x00", pool="p")], 5)
    assert handler.calls == []


async def test_intake_fetch_returns_a_lone_job_at_once_and_a_backlog_in_batches(bus: Bus) -> None:
    await bus.ensure_intake_stream()
    intake = await bus.intake_subscription("fetch-test")
    # A fetch of up to 100 with a 60 s timeout, waiting on an empty stream when the job comes,
    # must return it then, not wait for 99 more that never come.
    fetching = asyncio.create_task(intake.fetch(100, timeout=60))
    stream = bus.subjects.intake_stream
    await eventually(lambda: _pull_waiting(bus, stream), what="the fetch to wait on the server")
    await bus.submit(b'{"pool": "p"}', "lone")
    lone = await asyncio.wait_for(fetching, 20)
    assert [m.headers["Nats-Msg-Id"] for m in lone] == ["lone"]
    for i in range(250):
        await bus.submit(b'{"pool": "p"}', f"k{i}")
    # A fetch returns what has come when it has some, so a batch may end where a read from the
    # socket did; it never holds more than asked for.
    batches = []
    while sum(map(len, batches)) < 250:
        batches.append(await asyncio.wait_for(intake.fetch(100, timeout=60), 20))
    got = [m.headers["Nats-Msg-Id"] for batch in batches for m in batch]
    assert got == [f"k{i}" for i in range(250)]  # each once, in order
    assert all(0 < len(batch) <= 100 for batch in batches)
    assert len(batches) <= 25, [len(batch) for batch in batches]  # batched (one by one would be 250)
    assert await intake.fetch(100, timeout=0.2) == []


async def test_an_intake_fetch_from_a_consumer_gone_fails_saying_so(bus: Bus) -> None:
    """The admission loop logs it and tries again after a pause (a consumer between leaders)."""
    await bus.ensure_intake_stream()
    intake = await bus.intake_subscription("gone")
    await bus.js.delete_consumer(bus.subjects.intake_stream, "gone")
    with pytest.raises(BusUnavailable, match="no one answers for the consumer"):
        await asyncio.wait_for(intake.fetch(10, timeout=30), 20)


async def test_an_intake_fetch_past_a_limit_of_the_consumer_fails_naming_it_rather_than_asking_again(bus: Bus) -> None:
    """A consumer made elsewhere with a smaller largest batch (it is used as it is found)."""
    await bus.ensure_intake_stream()
    stream = bus.subjects.intake_stream
    config = {"name": "small", "durable_name": "small", "ack_policy": "explicit", "max_batch": 5}  # not in nats-py's
    created = await bus.nc.request(
        f"$JS.API.CONSUMER.CREATE.{stream}.small", json.dumps({"stream_name": stream, "config": config}).encode()
    )
    assert "error" not in json.loads(created.data), created.data
    intake = await bus.intake_subscription("small")
    with pytest.raises(BusUnavailable, match="409 Exceeded MaxRequestBatch of 5"):
        await asyncio.wait_for(intake.fetch(10, timeout=30), 20)
    await bus.submit(b'{"pool": "p"}', "fits")
    assert [m.headers["Nats-Msg-Id"] for m in await asyncio.wait_for(intake.fetch(5, timeout=30), 20)] == ["fits"]


async def _pull_waiting(bus: Bus, stream: str) -> bool:
    return (await bus.js.consumer_info(stream, "fetch-test")).num_waiting > 0


async def test_a_stored_batch_ends_once_jetstream_stored_each_in_order_repeats_once(bus: Bus) -> None:
    """The relay's one by one path: a batch published again (a relay that died before deleting
    its rows) is taken, and JetStream keeps each message once."""
    await bus.ensure_job_events_stream(3600)
    subject = bus.subjects.job_admitted.at("stored").subject
    for ids in (range(5), range(7)):  # the first five again, then two new
        async with bus.stored_batch() as stored:
            for i in ids:
                await stored.publish(subject, json.dumps({"n": i}).encode(), {"Nats-Msg-Id": f"stored-{i}"})
    events = [e for e in await stream_events(bus, "admitted") if (e["msg_id"] or "").startswith("stored-")]
    assert [(e["n"], e["msg_id"]) for e in events] == [(i, f"stored-{i}") for i in range(7)]


async def test_a_stored_batch_waits_for_the_answer_to_each_message(bus: Bus) -> None:
    """Its subject has a core subscriber that does not reply, and no stream: no answer comes."""
    unanswered = bus.subjects.absolute("unanswered")
    listener = await bus.nc.subscribe(unanswered)
    await bus.flush()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), bus.stored_batch() as stored:
                await stored.publish(unanswered, b"{}", {})
    finally:
        await listener.unsubscribe()


async def test_a_stored_batch_on_a_subject_no_stream_stores_fails_at_once_naming_it(bus: Bus) -> None:
    subject = bus.subjects.absolute("nowhere.stored")
    with pytest.raises(RequestFailed, match=rf"no responders on '{subject}' \(503: no stream stores it"):
        async with asyncio.timeout(5):  # at once: the server answers, not the caller's timeout
            async with bus.stored_batch() as stored:
                await stored.publish(subject, b"{}", {})


async def test_a_stored_batch_refused_by_a_limit_of_the_stream_fails_with_jetstreams_reason(bus: Bus) -> None:
    """The message within the limit, published after the refused one, is stored all the same."""
    name = f"{bus.subjects.root}_small".replace(".", "_")
    subject = bus.subjects.absolute("small.stored")
    await bus.js.add_stream(StreamConfig(name=name, subjects=[subject], max_msg_size=64))
    with pytest.raises(RequestFailed, match=rf"JetStream refused a message on '{subject}': message size exceeds"):
        async with bus.stored_batch() as stored:
            await stored.publish(subject, b"x" * 65, {})
            await stored.publish(subject, b"fits", {})
    assert (await bus.js.stream_info(name)).state.messages == 1
