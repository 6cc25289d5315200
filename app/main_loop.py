"""What every process of the application does around its work: its log set up with its secrets
redacted, an event loop (uvloop where it exists) with the cyclic garbage collector tuned for a
service, and SIGINT / SIGTERM / SIGHUP: the first stops it gracefully, a second at once (Ctrl-C
twice)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from orchestrator import logs
from orchestrator.settings import Settings

# A plain logger: the client commands import this module, and need none of telemetry's imports.
_log = logging.getLogger("orchestrator.main")


def setup_logging(settings: Settings) -> None:
    logs.configure(os.environ.get("ORCH_LOG_LEVEL", "INFO"), secrets=settings.secret_values())


T = TypeVar("T")

# The cyclic collector's thresholds: a collection of the young generation once 50,000 container
# objects more are alive than at its last one (CPython's default: 700), and of each older one
# every 10 of the younger (the default ratios). 700 suits a script: a service that keeps
# thousands of jobs' objects in flight walked them at nearly every collection, 15 to 20 % of the
# process's CPU at the benchmark's throughput, more than half of it in full collections walking
# every object alive since start (modules, pydantic's schemas), which `tune_gc` also freezes out
# of reach. Memory is still freed by reference counting at once; only garbage cycles wait longer.
GC_THRESHOLDS = (50_000, 10, 10)


@functools.cache  # once per process: a later freeze would keep whatever is alive then for good
def tune_gc() -> None:
    """Set GC_THRESHOLDS, and freeze what is alive now (imports, settings: never garbage) out of
    every collection's walk."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The coroutine on uvloop where it exists, the collector tuned (`tune_gc`): how the services,
    the runner and the server-side commands run (the HTTP clients' commands use asyncio.run)."""
    tune_gc()
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


class Signals:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) from now on: the first asks for a graceful
    stop (`stop` is set), the next for a stop at once (`now`), which `stopping` passes on to what
    is stopping. SIGHUP too: the embedded nats-server is in a session of its own, out of reach of
    the terminal's hang-up, and only a stop of ours ends it."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.now = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            _log.info("%s: stopping gracefully (%s again to stop at once)", sig.name, sig.name)
            self.stop.set()
        elif not self.now.is_set():
            _log.info("%s again: stopping at once", sig.name)
            self.now.set()

    async def stopping(self, stop: Awaitable[None], hurry: Callable[[], None]) -> None:
        """Await `stop`, calling `hurry` if the next signal comes meanwhile."""

        async def on_next() -> None:
            await self.now.wait()
            hurry()

        watch = asyncio.create_task(on_next())
        try:
            await stop
        finally:
            watch.cancel()
