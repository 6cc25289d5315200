"""The embedded PostgreSQL's settings (orchestrator/embedded/postgres_server.py), each observed in
Postgres's own statistics on a server of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from orchestrator.embedded import EmbeddedPostgres
from tests.system import processes

# Bytes a segment's creation may write once it is not zero-filled: Postgres writes its last byte.
UNFILLED_MAX_BYTES = 1024
# A new server has one segment and none recycled: each switch sends the next record to a segment
# that must be created (by this backend, or by the WAL writer, whose statistics reach the view a
# moment later: the next switch then counts both).
MAX_SWITCHES = 3

_WAL_INIT = """SELECT sum(writes) AS writes, sum(write_bytes) AS bytes
               FROM pg_stat_io WHERE object = 'wal' AND context = 'init'"""


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection]:
    with processes.data_dir() as data:
        server = EmbeddedPostgres(data / "postgres")
        connection = await asyncpg.connect(await server.start())
        try:
            yield connection
        finally:
            await connection.close()
            await server.stop()


async def test_a_new_wal_segment_is_not_zero_filled(conn: asyncpg.Connection) -> None:
    """A commit that needs a new WAL segment waits until it exists, behind the WAL write lock
    with every other commit: zero-filled, that is 16 MiB written and fsynced (14 ms in a
    throughput run, 50-90 ms beside a vacuum)."""
    before = after = await conn.fetchrow(_WAL_INIT)
    for _ in range(MAX_SWITCHES):
        await conn.execute("SELECT pg_switch_wal()")
        await conn.execute("SELECT pg_logical_emit_message(false, 'wal_probe', '', true)")
        await conn.execute("SELECT pg_stat_force_next_flush()")
        after = await conn.fetchrow(_WAL_INIT)
        if after["writes"] > before["writes"]:
            break
    created = after["writes"] - before["writes"]
    assert created >= 1, f"no WAL segment was created in {MAX_SWITCHES} switches"
    assert (after["bytes"] - before["bytes"]) / created <= UNFILLED_MAX_BYTES
