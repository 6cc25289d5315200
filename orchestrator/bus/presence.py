"""Presence: which dispatch instances are alive, announced in the lease bucket.

Each instance writes the key `instances.<its id in hex>` (hex: an id may hold characters a KV key
may not) with a per-message TTL, the lease TTL, renews it as often as its leases, and deletes it
when it stops. Every instance watches `instances.>`, so it learns of a newcomer, a graceful stop
or an expiry (the server's marker arrives as PURGE) the moment it happens, without listing or
polling; a watch that fails is opened anew (kv_watch.py). An instance counts as live while its
last write is younger than the TTL by this process's clock too, so a missed expiry event cannot
keep a dead instance live for ever, and a watch gap only makes the others look gone for a while
(then each takes free shards at once: the leases still allow one holder each). Its operations
wait at most half a TTL for JetStream, as the lease's do.

This process always counts itself live: it is running, whatever NATS last heard from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from orchestrator import telemetry
from orchestrator.bus.bus import Bus
from orchestrator.bus.kv_watch import keep_watching, stop_watching
from orchestrator.bus.lease import open_bucket
from orchestrator.errors import BusUnavailable

PREFIX = "instances"
# How long `open` waits for the watch to deliver the instances already present.
SYNC_TIMEOUT_S = 5.0

_log = telemetry.get_logger("presence")


def _key(instance: str) -> str:
    return f"{PREFIX}.{instance.encode().hex()}"


def _instance(key: str) -> str | None:
    try:
        return bytes.fromhex(key.removeprefix(f"{PREFIX}.")).decode()
    except ValueError:
        return None  # not one of ours


@dataclass
class _Seen:
    since: float  # live without a break since (monotonic)
    last: float  # its last write


class Presence:
    def __init__(self, bus: Bus, instance: str, *, ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.instance = instance
        self.ttl_s = ttl_s
        self._clock = clock
        self._value = json.dumps({"holder": instance}).encode()
        self._seen: dict[str, _Seen] = {}
        self._started = clock()
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def subject(self) -> str:
        return f"$KV.{self.bus.subjects.lease_bucket}.{_key(self.instance)}"

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.bus.nc.jetstream(timeout=max(0.5, self.ttl_s / 2))
        return self._js

    async def open(self) -> None:
        """Watch the others, announce this instance, and return once the instances already
        present are known (or after SYNC_TIMEOUT_S: they will come with the watch)."""
        self._kv = await open_bucket(self.bus, self.js)
        try:
            self._watcher = await self._kv.watch(f"{PREFIX}.>")
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailable(f"watching the dispatch instances failed: {exc}") from exc
        self._watch_task = asyncio.create_task(self._watch(), name="presence.watch")
        try:
            await self.announce()
        except BusUnavailable as exc:  # JetStream electing a leader: the next renewal announces it
            _log.warning("%s", exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await self._synced.wait()

    async def close(self) -> None:
        await stop_watching(self._watch_task, self._watcher)
        self._watch_task = self._watcher = None

    async def announce(self) -> None:
        """Write (or renew) this instance's key, for a TTL from now."""
        try:
            await self.js.publish(self.subject, self._value, msg_ttl=self.ttl_s)
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailable(f"announcing dispatch instance {self.instance} failed: {exc}") from exc

    async def withdraw(self) -> None:
        """Delete this instance's key: the others stop counting it at once, not at its expiry."""
        if self._kv is None:
            return
        try:
            await self._kv.delete(_key(self.instance))
        except (NatsError, TimeoutError) as exc:  # it expires on its own anyway
            _log.warning("withdrawing dispatch instance %s failed: %s", self.instance, exc)

    async def _watch(self) -> None:
        assert self._kv is not None
        await keep_watching(self._kv, f"{PREFIX}.>", self._watcher, self._heard, lambda: None, "dispatch instances")

    def _heard(self, entry: Any) -> None:
        if entry is None:  # the end of the values present when the watch began
            self._synced.set()
            return
        instance = _instance(entry.key)
        if instance is None:
            return
        if entry.operation in (KV_DEL, KV_PURGE):
            if self._seen.pop(instance, None) is not None:
                self._notify()
            return
        now = self._clock()
        seen = self._seen.get(instance)
        if seen is None or now - seen.last > self.ttl_s:  # new, or back after a gap
            self._seen[instance] = _Seen(since=now, last=now)
            self._notify()
        else:
            seen.last = now

    def live(self) -> dict[str, float]:
        """Every live instance, this one included, with since when it has been live (monotonic)."""
        now = self._clock()
        found = {i: s.since for i, s in self._seen.items() if now - s.last <= self.ttl_s}
        found.setdefault(self.instance, self._started)
        return found

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until an instance joins or leaves (True), or `timeout` (False)."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._changed.wait()
            return True
        except TimeoutError:
            return False
