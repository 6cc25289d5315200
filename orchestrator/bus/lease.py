"""A lease on a NATS KV key: the primitive behind leader election (PITFALLS.md has the recipe).

The bucket keeps one message per key (history 1) and was created with a limit-marker TTL, so an
expired lease leaves a marker that watchers see. Acquire = create-if-absent with a per-message
TTL; renew = a raw publish with the same TTL that expects our last revision (nats-py's
`kv.update` takes no TTL, so a renewed lease would never expire); a wrong-sequence answer means
someone else holds it. Release deletes the key (expecting our revision), so a standby watching
it takes over at once. The acquire revision only grows: it is the fencing epoch.

A KV watch can go silent (5-12 s across a leader change of the bucket's stream, skipping values
in between) and the connection can drop and come back: the news of that gap is a doubt. A standby
contends at once (it may have missed a vacancy); the holder re-reads the key's last message
(`verify`) and steps down unless its own write is still the last. A write by anyone else the
watch does show is a doubt too. Every write expects the key's last sequence, so two writers never
both succeed; `verify` makes a holder that lost the key notice before its next renewal does.

The bucket has the bus's replicas (ORCH_NATS_REPLICAS), raised on an existing one where the
server allows (streams.py).

Only this module knows the KV details; callers see `acquire() -> epoch | None`, `renew() -> bool`,
`release()`, `wait_vacated()`, `wait_doubt()`, `verify()` and `current()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError, BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from orchestrator import telemetry
from orchestrator.bus.bus import Bus
from orchestrator.bus.elections import through_elections
from orchestrator.bus.kv_watch import keep_watching, stop_watching
from orchestrator.bus.streams import WITHIN_S, ensure_replicas, placement_error
from orchestrator.errors import BusUnavailable

WRONG_LAST_SEQUENCE = 10071
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
# How long the server keeps the marker of an expired lease. Fixed, not derived from the lease
# TTL: the bucket's config is set once at creation and every instance must agree on it.
MARKER_TTL_S = 60

_log = telemetry.get_logger("lease")


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    revision: int


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout`; cleared either way."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
    finally:
        event.clear()


def _vacant(headers: dict[str, str] | None) -> bool:
    """A DEL / PURGE tombstone or the server's expiry marker: nobody holds the key."""
    if not headers:
        return False
    return headers.get("KV-Operation") in (KV_DEL, KV_PURGE) or "Nats-Marker-Reason" in headers


@contextlib.contextmanager
def _wrong_sequence_told() -> Iterator[None]:
    """The server's refusal of a write that expected another last sequence, raised as
    KeyWrongLastSequenceError (nats-py raises it as a plain APIError from a raw publish and from
    `kv.delete`)."""
    try:
        yield
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(description=exc.description) from exc
        raise


def _bus_error(exc: Exception) -> BusUnavailable:
    return BusUnavailable(f"lease operation failed: {type(exc).__name__}: {exc}")


async def open_bucket(bus: Bus, js: JetStreamContext | None = None) -> KeyValue:
    """The namespace's lease bucket, created on first use with the config expiry needs and the
    bus's replicas (an existing one's raised to them where the server allows); its operations
    through `js` (default: the bus's)."""
    name = bus.subjects.lease_bucket
    js = js or bus.js
    try:
        try:
            kv = await through_elections(lambda _: js.key_value(name), what=f"bucket {name}", within_s=WITHIN_S)
        except BucketNotFoundError:
            # Concurrent creators with the same config all succeed (stream create is idempotent).
            try:
                return await through_elections(
                    lambda _: js.create_key_value(
                        bucket=name, history=1, limit_marker_ttl=MARKER_TTL_S, replicas=bus.replicas
                    ),
                    what=f"bucket {name}",
                    within_s=WITHIN_S,
                )
            except APIError as exc:
                error = placement_error(f"KV_{name}", bus.replicas, exc)
                if error is None:
                    raise
                raise error from None
        await ensure_replicas(bus, f"KV_{name}")
        return kv
    except (NatsError, TimeoutError) as exc:
        raise _bus_error(exc) from exc


