"""The lease on real NATS, the leader service and the dispatcher's gating, in one process.
Failover across OS processes is in test_failover.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.bus.lease import Lease, read_lease
from orchestrator.leadership import Leadership, Leaderships
from orchestrator.settings import Settings
from orchestrator.store import RunnerSpec, Store
from services.dispatch import Dispatch
from services.leader import Leader
from tests import factories
from tests.support import Listener, eventually

SHARD = "all"  # the one shard's name (orchestrator/shards.py)


async def contend(lease: Lease, timeout: float = 10.0) -> int:
    """Acquire as a standby does: on every vacancy the watch reports, or after a TTL."""
    deadline = time.monotonic() + timeout
    while (epoch := await lease.acquire()) is None:
        assert time.monotonic() < deadline, f"{lease.holder} never got the lease"
        await lease.wait_vacated(lease.ttl_s)
    return epoch


@pytest.fixture
async def leases(bus: Bus) -> AsyncIterator[tuple[Lease, Lease]]:
    a, b = Lease(bus, "all", "a", ttl_s=1), Lease(bus, "all", "b", ttl_s=1)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def test_one_holder_at_a_time_and_release_hands_over(leases: tuple[Lease, Lease], bus: Bus) -> None:
    a, b = leases
    first = await a.acquire()
    assert first is not None
    assert await b.acquire() is None
    assert await a.renew()
    assert await read_lease(bus, "all") == (await a.current())
    assert (await a.current()).holder == "a"  # type: ignore[union-attr]
    await a.release()
    second = await contend(b)
    assert second > first  # the epoch only grows
    assert not await a.renew()  # released: nothing to renew


async def test_a_release_after_a_renewal_that_landed_unanswered_still_hands_over(
    leases: tuple[Lease, Lease],
) -> None:
    """A stop cancels the holder's renewal in flight, then releases: when that renewal reached
    the server, the key has moved past the revision the holder knows. The release still deletes
    it (the last write is the holder's own), so the standby takes over now, not after the TTL."""
    a, b = leases
    await a.acquire()
    known = a.revision
    assert await a.renew()  # lands ...
    a.revision = known  # ... but its answer never came (the renewing task was cancelled)
    await a.release()
    assert await a.current() is None
    assert await b.acquire() is not None  # at once: no TTL waited out


async def test_an_unrenewed_lease_expires_and_a_standby_takes_over(leases: tuple[Lease, Lease]) -> None:
    a, b = leases
    first = await a.acquire()
    assert first is not None
    second = await contend(b)  # a never renews: its TTL runs out, the marker's seq is taken over
    assert second > first
    assert not await a.renew()  # a renewal after losing it is refused
    assert await b.renew()


def two_leaders(settings: Settings, store: Store, bus: Bus) -> list[tuple[Leader, Leadership]]:
    out = []
    for name in ("a", "b"):
        leaderships = Leaderships(1, name)
        out.append((Leader(settings.leader, store, bus, leaderships), leaderships.first))
    return out


async def test_graceful_stop_hands_leadership_over(settings: Settings, store: Store, bus: Bus) -> None:
    (a, la), (b, lb) = two_leaders(settings, store, bus)
    s = bus.subjects
    async with (
        Listener(bus, s.leader_elected.any()) as elected,
        Listener(bus, s.leader_lost.any()) as lost,
    ):
        await a.start()
        assert la.leading  # a lone instance leads by the time start returns
        await b.start()
        assert not lb.leading
        await a.stop()
        assert not la.leading
        await lb.wait(leading=True, timeout=10)
        await lost.wait(lambda e: e.holder == "a" and e.reason == "released")
        taken = await elected.wait(lambda e: e.holder == "b")
        await b.stop()
    assert [e.holder for e in elected.events] == ["a", "b"]
    assert taken.epoch > elected.events[0].epoch
    row = await store.dispatch_epoch_get(SHARD)
    assert row is not None and (row["epoch"], row["holder"]) == (taken.epoch, "b")


async def test_leader_lifecycle(settings: Settings, store: Store, bus: Bus) -> None:
    leaderships = Leaderships(1, "x")
    leadership = leaderships.first
    never_started = Leader(settings.leader, store, bus, leaderships)
    await never_started.stop()
    await never_started.stop()
    for _ in range(20):
        leader = Leader(settings.leader, store, bus, leaderships)
        await leader.start()
        assert leadership.leading
        await leader.stop()
        await leader.stop()
        assert not leadership.leading


async def test_dispatch_claims_only_while_leading(settings: Settings, store: Store, bus: Bus) -> None:
    await factories.pool(store, "p", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r1", "p", [], 10), [])
    await factories.queue(store, 3, "p")
    leaderships = Leaderships(1, "me")
    leadership = leaderships.first
    dispatch = Dispatch(settings.dispatch, settings.timings, store, bus, leaderships=leaderships)
    assert await dispatch.step("p") == "not_leader"
    epoch = await store.dispatch_epoch_issue(SHARD, "me")
    leadership.gain(epoch, time.monotonic() + 60)
    assert await dispatch.step("p") == "dispatched"  # the hand-off fails (no such runner): requeued
    leadership.gain(epoch, time.monotonic() - 1)  # the term ran out on this process's clock
    assert await dispatch.step("p") == "not_leader"
    await store.dispatch_epoch_issue(SHARD, "newer")  # elected elsewhere
    leadership.gain(epoch, time.monotonic() + 60)  # a stale term this process still believes in
    assert await dispatch.step("p") == "fenced"


async def test_a_lease_bucket_made_anew_does_not_halt_dispatch(settings: Settings, store: Store, bus: Bus) -> None:
    """NATS lost its storage: the lease bucket is made anew and its revisions start again from 1.
    A new leader still gets a newer epoch (Postgres issues it) and dispatches; with the lease
    revision as the epoch it was refused until someone edited a row."""
    await factories.pool(store, "p", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r1", "p", [], 10), [])
    await factories.queue(store, 1, "p")
    for _ in range(3):  # a few terms, each a few revisions
        leader = Leader(settings.leader, store, bus, Leaderships(1, "me"))
        await leader.start()
        await leader.stop()
    await bus.js.delete_key_value(bus.subjects.lease_bucket)
    leaderships = Leaderships(1, "me")
    leader = Leader(settings.leader, store, bus, leaderships)
    await leader.start()
    try:
        assert leaderships.first.leading
        dispatch = Dispatch(settings.dispatch, settings.timings, store, bus, leaderships=leaderships)
        assert await dispatch.step("p") == "dispatched"
    finally:
        await leader.stop()


@pytest.fixture
async def http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


async def test_get_leader_names_this_instance(http: aiohttp.ClientSession, settings: Settings) -> None:
    async def leader() -> dict | None:
        async with http.get("/v1/leader") as resp:
            assert resp.status == 200
            body = await resp.json()
        return body if body["lease"] else None

    body = await eventually(leader, what="a leader")
    assert body["shard"] == "all"
    assert body["holder"] == settings.instance_id == body["lease"]["holder"]
    assert isinstance(body["epoch"], int) and body["since"]
    # One shard: `shards` lists it alone, the same as the top level.
    assert body["shards"] == [{k: body[k] for k in ("shard", "holder", "epoch", "since", "lease", "pools")}]


async def test_a_leader_whose_claims_are_fenced_gives_the_lease_up_and_a_new_term_dispatches(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A lease holder whose epoch is not the newest (its epoch came late, after a newer one was
    issued) would be refused for ever while it kept renewing. Fenced, it gives the lease up
    (`LeaderLost{fenced}`), and the next term, with a newer epoch, dispatches."""
    await factories.pool(store, "p", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r1", "p", [], 10), [])
    await factories.queue(store, 2, "p")
    leaderships = Leaderships(1, "me")
    leadership = leaderships.first
    leader = Leader(settings.leader, store, bus, leaderships)
    dispatch = Dispatch(settings.dispatch, settings.timings, store, bus, leaderships=leaderships)
    async with Listener(bus, bus.subjects.leader_lost.any()) as lost:
        await leader.start()
        try:
            first = leadership.epoch
            assert first is not None
            late = await store.dispatch_epoch_issue(SHARD, "late")  # a newer term, nobody's
            assert await dispatch.step("p") == "fenced"
            assert (await lost.wait(lambda e: e.holder == "me")).reason == "fenced"

            async def new_term() -> bool:
                return leadership.epoch is not None and leadership.epoch > late

            await eventually(new_term, timeout=10, what="a new term")
            assert await dispatch.step("p") == "dispatched"
        finally:
            await leader.stop()
