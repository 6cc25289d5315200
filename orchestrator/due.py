"""Timers for moments nothing announces: when a pool's first job that is not due yet (delayed,
or waiting out a retry backoff) becomes due. Whoever reads that moment from Postgres (the
claim's `due_in_s`, the fleet's demand) arms one here; a timer, not a poll, so a pool with no
such job costs nothing.

One timer per key (a pool), the earliest kept: a later due time is armed again by the wake the
earlier one causes, since that wake reads the next moment afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DueTimers:
    def __init__(self, due: Callable[[str], None]) -> None:
        self._due = due
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def arm(self, key: str, delay_s: float) -> None:
        """Call `due(key)` in `delay_s` seconds, unless a timer for `key` goes off no later."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay_s)
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._due(key)

    def forget(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def clear(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
