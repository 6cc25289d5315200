"""Every service keeps the lifecycle contract: `stop` is safe before `start` and safe twice, a
stopped service refuses to start again (it would seem to run while serving nothing), and a
service can be started and stopped many times (a fresh instance each time) without leaking."""

from __future__ import annotations

import asyncio

import pytest

from app.runtime import SERVICES, Runtime
from orchestrator.bus import Bus
from orchestrator.lifecycle import Service
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests.support import eventually

ROUNDS = 15


@pytest.mark.parametrize("name", SERVICES)
async def test_start_stop_many_times(name: str, settings: Settings, store: Store, bus: Bus) -> None:
    runtime = Runtime(settings, SERVICES, migrate=False)
    runtime.store, runtime.bus = store, bus
    await store.pool_create_if_absent(settings.runner_pool, settings.runner_label_list())
    capacity = runtime.build("capacity")
    if name == "runner":  # a runner registers with capacity as it starts
        await capacity.start()
    never_started = runtime.build(name)
    await never_started.stop()
    await never_started.stop()
    assert not never_started.running
    with pytest.raises(RuntimeError, match=f"{never_started.name} was stopped"):
        await never_started.start()
    before: int | None = None
    for _ in range(ROUNDS):
        service = runtime.build(name)
        await service.start()
        assert service.running
        await service.stop()
        await service.stop()
        assert not service.running
        with pytest.raises(RuntimeError, match="was stopped"):
            await service.start()
        # Measured after the first round: the NATS client keeps one response inbox for good.
        before = before or len(asyncio.all_tasks())

    async def settled() -> bool:  # cancelled tasks finish on a later loop turn
        return len(asyncio.all_tasks()) <= (before or 0)

    await eventually(settled, timeout=5, what="every background task to stop")
    await capacity.stop()


async def test_stop_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives as its inner
    future completes (a runner's heartbeat request, stopped at that moment, looped on and its
    stop hung until the test timed out): stop cancels such a task again until it has ended."""
    sleeping, swallowed = asyncio.Event(), asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                sleeping.set()
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # as wait_for does when its future is done too
                if swallowed.is_set():
                    raise
                swallowed.set()

    service = Service()
    await service.start()
    task = service.spawn(loop(), "loop")
    await sleeping.wait()
    stopping = asyncio.create_task(service.stop())
    try:
        await asyncio.wait({stopping}, timeout=10)  # a deadline that cancels nothing (a timeout would)
        assert stopping.done() and swallowed.is_set() and task.cancelled()
    finally:
        task.cancel()
