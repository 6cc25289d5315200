"""The transactional outbox (issue 15): every job transition's news is written in the
transition's own transaction and relayed to the job-events stream, once per event id, whatever
dies between the commit and the publish.

A producer's view throughout: a nats-py JetStream consumer on the job-events stream, as the
README shows, never a peek at the relay's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app.runtime import Runtime
from bench.procs import ServiceProcess, start_all
from orchestrator import failpoints
from orchestrator.bus import Bus, Subjects, job_events
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.outbox import OutboxRelay
from orchestrator.settings import Settings
from orchestrator.store import Start, Store
from tests import factories
from tests.support import FAST_FAILURE_ENV, eventually, wal_held_back, wal_unwritten


async def stream_events(bus: Bus, verb: str | None = None) -> list[dict[str, Any]]:
    """Every event the job-events stream holds (on `verb`, or all), in stream order, each with
    its Nats-Msg-Id."""
    stream = bus.subjects.job_events_stream
    state = (await bus.js.stream_info(stream)).state
    events = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        msg = await bus.js.get_msg(stream, seq)
        if verb is None or msg.subject.split(".")[3] == verb:
            events.append({**json.loads(msg.data or b"{}"), "msg_id": (msg.headers or {}).get("Nats-Msg-Id")})
    return events


async def outbox_rows(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM outbox ORDER BY seq")]


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
    assert await eventually(lambda: _empty(store), what="the outbox to drain")


async def _empty(store: Store) -> bool:
    return await store.outbox_depth() == 0


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
        await eventually(lambda: _empty(store), what="the outbox to drain")
    finally:
        failpoints.disable("outbox.published")
        await relay.stop()
        await relay.bus.close()
    assert relay.relayed == 3  # counted once: the failed round deleted nothing
    events = await stream_events(bus, "admitted")
    assert len(events) == 3 and len({e["id"] for e in events}) == 3


async def test_a_relay_standing_by_takes_over_when_the_publishing_one_is_gone(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """Another relay holds the lock (a connection of this test, as a relay mid-batch would): the
    relay stands by and publishes nothing; once that lock is gone (its relay died: the
    connection ends) it publishes the rows at its next poll, with no new notification."""
    await factories.pool(store)
    relay = OutboxRelay(store, Bus(settings.nats_url or "", Subjects(settings.namespace)), poll_interval_s=0.2)
    await relay.bus.connect()
    other = await asyncpg.connect(settings.database_url)
    try:
        await other.execute("BEGIN")
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('orchestrator outbox relay'))")
        await relay.start()
        await factories.queue(store, 3)  # notified: the relay finds the lock taken

        async def standing_by() -> bool:
            return relay.standing_by

        await eventually(standing_by, what="the relay to stand by")
        assert relay.relayed == 0 and await store.outbox_depth() == 3
        await other.close()  # the publishing relay died
        await eventually(lambda: _empty(store), what="the standing-by relay to take over")
    finally:
        await other.close()
        await relay.stop()
        await relay.bus.close()
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
    await bus.ensure_job_events_stream(3600)
    assert bus.atomic_events
    pool = f"atomic-{uuid4().hex[:8]}"
    rows = [_Row(uuid4(), Subjects.job_admitted.at(pool).relative, json.dumps({"n": n}).encode()) for n in range(8)]
    cancel = _Row(uuid4(), f"runners.{pool}.cancel", b"{}", durable=False)
    heard: list[bytes] = []

    async def hear(msg: Any) -> None:
        heard.append(msg.data)

    sub = await bus.nc.subscribe(bus.subjects.absolute(">"), cb=hear)
    try:
        await bus.publish_outbox(rows[:2])
        await bus.flush()
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
    proc = ServiceProcess("admission", ["admission"], env, tmp_path)
    await start_all([proc])
    await bus.submit(json.dumps({"pool": "default"}).encode(), "the-job")
    assert await proc.wait_exit() == failpoints.EXIT_STATUS
    (row,) = await store.job_list(pool="default", state=None, key="the-job", limit=1)
    if gap == "transition.committed":
        assert [r["subject"] for r in await outbox_rows(store)] == ["jobs.admitted.default"]
        assert await stream_events(bus, "admitted") == []
    pending = await outbox_rows(store)

    env.pop("ORCH_FAILPOINTS")
    again = ServiceProcess("admission-2", ["admission"], env, tmp_path)
    await start_all([again])
    try:
        await eventually(lambda: _empty(store), what="the outbox to drain")
        events = await stream_events(bus, "admitted")
    finally:
        await again.close()
    assert [(e["job_id"], e["id"]) for e in events] == [(str(row["id"]), str(pending[0]["id"]))]
    # The intake message was not acked before the crash: redelivered, it found the job, no new one.
    assert len(await store.job_list(pool="default", state=None, key=None, limit=10)) == 1


# --- the whole system killed -9, servers too --------------------------------------------------


@pytest.fixture
async def own_servers(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, EmbeddedPostgres]]:
    nats, pg = EmbeddedNats(tmp_path / "nats"), EmbeddedPostgres(tmp_path / "pg")
    await asyncio.gather(nats.start(), pg.start())
    try:
        yield nats, pg
    finally:
        await nats.stop()
        await pg.stop()


@pytest.mark.slow
async def test_a_durable_consumer_hears_every_job_finish_through_a_kill_9_of_everything(
    own_servers: tuple[EmbeddedNats, EmbeddedPostgres], tmp_path: Path
) -> None:
    """2,000 jobs; mid-run every process (services, runners, nats-server, Postgres) is killed
    -9 and started again. A producer's durable pull consumer on `jobs.finished.>`, deduplicating
    by event id, receives a `finished` for every job."""
    nats, pg = own_servers
    namespace, pool, n = "dur", "p", 2000
    store = Store(pg.dsn, max_size=2)
    await store.connect()
    await store.migrate()
    await factories.pool(store, pool, max_concurrent=-1, max_active=-1)
    env = {
        "ORCH_NATS_URL": nats.url,
        "ORCH_DATABASE_URL": pg.dsn,
        "ORCH_NAMESPACE": namespace,
        **FAST_FAILURE_ENV,
    }
    logs = tmp_path / "logs"
    services = ServiceProcess("services", ["capacity", "admission", "dispatch"], env, logs)
    runners = [
        ServiceProcess(rid, [], env, logs, args=["runner", "--pool", pool, "--slots", "16", "--id", rid],
                       ready_text=f"runner {rid} serving")
        for rid in ("r0", "r1")
    ]  # fmt: skip
    bus = Bus(nats.url, Subjects(namespace), name="producer")
    await start_all([services])
    await start_all(runners)
    await bus.connect()
    js = bus.js
    durable = "follower"
    await js.add_consumer(
        bus.subjects.job_events_stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=bus.subjects.job_finished.any().subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
        ),
    )
    finished: dict[str, str] = {}  # job id -> final state, from events deduplicated by id
    seen: Counter[str] = Counter()
    stop = asyncio.Event()

    async def follow() -> None:
        sub = await js.pull_subscribe_bind(durable, bus.subjects.job_events_stream)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except Exception:  # a timeout, or NATS down for a moment: fetch again
                continue
            for msg in msgs:
                event = json.loads(msg.data)
                seen[event["id"]] += 1
                if seen[event["id"]] == 1:
                    finished[event["job_id"]] = event["state"]
                with contextlib.suppress(Exception):  # not acked: redelivered later, deduplicated by id
                    await msg.ack()

    follower = asyncio.create_task(follow())
    try:
        body = json.dumps({"pool": pool, "payload": {"command": ["true"]}}).encode()
        for i in range(n):
            await bus.submit(body, f"job-{i}")
        await eventually(lambda: _at_least(finished, n // 4), timeout=60, what="a quarter of the jobs to finish")

        for proc in (services, *runners):
            proc.signal(signal.SIGKILL)
        await nats.kill()
        await pg.crash()
        await asyncio.gather(*(proc.wait_exit() for proc in (services, *runners)))
        await asyncio.gather(nats.start(), pg.restart())
        await start_all([services])
        await start_all(runners)

        await eventually(lambda: _at_least(finished, n), timeout=120, what="a finished event for every job")
    finally:
        stop.set()
        await follower
        await bus.close()
        await asyncio.gather(*(proc.close() for proc in (services, *runners)))
        await store.close()
    check = await asyncpg.connect(pg.dsn)
    try:
        final = {str(r["id"]): r["state"] for r in await check.fetch("SELECT id, state FROM jobs")}
    finally:
        await check.close()
    assert len(final) == n
    assert finished == final  # every job, and the state each event says is the one stored


async def _at_least(found: dict[str, str], n: int) -> bool:
    return len(found) >= n


class HeldBack(NamedTuple):
    pg: EmbeddedPostgres
    store: Store
    bus: Bus
    relay: OutboxRelay


@pytest.fixture
async def held_back(own_servers: tuple[EmbeddedNats, EmbeddedPostgres]) -> AsyncIterator[HeldBack]:
    """A relay, not started yet, on a Postgres of the test's own that writes its WAL out only
    when a commit waits for it (`wal_held_back`): the store migrated, with pool `default`."""
    nats, pg = own_servers
    await wal_held_back(pg.dsn)
    store = Store(pg.dsn, max_size=2)
    await store.connect()
    bus = Bus(nats.url, Subjects("held"), name="test-relay")
    await bus.connect()
    relay = OutboxRelay(store, bus, poll_interval_s=0.1)
    try:
        await store.migrate()
        await factories.pool(store)
        yield HeldBack(pg, store, bus, relay)
    finally:
        await relay.stop()
        await bus.close()
        await store.close()


async def test_a_relays_delete_lost_in_a_crash_publishes_its_rows_again_and_the_stream_keeps_each_once(
    held_back: HeldBack,
) -> None:
    """The relay's commit (its delete of what it published) does not wait for the disk. Postgres
    crashed before that delete was written out: the rows are back, the relay publishes them
    again, and the stream holds each job's `admitted` once."""
    pg, store, bus, relay = held_back
    jobs: list[UUID] = []
    await relay.start()
    for _ in range(5):
        jobs += await factories.queue(store, 3)  # admitted: a commit that waits for the disk
        await eventually(lambda: _empty(store), what="the outbox to drain")
        if await wal_unwritten(pg.dsn):
            break  # the delete is not written out
    else:
        raise AssertionError("every delete of the relay was written out at once")
    await pg.crash()
    await pg.restart()

    async def relayed_again() -> bool:
        return relay.relayed >= len(jobs) + 3

    await eventually(relayed_again, timeout=20, what="the rows to be published again")
    await eventually(lambda: _empty(store), what="the outbox to drain again")
    events = await stream_events(bus, "admitted")
    assert sorted(e["job_id"] for e in events) == sorted(str(j) for j in jobs)
    assert len({e["msg_id"] for e in events}) == len(events)


async def test_a_relays_batch_holding_a_cancel_to_a_runner_waits_for_the_disk(held_back: HeldBack) -> None:
    """A cancel names no attempt: published again after a crash it could stop the job's next
    one. So the relay's delete of a batch holding one is written out before the relay goes on,
    whatever else does not wait for the disk."""
    pg, store, _, relay = held_back
    await factories.runner(store, "r1")
    [job_id] = await factories.queue(store)
    [assigned] = (await store.transitions.claim("default", 1)).assignments
    await store.transitions.start_many([Start(job_id, "r1", assigned["attempt"] + 1)])
    assert (await store.transitions.cancel(job_id)).outcome == "requested"
    assert "runners.r1.cancel" in [r["subject"] for r in await outbox_rows(store)]
    await relay.start()
    await eventually(lambda: _empty(store), what="the outbox to drain")
    assert not await wal_unwritten(pg.dsn)
