"""`ORCH_NATS_URL` as a list of servers: one URL, or the nodes of a NATS cluster comma-separated
(`nats://n1:4222,nats://n2:4222,nats://n3:4222`), as nats-py takes them (`servers=[...]`).

The settings validate it with this, so a bad list stops start-up naming the server that is wrong
(by its place, never its text: a URL may hold a password); the bus connects with it."""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("nats", "tls", "ws", "wss")
_WEBSOCKET = ("ws", "wss")


def nats_servers(url: str) -> list[str]:
    """The servers `url` lists, in order; ValueError saying which one is wrong, and why."""
    servers = [part.strip() for part in url.split(",")]
    schemes = set()
    for n, server in enumerate(servers, 1):
        where = f"server {n} of {len(servers)}" if len(servers) > 1 else "the server"
        if not server:
            raise ValueError(f"{where} is empty (a stray comma?): list servers as nats://host:port,nats://host:port")
        # nats-py reads a bare `host:port` as nats://host:port.
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{where} has the scheme {parts.scheme!r}: use one of {', '.join(SCHEMES)}")
        try:
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            raise ValueError(f"{where} has a port that is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{where} names no host")
        schemes.add(parts.scheme in _WEBSOCKET)
    if len(schemes) > 1:
        raise ValueError("the servers mix websocket (ws, wss) and plain (nats, tls) URLs: NATS clients cannot")
    return servers
