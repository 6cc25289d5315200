"""Watching KV keys for as long as a service needs them: a watch that fails (its stream electing a
leader, the connection replaced) is told of as a gap, since changes may have been missed, and
opened anew, with a backoff while that fails too; and stopped, task and watcher, when the service
ends. The lease and presence both watch this way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from orchestrator import telemetry

_log = telemetry.get_logger("kv_watch")


async def keep_watching(
    kv: KeyValue,
    keys: str,
    watcher: Any,
    on_entry: Callable[[Any], None],
    on_gap: Callable[[], None],
    what: str,
) -> None:
    """Give `on_entry` every entry of `watcher` (a watch of `keys`; None marks the end of the
    values present when it began) until it is stopped or this is cancelled; after a failure,
    `on_gap()`, then watch again."""
    backoff_s = 0.1
    try:
        while True:
            try:
                async for entry in watcher:
                    backoff_s = 0.1
                    on_entry(entry)
                return  # stopped: its owner is closing
            except Exception as exc:
                _log.warning("watching %s failed (%s): watching it again", what, exc)
            on_gap()
            with contextlib.suppress(Exception):
                await watcher.stop()
            while True:
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                try:
                    watcher = await kv.watch(keys)
                    break
                except (NatsError, TimeoutError) as exc:
                    _log.debug("watching %s again failed: %s", what, exc)
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()


async def stop_watching(task: asyncio.Task[None] | None, watcher: Any) -> None:
    """End a watch `keep_watching` runs in `task`: the task cancelled and waited for, then
    `watcher` (the watch first opened) stopped, should the task never have begun."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if watcher is not None:
        with contextlib.suppress(Exception):
            await watcher.stop()
