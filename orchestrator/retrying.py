"""Retry a call with a doubling backoff: the one loop behind every "until it is answered"."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: type[Exception],
    what: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
    first_s: float,
    max_s: float,
    give_up_after_s: float | None = None,
    extra: dict[str, Any] | None = None,
) -> T:
    """`call()` until it does not raise `retry_on`: again after `first_s`, doubling up to `max_s`.
    With `give_up_after_s`, the error that would make it wait past that is raised instead."""
    delay = first_s
    give_up = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    while True:
        try:
            return await call()
        except retry_on as exc:
            if give_up is not None and time.monotonic() + delay > give_up:
                raise
            log.warning("%s failed, retrying: %s", what, exc, extra=extra)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)


class Backoff:
    """The waits between attempts of a loop that decides itself what is worth retrying: doubling
    from `first_s` up to `max_s`, and none that would end more than `within_s` after it began."""

    def __init__(self, within_s: float, *, first_s: float = 0.05, max_s: float = 1.0) -> None:
        self._deadline = time.monotonic() + within_s
        self._delay = first_s
        self.max_s = max_s
        self.waited = 0  # waits so far: the attempts that failed

    async def wait_or_raise(self, exc: BaseException) -> None:
        """Wait before the next attempt; raise `exc` instead when that wait would end too late."""
        if time.monotonic() + self._delay > self._deadline:
            raise exc
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self.max_s)
        self.waited += 1
