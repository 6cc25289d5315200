"""The transactional outbox (issue 15): every job transition's news is written in the
transition's own transaction and relayed to the job-events stream, once per event id, whatever
dies between the commit and the publish.

A producer's view throughout: a nats-py JetStream consumer on the job-events stream, as the
README shows, never a peek at the relay's internals.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess, start_all
from orchestrator import failpoints
from orchestrator.bus import Bus, Subjects, job_events
from orchestrator.outbox import OutboxRelay
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.queries import Q
from tests import factories
from tests.support import eventually, outbox_empty, outbox_rows, stream_events


async def test_every_job_event_is_relayed_once_in_order(system: Runtime, store: Store, bus: Bus) -> None:
    """Each job's news (admitted, assigned, started, finished) reaches the stream once, in the
    order of its transitions, with Nats-Msg-Id = the event's own id; the outbox ends empty."""
    await factories.pool(store, labels=["linux", "x86_64"])
    body = json.dumps({"pool": "default", "payload": {"command": ["true"]}}).encode()
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        await bus.submit(body, key)

    async def all_finished() -> list[dict[str, Any]] | None:
        events = await stream_events(bus, "finished")
        return events if len(events) >= len(keys) else None

    await eventually(all_finished, timeout=30, what="a finished event per job")
    events = await stream_events(bus)
    assert all(e["msg_id"] == e["id"] for e in events)
    assert len({e["id"] for e in events}) == len(events), "an event id twice in the stream"
    by_job: dict[str, list[str]] = defaultdict(list)
    for e in events:
        by_job[e["job_id"]].append(e["type"])
    assert len(by_job) == len(keys)
    assert all(types == ["JobAdmitted", "JobAssigned", "JobStarted", "JobFinished"] for types in by_job.values()), (
        by_job
    )
    assert await eventually(lambda: outbox_empty(store), what="the outbox to drain")


async def test_the_stream_captures_job_news_only(front: Runtime, bus: Bus) -> None:
    """The stream must not capture the intake (`jobs.submit`) nor the request door
    (`jobs.submit.req`, which JetStream would otherwise answer with a PubAck)."""
    info = await bus.js.stream_info(bus.subjects.job_events_stream)
    assert sorted(info.config.subjects or []) == sorted(t.any().subject for t in bus.subjects.job_events)
    assert bus.subjects.submit.subject not in (info.config.subjects or [])
    body = json.dumps({"pool": "nowhere"}).encode()
    reply = await bus.nc.request(bus.subjects.submit_request.subject, body, timeout=5)
    assert json.loads(reply.data)["outcome"] == "rejected"  # admission's answer, not a PubAck


async def test_a_failed_publish_is_retried_and_deduplicated(settings: Settings, store: Store, bus: Bus) -> None:
    """Published, then the relay fails before deleting the rows (the `outbox.published`
    failpoint): the next round publishes them again, and the stream keeps each event once."""
    await factories.pool(store)
    await factories.queue(store, 3)
    relay = OutboxRelay(store, Bus(settings.nats_url or "", Subjects(settings.namespace)), poll_interval_s=0.1)
    await relay.bus.connect()
    failpoints.enable("outbox.published", "raise", times=1)
    try:
        await relay.start()
        await eventually(lambda: outbox_empty(store), what="the outbox to drain")
    finally:
        failpoints.disable("outbox.published")
        await relay.stop()
        await relay.bus.close()
    assert relay.relayed == 3  # counted once: the failed round deleted nothing
    events = await stream_events(bus, "admitted")
    assert len(events) == 3 and len({e["id"] for e in events}) == 3


async def relay_lock_held(dsn: str) -> asyncpg.Connection:
    """A connection holding the relay lock as a relay mid-batch does (the relay's own statement,
    its transaction left open) until it is closed."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN")
    assert await conn.fetchval(Q["outbox_relay_lock"])
    return conn


async def test_a_relay_standing_by_takes_over_when_the_publishing_one_is_gone(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """Another relay holds the lock (a connection of this test, as a relay mid-batch would): the
    relay stands by and publishes nothing; once that lock is gone (its relay died: the
    connection ends) it publishes the rows at its next poll, with no new notification."""
    await factories.pool(store)
    relay = OutboxRelay(store, Bus(settings.nats_url or "", Subjects(settings.namespace)), poll_interval_s=0.2)
    await relay.bus.connect()
    other = await relay_lock_held(settings.database_url or "")
    try:
        await relay.start()
        await factories.queue(store, 3)  # notified: the relay finds the lock taken

        async def standing_by() -> bool:
            return relay.standing_by

        await eventually(standing_by, what="the relay to stand by")
        assert relay.relayed == 0 and await store.outbox_depth() == 3
        await other.close()  # the publishing relay died
        await eventually(lambda: outbox_empty(store), what="the standing-by relay to take over")
    finally:
        await other.close()
        await relay.stop()
        await relay.bus.close()
    assert len(await stream_events(bus, "admitted")) == 3


async def test_a_relay_standing_by_takes_over_at_once_when_the_publishing_one_stops(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A rolling restart: the publishing relay stops (gracefully), and one standing by, whose
    next look is 30 s away, publishes what comes next at once."""
    await factories.pool(store)
    publishing = OutboxRelay(store, Bus(settings.nats_url or "", Subjects(settings.namespace)), poll_interval_s=0.1)
    waiting = OutboxRelay(store, Bus(settings.nats_url or "", Subjects(settings.namespace)), poll_interval_s=30)
    relays = (publishing, waiting)
    other = await relay_lock_held(settings.database_url or "")
    try:
        for relay in relays:
            await relay.bus.connect()
            await relay.start()
        await factories.queue(store, 1)  # notified: both find the lock taken

        async def both_standing_by() -> bool:
            return all(relay.standing_by for relay in relays)

        await eventually(both_standing_by, what="both relays to stand by")
        await other.close()  # the first looks again within 0.1 s and publishes; the other waits 30 s
        await eventually(lambda: outbox_empty(store), what="the first relay to take over")
        await publishing.stop()
        await factories.queue(store, 2)
        await eventually(lambda: outbox_empty(store), what="the relay standing by to take over", timeout=10)
    finally:
        await other.close()
        for relay in relays:
            await relay.stop()
            await relay.bus.close()
    assert (publishing.relayed, waiting.relayed) == (1, 2)
    assert len(await stream_events(bus, "admitted")) == 3


