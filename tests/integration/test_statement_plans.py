"""How the hot statements are planned (issue 19): the admission, its reads, the runners' edges and
the relay's delete keep one plan per connection (planned again for each batch, a batch of one
cost 0.6 to 0.9 ms of planning for 0.25 ms of work, the delete 60 us for 30: see
queries/transitions.sql), and the claim and the runners' edges read the jobs table through the
index that finds what they name, whatever the statistics say."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from orchestrator.settings import Settings
from orchestrator.store import End, Handoff, Start, Store
from orchestrator.store.queries import Q
from orchestrator.store.transitions import news
from schemas.jobs import JobState
from tests import factories

# An admission batch's reads and insert, and the edges of its job.
STATEMENTS = (
    "pool_get_many",
    "job_list_by_keys",
    "job_insert_many",
    "job_acknowledge_many",
    "job_start_many",
    "job_finish_many",
)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """A store of one connection: every statement is planned, and its plans kept, on it."""
    one = Store(settings.database_url or "", max_size=1)
    await one.connect()
    yield one
    await one.close()


async def backlog_analyzed(store: Store, jobs: int, slots: int, **pool: Any) -> None:
    """Pool `p` with `jobs` queued and a runner of `slots`, statistics taken then (as a burst
    admitted makes them: bench/dispatch.py's head_of_line)."""
    await factories.pool(store, "p", **pool)
    await factories.runner(store, "r1", pool="p", slots=slots)
    await factories.queue(store, jobs, pool="p", payload={"command": ["true"]})
    async with store.connection() as conn:
        await conn.execute("ANALYZE jobs")


async def test_the_admission_its_reads_the_ack_and_the_finish_are_planned_once_per_connection(
    store: Store,
) -> None:
    await factories.pool(store, "p")
    await factories.runner(store, "r1", pool="p")
    for i in range(8):  # one job at a time, as an idle system admits and ends them
        async with store.transitions.admission(["p"], [f"k{i}"]) as tx:
            await tx.insert([factories.job("p", key=f"k{i}", payload={"command": ["true"]})])
        claim = await store.transitions.claim("p", 1)
        await store.transitions.acknowledge(
            [Handoff(a["id"], a["runner_id"], a["assigned_at"]) for a in claim.assignments]
        )
        await factories.finish(store, claim.assignments)
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    plans = {
        name: (r["generic_plans"], r["custom_plans"]) for r in rows for name in STATEMENTS if r["statement"] == Q[name]
    }
    # With plan_cache_mode = auto, Postgres plans for the values five times before it compares;
    # from then on it runs the plan it made once. Before: (0, 8) each.
    assert plans == {name: (3, 5) for name in STATEMENTS}


async def test_the_relays_delete_is_planned_once_per_connection(store: Store, settings: Settings) -> None:
    """An outbox of many pages and no statistics (a new database's after a burst, until
    autovacuum analyzes it) made Postgres plan each delete of a few rows again for its values:
    twice the cost of running it, 60 us a batch in the wake benchmark."""
    other = await asyncpg.connect(settings.database_url)  # not the store's: its plans are counted
    try:
        await other.execute("TRUNCATE outbox")  # never analyzed, as a new database's
        await other.execute(  # a burst's 4,000 events, published and deleted
            """INSERT INTO outbox (id, subject, body, durable)
               SELECT gen_random_uuid(), 'jobs.admitted.p', convert_to(repeat('x', 400), 'UTF8'), true
               FROM generate_series(1, 4000)"""
        )
        await other.execute("DELETE FROM outbox")
    finally:
        await other.close()
    await factories.pool(store, "p")
    for _ in range(8):  # an event at a time, as an idle system's relay publishes them
        await factories.queue(store, 1, pool="p")
        async with store.outbox_batch(100) as batch:
            assert batch is not None and len(batch.rows) == 1
            await batch.delete()
    async with store.connection() as conn:
        plans = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", Q["outbox_delete"]
        )
    assert (plans["generic_plans"], plans["custom_plans"]) == (3, 5)  # before: (0, 8)


# What a statement read of the jobs table: this connection's counters after it less before it, in
# one transaction (a backend adds its counts to the shared ones only between transactions, and
# when it gets round to it: its pending counts may still hold those of its last transactions).
READS = "SELECT seq_scan, seq_tup_read + idx_tup_fetch AS rows FROM pg_stat_xact_user_tables WHERE relname = 'jobs'"


async def reads_of_jobs(conn: asyncpg.Connection, query: str, *args: Any) -> tuple[list[asyncpg.Record], int, int]:
    """Run `query`; its rows, and the whole reads and the rows read of the jobs table it made."""
    async with conn.transaction():
        before = await conn.fetchrow(READS)
        rows = await conn.fetch(query, *args)
        after = await conn.fetchrow(READS)
    return rows, after["seq_scan"] - before["seq_scan"], after["rows"] - before["rows"]


async def test_a_claim_reads_the_jobs_table_through_its_indexes_only(store: Store) -> None:
    """Statistics taken with a backlog queued say most jobs are queued: the claim's check that
    anything is (migration 0019) was then planned as a read of the table from its start, which
    went through every job drained since before finding one queued: 0.8 ms a step when 10,000
    jobs drained through a pool capped at 32, growing with the jobs the table keeps."""
    await backlog_analyzed(store, 200, slots=4)
    steps = []
    async with store.connection() as conn:
        for _ in range(3):  # a backlog draining, a job a step
            claimed, whole_reads, _ = await reads_of_jobs(conn, Q["job_claim_step"], "p", 1, None, None)
            steps.append((claimed[-1]["status"], whole_reads))
    assert steps == [("dispatched", 0)] * 3


async def test_the_runners_edges_read_each_job_they_name_by_its_key(store: Store) -> None:
    """Statistics taken before a burst of jobs was assigned and started say few are: the ack, the
    start and the finish, each a join of the jobs it names with those in the state it requires,
    were then planned as a read of all of those, each compared with every job named: a finish of
    225 jobs compared 50,400 pairs (64 ms) in the throughput benchmark."""
    await backlog_analyzed(store, 400, slots=400, max_concurrent=-1)
    claimed = sorted((await store.transitions.claim("p", 400)).assignments, key=lambda a: a["id"])
    starts = [Start(a["id"], a["runner_id"], a["attempt"] + 1) for a in claimed]
    ends = [End(*start, JobState.succeeded, 0) for start in starts]
    edges = (  # each of 50 jobs, with 400 in the state the edge requires
        ("job_acknowledge_many", [Handoff(a["id"], a["runner_id"], a["assigned_at"]) for a in claimed[:50]], 3),
        ("job_start_many", starts[:50], 3),
        ("job_finish_many", ends[:50], 6),
    )
    read = {}
    for name, batch, width in edges:
        if name == "job_finish_many":  # the other 350 running too
            assert len(await store.transitions.start_many(starts[50:])) == 350
        async with store.connection() as conn:  # the store's one: released before the next edge
            changed, _, rows_read = await reads_of_jobs(conn, Q[name], *news.columns(batch, width))
        read[name] = (len(changed), rows_read)
    # About two reads of each job named (to lock it, to change it), whatever else is in its
    # state. Before: 452 for the ack (each assigned job once, then compared with each named).
    assert {name: (changed, rows_read < 3 * changed) for name, (changed, rows_read) in read.items()} == {
        name: (50, True) for name, _, _ in edges
    }, read
