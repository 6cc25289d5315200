"""The bus's connection to NATS: the first connect waits for a server that is not up yet but fails
at once on what retrying cannot fix; after it, the client reconnects forever, and says so once per
outage (a WARNING when the connection is lost, an INFO when it is back; the attempts between at
DEBUG, four a second). A slow consumer (a subscription whose buffer overflowed: nats-py drops
the message) goes to the caller's `slow_consumer`, which counts it. Closing works connected or not.

`ORCH_NATS_URL` may list the nodes of a cluster (comma-separated): the client connects to one and
moves to another when it is lost (nats-py's server pool, plus the servers the cluster tells it of).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, SlowConsumerError, StaleConnectionError

from orchestrator import telemetry
from orchestrator.bus.credentials import NatsCredentials, connect_options
from orchestrator.errors import BusUnavailable
from orchestrator.nats_servers import nats_servers
from orchestrator.redact import redact_url

_log = telemetry.get_logger("bus")

# How long the first connect waits for a NATS server that is not up yet.
CONNECT_WAIT_S = 30.0
RECONNECT_WAIT_S = 0.25

# What a lost connection and each failed attempt to get it back raise (an unexpected EOF is a
# StaleConnectionError): told by the outage's lines, not one line each.
_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, StaleConnectionError, ConnectionClosedError)


def _retry_cannot_fix(exc: Exception) -> bool:
    """Errors of the first connect that the next attempt would repeat: a certificate that does
    not verify, credentials the server refuses."""
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or "authorization violation" in text or "authentication" in text


class _Outages:
    """The log of one client's outages, from nats-py's callbacks: `error` (every failure, each
    reconnect attempt's too), `lost` (once per outage, after the error that ended the connection)
    and `back`."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.since: float | None = None  # when the current outage began (monotonic)
        self.cause: Exception | None = None  # the error that ended the connection

    def error(self, exc: Exception) -> None:
        if self.since is None and not isinstance(exc, _CONNECTION_ERRORS):
            # News while connected (a slow consumer, a permissions violation): one line each.
            _log.warning("NATS at %s: %s: %s", self.shown, type(exc).__name__, exc)
            return
        if self.since is None:
            self.cause = exc  # `lost` follows and says it
        _log.debug("NATS at %s: %s: %s", self.shown, type(exc).__name__, exc)

    def lost(self) -> None:
        if self.since is not None:
            return
        self.since = time.monotonic()
        why = f" ({type(self.cause).__name__}: {self.cause})" if self.cause else ""
        _log.warning("NATS: lost the connection to %s%s; reconnecting until it is back", self.shown, why)

    def back(self) -> None:
        took = f" after {time.monotonic() - self.since:.1f} s" if self.since is not None else ""
        self.since, self.cause = None, None
        _log.info("NATS: reconnected to %s%s", self.shown, took)


async def connect(
    url: str,
    *,
    name: str,
    credentials: NatsCredentials,
    wait_s: float = CONNECT_WAIT_S,
    slow_consumer: Callable[[SlowConsumerError], None] | None = None,
    on_reconnected: Callable[[], None] | None = None,
) -> Client:
    """Connect to the server, or one of the servers, `url` lists, waiting up to `wait_s` for
    one that is not up yet (containers start in any order), but failing at once on what
    retrying cannot fix (wrong credentials, a certificate that does not verify). Once
    connected, the client reconnects forever; `on_reconnected()` is called each time it has."""
    try:
        servers = nats_servers(url)
    except ValueError as exc:
        raise BusUnavailable(f"ORCH_NATS_URL: {exc}") from None
    shown = redact_url(url)
    last_error: list[Exception] = []
    connected: list[Client] = []  # the client, once the first connect succeeded
    outages = _Outages(shown)

    async def on_error(exc: Exception) -> None:
        # nats-py retries every failure of the first connect as well; it calls this each time.
        if not connected:
            last_error[:] = [exc]
            if _retry_cannot_fix(exc):
                connecting.cancel()
        elif isinstance(exc, SlowConsumerError) and slow_consumer is not None:  # one per dropped message
            slow_consumer(exc)
        else:  # nats-py's default logs a traceback per reconnect attempt, 4 a second
            outages.error(exc)

    async def on_disconnected() -> None:
        if connected and not (connected[0].is_closed or connected[0].is_draining):  # not our own close
            outages.lost()

    async def reconnected() -> None:
        outages.back()
        if on_reconnected is not None:
            on_reconnected()

    connecting = asyncio.ensure_future(
        nats.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=reconnected,
            **connect_options(credentials),
        )
    )
    try:
        await asyncio.wait({connecting}, timeout=wait_s)
    finally:
        timed_out = not connecting.done()
        if timed_out:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
    why = f": {last_error[0]}" if last_error else ""
    if timed_out:
        raise BusUnavailable(f"cannot connect to NATS at {shown} within {wait_s:g} s{why}")
    if connecting.cancelled():
        raise BusUnavailable(f"NATS at {shown} refused the connection{why}")
    if connecting.exception() is not None:
        raise BusUnavailable(f"cannot connect to NATS at {shown}: {connecting.exception()}")
    connected.append(connecting.result())
    return connected[0]


async def close(nc: Client) -> None:
    """Close for good. Connected: drain first (what was published leaves, subscriptions finish
    what they hold). Reconnecting: what it buffered has nowhere to go, and nats-py 2.16's close
    would write it to the closed socket and fail half way ("the handler is closed" under
    uvloop), leaving its tasks behind: drop the buffer first (nats-py has no call for that)."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await nc.drain()
            return
        except Exception:  # lost meanwhile, or the drain timed out: closing anyway
            if nc.is_closed:
                return
    if not nc.is_connected:
        nc._pending.clear()
        nc._pending_data_size = 0
    await nc.close()
