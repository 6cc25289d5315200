"""What every process of the application does around its work: its log set up with its secrets
redacted, an event loop (uvloop where it exists), and a wait for SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from orchestrator import logs
from orchestrator.settings import Settings


def setup_logging(settings: Settings) -> None:
    logs.configure(os.environ.get("ORCH_LOG_LEVEL", "INFO"), secrets=settings.secret_values())


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The coroutine on uvloop where it exists (as every command of the application runs)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
