"""The service lifecycle every service shares.

`start()` returns once the service is serving; `stop()` waits until it has stopped, is safe
before `start()` and safe to call twice. A stopped service is not started again (`start()`
raises): what it held is released for good, so a new one is built instead. Background loops
are spawned through the service, so stopping cancels exactly what the service started, in
reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from orchestrator import telemetry

# How long a cancelled background task may take to end before it is cancelled again (its
# `finally` has that long; the loops here end at once).
RECANCEL_AFTER_S = 1.0


class Service:
    name = "service"

    def __init__(self) -> None:
        self._started = False
        self._stopped = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []
        self.log = telemetry.get_logger(self.name)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    async def start(self) -> None:
        if self._stopped:
            raise RuntimeError(f"{self.name} was stopped: build a new one to start again")
        if self._started:
            return
        self._started = True
        try:
            await self.on_start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._started or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        try:
            await self.on_stop()
        finally:
            for task in reversed(self._tasks):
                task.cancel()
            for task in self._tasks:
                await self._until_ended(task)
            for cleanup in reversed(self._cleanups):
                with contextlib.suppress(Exception):
                    await cleanup()

    async def _until_ended(self, task: asyncio.Task[Any]) -> None:
        """Wait for a cancelled task to end, cancelling it again while it runs on: Python 3.11's
        `asyncio.wait_for` (nats-py's requests use it) swallows a cancellation that arrives as
        its inner future completes (gh-86296), and the loop that called it would go round for
        ever, and this stop with it."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
            if done:
                break
            self.log.warning("task %s ran on after its cancellation: cancelled again", task.get_name())
            task.cancel()
        if not task.cancelled():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()  # its failure was reported as it happened (_report_crash)

    def hurry(self) -> None:
        """Make a stop under way (or the next one) finish at once, cutting its drain short (a
        second Ctrl-C). Most services stop at once anyway."""

    async def on_start(self) -> None:
        """Subclasses acquire what they need and subscribe here."""

    async def on_stop(self) -> None:
        """Subclasses drain here; spawned tasks and registered cleanups are handled after."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.name}.{name}")
        task.add_done_callback(self._report_crash)
        self._tasks.append(task)
        return task

    def on_cleanup(self, cleanup: Callable[[], Awaitable[Any]]) -> None:
        self._cleanups.append(cleanup)

    def _report_crash(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task %s crashed", task.get_name(), exc_info=task.exception())


async def every(interval_s: float, tick: Callable[[], Awaitable[Any]], log: Any, what: str) -> None:
    """Run `tick` every `interval_s` seconds forever; a failing tick is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await tick()
        except Exception as exc:  # the next tick retries; Postgres or NATS may be back by then
            log.warning("%s failed: %s", what, exc)