async def read_lease(bus: Bus, shard: str) -> LeaseInfo | None:
    """Who holds the lease of `shard` now, or None when nobody does."""
    return await Lease(bus, shard, holder="reader", ttl_s=1).current()


class Lease:
    def __init__(self, bus: Bus, shard: str, holder: str, *, ttl_s: int) -> None:
        if ttl_s < 1:
            raise ValueError("the lease TTL is whole seconds, at least 1")
        self.bus = bus
        self.shard = shard
        self.holder = holder
        self.ttl_s = ttl_s
        self.key = f"dispatch.{shard}"
        # Each lease operation waits at most half a TTL for JetStream (nats-py's default is 5 s,
        # past the lease itself): through a leader election, the next attempt comes sooner.
        self._op_timeout_s = max(0.5, ttl_s / 2)
        self._js: JetStreamContext | None = None
        # The nonce tells our own value from a namesake's (a restarted process with the same id).
        self._value = json.dumps({"holder": holder, "nonce": secrets.token_hex(8)}).encode()
        self.revision: int | None = None  # our last write while we hold the lease
        self._kv: KeyValue | None = None
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._vacated = asyncio.Event()
        self._doubt = asyncio.Event()  # what the watch told may be incomplete, or not ours
        self._stop_hearing: Callable[[], None] | None = None

    @property
    def subject(self) -> str:
        return f"$KV.{self.bus.subjects.lease_bucket}.{self.key}"

    @property
    def stream(self) -> str:
        return f"KV_{self.bus.subjects.lease_bucket}"

    async def open(self) -> None:
        """Open the bucket and start watching the key, before the first acquire, so no vacancy
        between the two is missed."""
        self._kv = await open_bucket(self.bus, self.js)
        try:
            self._watcher = await self._kv.watch(self.key)
        except (NatsError, TimeoutError) as exc:
            raise _bus_error(exc) from exc
        self._stop_hearing = self.bus.on_reconnect(self._gap)
        self._watch_task = asyncio.create_task(self._watch(), name=f"lease.watch.{self.shard}")

    async def close(self) -> None:
        if self._stop_hearing is not None:
            self._stop_hearing()
            self._stop_hearing = None
        await stop_watching(self._watch_task, self._watcher)
        self._watch_task = self._watcher = None

    async def _watch(self) -> None:
        """Hear the key's changes; a watch that fails is opened anew, after telling of the gap."""
        await keep_watching(self.kv, self.key, self._watcher, self._heard, self._gap, f"lease {self.key}")

    def _heard(self, entry: Any) -> None:
        # None marks the end of the initial values; an expiry arrives as PURGE.
        if entry is None:
            return
        if entry.operation in (KV_DEL, KV_PURGE):
            self._vacated.set()
        if self.revision is not None and entry.revision != self.revision and entry.value != self._value:
            self._doubt.set()  # someone else wrote the key we hold

    def _gap(self) -> None:
        """The watch may have missed changes (a reconnect, a failed watch): a standby contends
        now, the holder verifies."""
        self._vacated.set()
        self._doubt.set()

    async def wait_vacated(self, timeout: float) -> bool:
        """Wait until a watcher sees the key deleted, purged or expired, or may have missed it
        (True), or `timeout`."""
        return await _wait(self._vacated, timeout)

    async def wait_doubt(self, timeout: float) -> bool:
        """Wait until the watch may have missed a change, or showed someone else's write (True:
        `verify` now), or `timeout`."""
        return await _wait(self._doubt, timeout)

    async def verify(self) -> bool:
        """Whether the lease is still ours, from the key's last message (read, not watched): our
        own last write, or a renewal of ours that landed unanswered (adopted). Else it is lost."""
        if self.revision is None:
            return False
        try:
            self.revision = await self._ours_last()
        except (NatsError, TimeoutError) as exc:
            raise _bus_error(exc) from exc
        return self.revision is not None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.bus.nc.jetstream(timeout=self._op_timeout_s)
        return self._js

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise BusUnavailable("the lease is not open")
        return self._kv

    async def acquire(self) -> int | None:
        """Take the lease if nobody holds it; return its revision, else None."""
        self.revision = None
        try:
            try:
                revision = await self.kv.create(self.key, self._value, msg_ttl=self.ttl_s)
            except KeyWrongLastSequenceError:
                # Held, or an expiry marker that kv.create does not see through (PITFALLS.md).
                last = await self._last()
                if last is not None and last.data == self._value and not _vacant(last.headers):
                    revision = last.seq  # our own take, whose answer was lost: ours still
                elif last is None or not _vacant(last.headers):
                    return None
                else:
                    try:
                        revision = await self._publish(expect=last.seq)
                    except KeyWrongLastSequenceError:
                        return None  # another standby was faster
        except (NatsError, TimeoutError) as exc:
            raise _bus_error(exc) from exc
        self.revision = revision
        return revision

    async def renew(self) -> bool:
        """Extend the lease by a TTL from now; False when it is no longer ours."""
        if self.revision is None:
            return False
        try:
            try:
                self.revision = await self._publish(expect=self.revision)
            except KeyWrongLastSequenceError:
                # A renewal that timed out may still have landed: if the last write is ours, adopt it.
                self.revision = await self._ours_last()
                if self.revision is None:
                    return False
                self.revision = await self._publish(expect=self.revision)
        except KeyWrongLastSequenceError:
            self.revision = None
            return False
        except (NatsError, TimeoutError) as exc:
            raise _bus_error(exc) from exc
        return True

    async def release(self) -> None:
        """Delete the key if we still hold it, so a standby takes over now, not at expiry. A
        renewal of ours that landed unanswered (a stop cancels the renewal in flight, then
        releases) moved the key past our revision: it is adopted, as `renew` does."""
        revision, self.revision = self.revision, None
        if revision is None:
            return
        try:
            try:
                await self._delete(expect=revision)
            except KeyWrongLastSequenceError:
                adopted = await self._ours_last()
                if adopted is None:
                    raise
                await self._delete(expect=adopted)
        except KeyWrongLastSequenceError:  # written since by someone else: not ours to delete
            _log.info("lease %s was no longer ours to release", self.key)
        except (NatsError, TimeoutError) as exc:  # it expires on its own anyway
            _log.warning("releasing lease %s failed: %s", self.key, exc)

    async def current(self) -> LeaseInfo | None:
        """Who holds the lease now (a raw read: it needs no open bucket), or None."""
        try:
            last = await self._last()
        except (NatsError, TimeoutError) as exc:
            raise _bus_error(exc) from exc
        if last is None or _vacant(last.headers) or not last.data:
            return None
        try:
            holder = str(json.loads(last.data)["holder"])
        except (ValueError, KeyError, TypeError):
            holder = last.data.decode(errors="replace")
        return LeaseInfo(holder=holder, revision=last.seq)

    async def _last(self) -> Any:
        """The key's last message, marker or tombstone included; None when there is none (or no
        bucket yet)."""
        try:
            return await self.js.get_msg(self.stream, subject=self.subject)
        except NotFoundError:
            return None

    async def _ours_last(self) -> int | None:
        """The sequence of the key's last write when it is ours (our own last write, or a renewal
        of ours that landed unanswered); None when the key is vacant or someone else's."""
        last = await self._last()
        if last is None or _vacant(last.headers) or last.data != self._value:
            return None
        return int(last.seq)

    async def _delete(self, expect: int) -> None:
        """The key deleted if its last sequence is `expect`."""
        with _wrong_sequence_told():
            await self.kv.delete(self.key, last=expect)

    async def _publish(self, expect: int) -> int:
        with _wrong_sequence_told():
            ack = await self.js.publish(
                self.subject,
                self._value,
                msg_ttl=self.ttl_s,
                headers={EXPECTED_LAST_SUBJECT_SEQUENCE: str(expect)},
            )
        return ack.seq
