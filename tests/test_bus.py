"""The bus: typed events carry the sender's trace, and a request that does not parse is answered
with an error naming the field instead of reaching the handler."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from orchestrator import telemetry
from orchestrator.bus import Bus
from schemas.events import Reply, RunnerHeartbeat, SlotAvailable


async def test_consumer_continues_the_producers_trace(bus: Bus) -> None:
    telemetry.setup(record=True)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(event: SlotAvailable, msg: object) -> None:
        seen.set_result(trace.get_current_span().get_span_context().trace_id)

    subject = bus.subjects.slot_available("p1")
    await bus.subscribe(subject, SlotAvailable, handler)
    with telemetry.tracer("test").start_as_current_span("producer") as span:
        await bus.publish(subject, SlotAvailable(pool="p1", free=1))
        sent_trace = span.get_span_context().trace_id
    assert sent_trace != 0
    assert await asyncio.wait_for(seen, 5) == sent_trace


async def test_go_style_header_case_is_understood() -> None:
    ctx = telemetry.extract({"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert trace.get_current_span(ctx).get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C


async def test_invalid_request_is_answered_with_the_field(bus: Bus) -> None:
    called = False

    async def handler(event: RunnerHeartbeat, msg: object) -> Reply:
        nonlocal called
        called = True
        return Reply(ok=True)

    subject = bus.subjects.runner_heartbeat
    await bus.subscribe(subject, RunnerHeartbeat, handler)
    msg = await bus.nc.request(subject, b'{"runner_id": 5, "pool": "p"}', timeout=5)
    reply = Reply.model_validate_json(msg.data)
    assert not reply.ok and reply.error is not None
    assert (reply.error.code, reply.error.field) == ("invalid", "runner_id")
    msg = await bus.nc.request(subject, b"{oops", timeout=5)
    assert Reply.model_validate_json(msg.data).error.code == "malformed"  # type: ignore[union-attr]
    assert not called
