"""Riding out a JetStream leader election: what the bus's JetStream calls do while a stream (or
the meta layer) has no leader.

On a NATS cluster, a kill -9 of the node leading a stream leaves it without a leader for 5-8 s
(PITFALLS.md): a publish then times out, or finds no responders, or is told JetStream is not ready
(503). A publish that carries a `Nats-Msg-Id` is sent again with the same id: JetStream stores it
once, however many of the attempts reached it. So every JetStream write of the system carries an
id and goes through `through_elections`: attempts of `attempt_s` each, a backoff between them,
for at most `within_s`, then `BusUnavailable`. A refusal that is not about leadership (a wrong
expected sequence, a bad request) is not retried: it is the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from orchestrator import telemetry
from orchestrator.errors import BusUnavailable
from orchestrator.retrying import Backoff

T = TypeVar("T")

# What JetStream answers while a stream, or the cluster's meta layer, has no leader.
LEADERLESS = (NatsTimeout, asyncio.TimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
# Each attempt waits this long for JetStream's answer: short enough for several attempts within
# an election, long enough for a PubAck on a loaded machine (~1 ms unloaded).
ATTEMPT_S = 2.0

_log = telemetry.get_logger("bus")


async def through_elections(
    call: Callable[[float], Awaitable[T]], *, what: str, within_s: float, attempt_s: float = ATTEMPT_S
) -> T:
    """`call(timeout)` until it returns, again after a backoff while it fails for want of a
    leader (`LEADERLESS`), for at most `within_s`: then BusUnavailable. Only for calls that are
    safe to repeat (a publish with a `Nats-Msg-Id`, a read)."""
    began = time.monotonic()
    backoff = Backoff(within_s, first_s=0.1, max_s=1.0)
    while True:
        left = began + within_s - time.monotonic()
        try:
            result = await call(max(0.1, min(attempt_s, left)))
        except LEADERLESS as exc:
            if backoff.waited == 0:
                _log.warning("%s: no answer from JetStream (%s); trying again for %g s", what, _name(exc), within_s)
            try:
                await backoff.wait_or_raise(exc)
            except LEADERLESS:
                raise BusUnavailable(f"{what}: JetStream did not answer within {within_s:g} s ({_name(exc)})") from exc
            continue
        if backoff.waited:
            _log.info("%s: answered after %d retries, %.1f s", what, backoff.waited, time.monotonic() - began)
        return result


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
