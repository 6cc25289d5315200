"""`orchestrator health`: one container healthcheck for every role of the one image.

Only the api has an HTTP port, so a probe of `/readyz` cannot be the image's HEALTHCHECK. Instead
the check runs what the container's role needs, with the container's own `ORCH_*` settings:

- api: its own `/readyz` on the local port, which proves the serving process reaches Postgres and
  NATS (a new connection from the probe would prove only that the servers are up);
- admission, dispatch: NATS with JetStream (the intake consumer, the lease) and Postgres with the
  schema migrated;
- capacity: NATS and Postgres; runner: NATS only (runners never touch Postgres);
- migrate: nothing (a one-shot; its exit code is its health).

The role is given as arguments, or read from the command line of PID 1, which in a container is
the process the image's ENTRYPOINT started. A crashed service needs no probe (its container exits
and is restarted); what a probe adds is "up but cut off from what it needs".
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Sequence
from pathlib import Path

from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings
from orchestrator.store import Store

NEEDS: dict[str, frozenset[str]] = {
    "admission": frozenset({"nats", "jetstream", "postgres"}),
    "capacity": frozenset({"nats", "postgres"}),
    "dispatch": frozenset({"nats", "jetstream", "postgres"}),
    "api": frozenset({"http"}),
    "runner": frozenset({"nats"}),
    "migrate": frozenset(),
}
CHECK_TIMEOUT_S = 5.0


def roles_from_argv(argv: Sequence[str], all_services: Sequence[str]) -> list[str] | None:
    """The roles an `orchestrator ...` command line runs; None when it is not one."""
    for i, arg in enumerate(argv):
        if arg == "serve":
            named = [a for a in argv[i + 1 :] if not a.startswith("-")]
            return list(all_services) if "all" in named else named
        if arg in ("runner", "migrate"):
            return [arg]
        if arg == "up":
            return [*all_services]
    return None


def pid1_argv() -> list[str]:
    try:
        return [a for a in Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:  # not Linux, or /proc hidden
        return []


def local_url(settings: Settings) -> str:
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.http_port}"


async def _nats(settings: Settings, jetstream: bool) -> None:
    if not settings.nats_url:
        raise RuntimeError("ORCH_NATS_URL is not set")
    bus = Bus.from_settings(settings, name="health")
    await bus.connect()
    try:
        await bus.ping(CHECK_TIMEOUT_S, jetstream=jetstream)
    finally:
        await bus.close()


async def _postgres(settings: Settings) -> None:
    if not settings.database_url:
        raise RuntimeError("ORCH_DATABASE_URL is not set")
    store = Store.from_settings(settings, max_size=1)
    await store.connect()
    try:
        await store.pool_list()  # a table of the schema: connected, and migrated
    finally:
        await store.close()


def _http(settings: Settings) -> None:
    with urllib.request.urlopen(f"{local_url(settings)}/readyz", timeout=CHECK_TIMEOUT_S) as resp:
        resp.read()


def needs_of(roles: Sequence[str] | None, settings: Settings) -> set[str]:
    """What the roles need; without roles (not started by the image), whatever is configured."""
    if roles is None:
        return {name for name, url in (("nats", settings.nats_url), ("postgres", settings.database_url)) if url}
    unknown = sorted(set(roles) - set(NEEDS))
    if unknown:
        raise ConfigurationError(f"unknown roles {unknown}: choose from {sorted(NEEDS)}")
    return set().union(*(NEEDS[r] for r in roles))


async def _probe(name: str, probe: Awaitable[None]) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except TimeoutError:
        return f"{name}: no answer within {CHECK_TIMEOUT_S}s"
    except Exception as exc:  # any failure is the answer: unhealthy, and why
        return f"{name}: {exc}"
    return None


async def check(settings: Settings, needs: set[str]) -> list[str]:
    """The problems found, as `what: why`; empty when healthy."""
    probes: dict[str, Awaitable[None]] = {}
    if "nats" in needs:
        probes["nats"] = _nats(settings, jetstream="jetstream" in needs)
    if "postgres" in needs:
        probes["postgres"] = _postgres(settings)
    if "http" in needs:
        probes["http"] = asyncio.to_thread(_http, settings)
    results = await asyncio.gather(*(_probe(name, probe) for name, probe in probes.items()))
    return [r for r in results if r]
