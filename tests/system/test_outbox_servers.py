"""The outbox through its servers' deaths: every process and both servers killed -9 under
load, and Postgres crashed just after a relay's commit that did not wait for the disk (the relay's
delete is such a commit, but for a batch that held a cancel to a runner).

A producer's view throughout, as in test_outbox.py: the job-events stream, as nats-py reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.procs import ServiceProcess, start_all
from orchestrator.bus import Bus, Subjects
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.outbox import OutboxRelay
from orchestrator.store import Start, Store
from tests import factories
from tests.support import (
    FAST_FAILURE_ENV,
    eventually,
    outbox_empty,
    outbox_rows,
    stream_events,
    wal_held_back,
    wal_unwritten,
)


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
        await eventually(lambda: outbox_empty(store), what="the outbox to drain")
        if await wal_unwritten(pg.dsn):
            break  # the delete is not written out
    else:
        raise AssertionError("every delete of the relay was written out at once")
    await pg.crash()
    await pg.restart()

    async def relayed_again() -> bool:
        return relay.relayed >= len(jobs) + 3

    await eventually(relayed_again, timeout=20, what="the rows to be published again")
    await eventually(lambda: outbox_empty(store), what="the outbox to drain again")
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
    await eventually(lambda: outbox_empty(store), what="the outbox to drain")
    assert not await wal_unwritten(pg.dsn)
