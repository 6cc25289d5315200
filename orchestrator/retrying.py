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