class _Row(NamedTuple):
    id: UUID
    subject: str
    body: bytes
    durable: bool = True


async def test_a_batch_repeating_events_already_relayed_keeps_each_once_in_order(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay publishes atomic batches, and JetStream refuses a whole batch that repeats an
    event id it has (a relay died between publish and delete): those rows then go one by one,
    the repeats dropped, the new ones stored after them in order. Core NATS rows go in their
    place among them."""
    monkeypatch.setattr(job_events, "ATOMIC_BATCH_MAX", 3)
    monkeypatch.setattr(job_events, "ATOMIC_BATCH_MIN", 1)
    await bus.ensure_job_events_stream(3600)
    assert bus.atomic_events
    pool = f"atomic-{uuid4().hex[:8]}"
    rows = [_Row(uuid4(), Subjects.job_admitted.at(pool).relative, json.dumps({"n": n}).encode()) for n in range(8)]
    cancel = _Row(uuid4(), f"runners.{pool}.cancel", b"{}", durable=False)
    heard: list[bytes] = []
    batched: list[str] = []

    async def hear(msg: Any) -> None:
        heard.append(msg.data)
        batched.append((msg.headers or {}).get("Nats-Batch-Id", ""))

    sub = await bus.nc.subscribe(bus.subjects.absolute(">"), cb=hear)
    try:
        await bus.publish_outbox(rows[:2])
        await bus.flush()
        assert batched and all(batched), "the relay published no atomic batch"
        heard.clear()
        await bus.publish_outbox([*rows[:4], cancel, *rows[4:]])  # the first two again, then new ones
        await bus.flush()
        second = list(heard)
        await bus.publish_outbox(rows[5:])  # all repeats
    finally:
        await sub.unsubscribe()
    stored = [e for e in await stream_events(bus, "admitted") if e["msg_id"] in {str(r.id) for r in rows}]
    assert [e["n"] for e in stored] == list(range(8))
    assert [e["msg_id"] for e in stored] == [str(r.id) for r in rows]
    # As a core subscriber hears the second call (a refused batch is heard again as it is
    # republished): the cancel after event 3, before event 4.
    heard_n = [json.loads(body).get("n") for body in second]
    assert heard_n.index(None) > heard_n.index(3) and heard_n.index(None) < heard_n.index(4)


@pytest.mark.parametrize("gap", ["transition.committed", "outbox.published"])
async def test_a_crash_between_commit_and_publish_loses_no_news(
    gap: str, settings: Settings, store: Store, bus: Bus, tmp_path: Path
) -> None:
    """kill the admission process in the gap (a failpoint that exits at once, as kill -9
    would): after its restart the job's `admitted` event is in the stream exactly once, with
    the id the transition gave it."""
    await factories.pool(store)
    env = {
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_NAMESPACE": settings.namespace,
        "ORCH_FAILPOINTS": f"{gap}=exit",
    }
    # At the first gap, the process's own relay must not publish first (it may, between the
    # commit and the exit): a session of the test's holds the relay lock until the process died.
    holder = await relay_lock_held(settings.database_url or "") if gap == "transition.committed" else None
    proc = ServiceProcess("admission", ["admission"], env, tmp_path)
    try:
        await start_all([proc])
        await bus.submit(json.dumps({"pool": "default"}).encode(), "the-job")
        assert await proc.wait_exit() == failpoints.EXIT_STATUS
    finally:
        if holder is not None:
            await holder.close()
    (row,) = await store.job_list(pool="default", state=None, key="the-job", limit=1)
    if gap == "transition.committed":
        assert [r["subject"] for r in await outbox_rows(store)] == ["jobs.admitted.default"]
        assert await stream_events(bus, "admitted") == []
    pending = await outbox_rows(store)

    env.pop("ORCH_FAILPOINTS")
    again = ServiceProcess("admission-2", ["admission"], env, tmp_path)
    await start_all([again])
    try:
        await eventually(lambda: outbox_empty(store), what="the outbox to drain")
        events = await stream_events(bus, "admitted")
    finally:
        await again.close()
    assert [(e["job_id"], e["id"]) for e in events] == [(str(row["id"]), str(pending[0]["id"]))]
    # The intake message was not acked before the crash: redelivered, it found the job, no new one.
    assert len(await store.job_list(pool="default", state=None, key=None, limit=10)) == 1
