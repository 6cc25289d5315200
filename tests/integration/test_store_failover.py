"""The store against a Postgres that is slow, locked, read-only or gone (issue 22): the statement
and lock timeouts are set on every connection (and lifted for migrations); a statement or a lock
wait past them fails as "unavailable" with nothing applied; an edge is retried through such a
failure within its budget and applied once; a read-only database (a demoted primary) answers the
HTTP door 503, changes nothing, and admits again once writable; and a connection lost before
COMMIT leaves nothing applied."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest

from app.runtime import Runtime
from orchestrator.errors import NothingApplied, StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.store import End, Start, Store
from orchestrator.store.transitions import UNAVAILABLE_RETRY_S
from schemas.jobs import JobState
from tests import factories
from tests.support import call


async def _show(store: Store, *names: str) -> list[str]:
    async with store.connection() as conn:
        return [await conn.fetchval(f"SHOW {name}") for name in names]


async def _running_job(store: Store) -> Start:
    await factories.pool(store)
    await factories.runner(store, "r1")
    (job_id,) = await factories.queue(store, 1)
    (claimed,) = (await store.transitions.claim("default", 1)).assignments
    start = Start(job_id, "r1", claimed["attempt"] + 1)
    assert await store.transitions.start_many([start])
    return start


@contextlib.asynccontextmanager
async def row_locked(dsn: str, job_id: object) -> AsyncIterator[None]:
    """The job's row locked by another session (a paused process in the middle of a transaction)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            yield
    finally:
        await conn.close()


async def test_every_connection_has_the_timeouts_and_migrations_lift_them_on_their_own(settings: Settings) -> None:
    """A migration lifts the timeouts for its session (SET), and the pool does not reset a
    session it takes back: the migration's connection is not the pool's."""
    store = Store.from_settings(settings, max_size=1)  # one connection: a migration on it would be the next one's
    await store.connect()
    try:
        names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        assert await _show(store, *names) == ["30s", "5s", "10s"]
        assert await store.migrate() == []
        assert await _show(store, *names) == ["30s", "5s", "10s"]
    finally:
        await store.close()


async def test_a_statement_slower_than_the_statement_timeout_fails_as_unavailable(settings: Settings) -> None:
    store = Store(settings.database_url or "", max_size=1, statement_timeout_s=0.3)
    await store.connect()
    try:
        began = time.monotonic()
        with pytest.raises(NothingApplied, match="QueryCanceledError"):
            async with store.connection() as conn:
                await conn.execute("SELECT pg_sleep(3)")  # the slow side: longer than the timeout
        assert time.monotonic() - began < 2
        assert await _show(store, "statement_timeout") == ["300ms"]  # the connection is still good
    finally:
        await store.close()


@dataclass(frozen=True)
class Ending:
    store: Store  # its lock waits time out after 0.3 s
    dsn: str
    end: End  # a running job's success, to report


@pytest.fixture
async def ending(settings: Settings) -> AsyncIterator[Ending]:
    """A store with a short lock_timeout, and the end of a job running on it to report."""
    dsn = settings.database_url or ""
    store = Store(dsn, max_size=2, lock_timeout_s=0.3)
    await store.connect()
    try:
        start = await _running_job(store)
        yield Ending(store, dsn, End(start.job_id, "r1", start.attempt, JobState.succeeded, 0))
    finally:
        await store.close()


async def test_an_edge_waiting_on_a_lock_past_lock_timeout_is_retried_and_applied_once(ending: Ending) -> None:
    store, end = ending.store, ending.end
    async with row_locked(ending.dsn, end.job_id):
        finishing = asyncio.create_task(store.transitions.finish_many([end]))
        await asyncio.sleep(1.5)  # the lock holder, slower than lock_timeout, then done
        assert not finishing.done()  # still trying
    assert [j.id for j in await finishing] == [end.job_id]
    async with store.connection() as conn:
        finished = await conn.fetchval("SELECT count(*) FROM outbox WHERE subject LIKE 'jobs.finished.%'")
    assert finished == 1


async def test_an_edge_gives_up_after_its_budget_having_applied_nothing(ending: Ending) -> None:
    store, end = ending.store, ending.end
    async with row_locked(ending.dsn, end.job_id):
        began = time.monotonic()
        with pytest.raises(NothingApplied):
            await store.transitions.finish_many([end])  # the lock is held past the whole budget
        assert UNAVAILABLE_RETRY_S - 1 < time.monotonic() - began < UNAVAILABLE_RETRY_S + 2
    assert (await store.job_get(end.job_id)).state == "running"  # type: ignore[union-attr]


async def test_a_connection_lost_before_commit_applied_nothing(settings: Settings) -> None:
    dsn = settings.database_url or ""
    store = Store(dsn, max_size=1)
    await store.connect()
    admin = await asyncpg.connect(dsn)
    try:
        await factories.pool(store, "lost")
        with pytest.raises(NothingApplied):
            async with store.transaction() as conn:
                await conn.execute("UPDATE pools SET max_concurrent = 7 WHERE name = 'lost'")
                await admin.execute("SELECT pg_terminate_backend($1)", await conn.fetchval("SELECT pg_backend_pid()"))
                await conn.execute("SELECT 1")  # the next statement finds the connection gone
        assert await admin.fetchval("SELECT max_concurrent FROM pools WHERE name = 'lost'") != 7
        assert await _show(store, "statement_timeout")  # the pool has a new connection
    finally:
        await admin.close()
        await store.close()


@contextlib.asynccontextmanager
async def read_only(pg_dsn: str, store: Store) -> AsyncIterator[None]:
    """The test's database read-only, as a demoted primary is, for every connection: its
    sessions ended so that they reconnect read-only."""
    async with store.connection() as conn:
        database = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        yield
    finally:
        await admin.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        await admin.close()


async def test_a_read_only_database_answers_503_changes_nothing_and_admits_once_writable(
    pg_dsn: str, front: Runtime, http: aiohttp.ClientSession, store: Store
) -> None:
    await factories.pool(store)
    async with read_only(pg_dsn, store):
        began = time.monotonic()
        status, body = await call(http, "POST", "/v1/jobs", json={"pool": "default", "key": "ro"})
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert "read-only" in body["error"]["message"]
        assert time.monotonic() - began >= UNAVAILABLE_RETRY_S - 1  # tried again inside first
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    status, body = await call(http, "POST", "/v1/jobs", json={"pool": "default", "key": "ro"})
    assert status == 201, body


async def test_a_moment_of_read_only_is_ridden_out_inside(
    pg_dsn: str, front: Runtime, http: aiohttp.ClientSession, store: Store
) -> None:
    await factories.pool(store)
    async with read_only(pg_dsn, store):
        posting = asyncio.create_task(call(http, "POST", "/v1/jobs", json={"pool": "default", "key": "blip"}))
        await asyncio.sleep(1.0)  # a failover's moment, shorter than the retry budget
    status, body = await posting
    assert status == 201, body


def test_unavailable_covers_what_was_not_applied() -> None:
    assert issubclass(NothingApplied, StoreUnavailable)  # every caller of "unavailable" handles both
