"""The bus holds a bounded number of handler calls per subscription (issue 21): a flood waits in
NATS's buffer instead of becoming one task per message, and what overflows that buffer is
counted as dropped, not lost silently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.bus import Bus
from orchestrator.bus import bus as bus_module
from orchestrator.metrics import Metrics
from schemas.events import Reply, RunnerHeartbeat, SlotAvailable
from tests.support import eventually

BOUND = 8
FLOOD = 200


class Gate:
    """A handler that blocks until released, counting the calls running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.handled: list[Any] = []
        self.release = asyncio.Event()

    async def __call__(self, event: Any) -> Reply:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.handled.append(event)
        return Reply(ok=True)


def handler_tasks(subject: str) -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == f"bus.handle {subject}" and not t.done())


@pytest.mark.parametrize("kind", ["events", "requests"])
async def test_a_flood_never_runs_more_handlers_than_the_bound_and_all_are_handled(bus: Bus, kind: str) -> None:
    gate = Gate()
    topic = bus.subjects.slot_available.any() if kind == "events" else bus.subjects.runner_heartbeat
    sub = await bus.subscribe(topic, gate, concurrent=True, max_handlers=BOUND)
    await bus.flush()
    requests: list[asyncio.Task[Reply]] = []
    if kind == "events":
        for i in range(FLOOD):
            await bus.publish(bus.subjects.slot_available.at(f"p{i}"), SlotAvailable(pool=f"p{i}", free=1))
    else:
        requests = [
            asyncio.create_task(bus.request(topic, RunnerHeartbeat(runner_id=f"r{i}", pool="p"), 30))
            for i in range(FLOOD)
        ]
    await bus.flush()  # back once every message before it has reached this client

    async def all_arrived() -> bool:
        # BOUND in handlers, one more held by the reader waiting for a slot, the rest in the buffer
        return gate.running == BOUND and sub.pending_msgs == FLOOD - BOUND - 1

    await eventually(all_arrived, what="the flood to fill the handlers and wait in NATS's buffer")
    assert handler_tasks(topic.subject) == BOUND  # no task for a message still waiting
    gate.release.set()
    if requests:
        assert all(r.ok for r in await asyncio.gather(*requests))

    async def all_handled() -> bool:
        return len(gate.handled) == FLOOD

    await eventually(all_handled, what="every message to be handled")
    assert gate.peak == BOUND
    assert bus.dropped[topic.subject] == 0


async def test_a_batch_runs_in_the_free_slots_only_and_is_answered_whole(bus: Bus) -> None:
    gate = Gate()
    topic = bus.subjects.runner_heartbeat
    await bus.subscribe(topic, gate, max_handlers=BOUND)
    events = [RunnerHeartbeat(runner_id=f"r{i}", pool="p") for i in range(50)]
    answering = asyncio.create_task(bus.request_many(topic, events, 30))

    async def slots_full() -> bool:
        return gate.running == BOUND

    await eventually(slots_full, what="the batch to take every slot")
    gate.release.set()
    replies = await answering
    assert len(replies) == 50 and all(r.ok for r in replies)
    assert sorted(e.runner_id for e in gate.handled) == sorted(e.runner_id for e in events)
    assert gate.peak == BOUND


async def test_what_overflows_the_buffer_is_counted_as_dropped(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "PENDING_MSGS", 10)
    gate = Gate()
    topic = bus.subjects.slot_available.any()
    await bus.subscribe(topic, gate, concurrent=True, max_handlers=1)
    await bus.flush()
    for i in range(50):
        await bus.publish(bus.subjects.slot_available.at("p"), SlotAvailable(pool="p", free=i + 1))
    await bus.flush()
    # At most one in the handler, one held by the reader and ten in the buffer (fewer when the
    # flood came faster than the reader took them): the others were dropped, and counted.
    dropped = bus.dropped[topic.subject]
    assert 50 - 12 <= dropped <= 50 - 10
    metrics = Metrics()
    metrics.watch_bus(bus)
    exported = metrics.registry.get_sample_value(
        "orchestrator_bus_dropped_messages_total", {"subscription": topic.subject}
    )
    assert exported == dropped
    gate.release.set()

    async def the_rest_handled() -> bool:
        return len(gate.handled) == 50 - dropped

    await eventually(the_rest_handled, what="the messages kept to be handled")
