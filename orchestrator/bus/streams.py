"""The bus's JetStream streams (the intake, the job events, the job output) and the lease bucket's
stream, with the replicas `ORCH_NATS_REPLICAS` asks for.

`ensure` creates a stream with the bus's replicas, or brings an existing one to its config.
Replicas are only ever raised here: a stream with fewer is scaled up where the server allows it
(a cluster with that many nodes), and otherwise kept as it is, with a warning saying so; a stream
with more keeps them (another process asked for more, and lowering them would drop copies the
deployment counts on). A new stream the server cannot place with that many replicas (a single
server, a cluster with fewer nodes) stops start-up with an error saying what to set.

Every call rides out an election (elections.py): services start while a cluster is still
electing its meta leader, or a stream's leader.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from orchestrator import telemetry
from orchestrator.bus.elections import through_elections
from orchestrator.errors import ConfigurationError

if TYPE_CHECKING:
    from orchestrator.bus.bus import Bus

# How long start-up waits for JetStream to answer (a cluster electing its meta leader).
WITHIN_S = 30.0
# The server's refusals of a replica count it cannot place.
ERR_NOT_CLUSTERED = 10074  # replicas > 1 not supported in non-clustered mode
ERR_NO_PEERS = 10005  # no suitable peers for placement
ERR_INSUFFICIENT_RESOURCES = 10023

_log = telemetry.get_logger("bus")


def _unplaceable(exc: APIError) -> bool:
    return exc.err_code in (ERR_NOT_CLUSTERED, ERR_NO_PEERS, ERR_INSUFFICIENT_RESOURCES)


def placement_error(stream: str, replicas: int, exc: Exception) -> ConfigurationError | None:
    """What to tell of the server's refusal to create `stream` with `replicas`; None when the
    refusal was about something else."""
    if not isinstance(exc, APIError) or not _unplaceable(exc):
        return None
    return ConfigurationError(
        f"cannot create JetStream stream {stream} with {replicas} replicas: {exc.description}. "
        "Set ORCH_NATS_REPLICAS to at most the number of nodes of the NATS cluster (1 for a single server)"
    )


async def ensure(bus: Bus, config: StreamConfig) -> StreamInfo:
    """Create the stream with the bus's replicas, or bring an existing one to `config` (its
    replicas raised to the bus's where the server allows)."""
    js = bus.js
    try:
        info = await through_elections(lambda _: js.stream_info(config.name), what=_what(config), within_s=WITHIN_S)
    except NotFoundError:
        wanted = dataclasses.replace(config, num_replicas=bus.replicas)
        try:
            return await through_elections(lambda _: js.add_stream(wanted), what=_what(config), within_s=WITHIN_S)
        except APIError as exc:
            error = placement_error(config.name, bus.replicas, exc)
            if error is None:
                raise
            raise error from None
    return await _update(bus, info, config)


async def ensure_replicas(bus: Bus, stream: str) -> StreamInfo:
    """An existing stream made by someone else's API (the lease bucket's, by nats-py's KV), its
    config kept, its replicas raised to the bus's where the server allows."""
    info = await through_elections(lambda _: bus.js.stream_info(stream), what=f"stream {stream}", within_s=WITHIN_S)
    if (info.config.num_replicas or 1) >= bus.replicas:
        return info
    return await _update(bus, info, info.config)


async def _update(bus: Bus, info: StreamInfo, config: StreamConfig) -> StreamInfo:
    have = info.config.num_replicas or 1
    wanted = dataclasses.replace(config, num_replicas=max(bus.replicas, have))
    what = _what(config)
    try:
        return await through_elections(lambda _: bus.js.update_stream(wanted), what=what, within_s=WITHIN_S)
    except APIError as exc:
        if not _unplaceable(exc) or wanted.num_replicas == have:
            raise
        _log.warning(
            "JetStream stream %s keeps its %d replicas: the server refused %d (%s). ORCH_NATS_REPLICAS asks for "
            "more than it can place: add NATS nodes, or set it to %d",
            config.name,
            have,
            wanted.num_replicas,
            exc.description,
            have,
        )
    kept = dataclasses.replace(config, num_replicas=have)
    return await through_elections(lambda _: bus.js.update_stream(kept), what=what, within_s=WITHIN_S)


def _what(config: StreamConfig) -> str:
    return f"stream {config.name}"
