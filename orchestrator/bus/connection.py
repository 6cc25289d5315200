"""The bus's connection to NATS: the first connect waits for a server that is not up yet but fails
at once on what retrying cannot fix; after it, the client reconnects forever, one log line each."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import nats
from nats.aio.client import Client

from orchestrator import telemetry
from orchestrator.bus.credentials import NatsCredentials, connect_options
from orchestrator.errors import BusUnavailable
from orchestrator.redact import redact_url

_log = telemetry.get_logger("bus")

# How long the first connect waits for a NATS server that is not up yet.
CONNECT_WAIT_S = 30.0


def _retry_cannot_fix(exc: Exception) -> bool:
    """Errors of the first connect that the next attempt would repeat: a certificate that does
    not verify, credentials the server refuses."""
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or "authorization violation" in text or "authentication" in text


async def connect(url: str, *, name: str, credentials: NatsCredentials, wait_s: float = CONNECT_WAIT_S) -> Client:
    """Connect, waiting up to `wait_s` for a server that is not up yet (containers start in
    any order), but failing at once on what retrying cannot fix (wrong credentials, a
    certificate that does not verify). Once connected, the client reconnects forever."""
    shown = redact_url(url)
    last_error: list[Exception] = []
    connected: list[Client] = []  # the client, once the first connect succeeded

    async def on_error(exc: Exception) -> None:
        # nats-py retries every failure of the first connect as well; it calls this each time.
        if not connected:
            last_error[:] = [exc]
            if _retry_cannot_fix(exc):
                connecting.cancel()
        else:  # one line: nats-py's default logs a traceback per reconnect attempt, 4 a second
            _log.warning("NATS at %s: %s: %s", shown, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if connected and not (connected[0].is_closed or connected[0].is_draining):  # not our own close
            _log.warning("NATS: disconnected from %s, reconnecting", shown)

    async def on_reconnected() -> None:
        _log.info("NATS: reconnected to %s", shown)

    connecting = asyncio.ensure_future(
        nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
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
