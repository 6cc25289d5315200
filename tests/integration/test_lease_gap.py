"""Leadership through a gap in what the lease's KV watch tells (issue 22): the holder heeds the
watch, so a write of its key by anyone else ends its term at once, not at its next renewal; after
a reconnect it re-reads the key and keeps a lease still its own; a take whose answer was lost is
its own. Renewals are 5 s apart here, so what happens within 2 s is the watch's doing."""

from __future__ import annotations

import json
import logging

import pytest

from orchestrator.bus import Bus, Subjects
from orchestrator.bus.lease import Lease, read_lease
from orchestrator.embedded import EmbeddedNats
from orchestrator.leadership import Leaderships
from orchestrator.settings import LeaderSettings
from orchestrator.store import Store
from services.leader import Leader
from tests.support import Listener, eventually

SLOW_RENEWALS = LeaderSettings(lease_ttl_s=10, lease_renew_s=5)


async def test_a_holder_steps_down_as_soon_as_its_watch_shows_someone_else_holding_the_key(
    store: Store, bus: Bus
) -> None:
    leaderships = Leaderships(1, "a")
    leadership = leaderships.first
    leader = Leader(SLOW_RENEWALS, store, bus, leaderships)
    async with Listener(bus, bus.subjects.leader_lost.any()) as lost:
        await leader.start()
        try:
            assert leadership.leading
            lease = Lease(bus, "all", "intruder", ttl_s=10)
            # Someone else's write the holder has not renewed against yet (as after a partition).
            await bus.js.publish(lease.subject, json.dumps({"holder": "intruder"}).encode())
            await leadership.wait(leading=False, timeout=2)  # not at the renewal, 5 s on
            event = await lost.wait(timeout=2)
            assert (event.holder, event.reason) == ("a", "taken")
            assert (await read_lease(bus, "all")).holder == "intruder"  # type: ignore[union-attr]
        finally:
            await leader.stop()


async def test_after_a_reconnect_the_holder_verifies_and_keeps_a_lease_still_its_own(
    store: Store, own_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus(own_nats.url, Subjects("gap"), name="test-gap")
    await bus.connect()
    leaderships = Leaderships(1, "a")
    leadership = leaderships.first
    leader = Leader(SLOW_RENEWALS, store, bus, leaderships)
    await leader.start()
    try:
        epoch = leadership.epoch
        with caplog.at_level(logging.INFO, logger="orchestrator.leader"):
            await own_nats.kill()  # the watch and the connection go; the lease stays in the store
            await own_nats.start()  # the same port and store: the client reconnects

            async def verified() -> bool:
                return any("still ours after a gap" in r.getMessage() for r in caplog.records)

            await eventually(verified, timeout=4, what="the holder to verify its lease")  # before its renewal
        assert leadership.leading and leadership.epoch == epoch
        assert (await read_lease(bus, "all")).holder == "a"  # type: ignore[union-attr]
    finally:
        await leader.stop()
        await bus.close()


async def test_a_take_whose_answer_was_lost_is_its_own(bus: Bus) -> None:
    lease = Lease(bus, "all", "a", ttl_s=10)
    await lease.open()
    try:
        taken = await lease.acquire()
        assert taken is not None
        # Taken again, as after a take whose answer was lost: the key holds its own value.
        assert await lease.acquire() == taken
        assert await lease.renew()
    finally:
        await lease.close()
