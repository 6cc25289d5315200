"""The embedded PostgreSQL's settings (orchestrator/embedded/postgres_server.py), on the session's
server: what each changes, observed in Postgres's own statistics."""

from __future__ import annotations

import asyncpg

# Bytes a segment's creation may write once it is not zero-filled: Postgres writes its last byte.
UNFILLED_MAX_BYTES = 1024

# A checkpoint keeps at most max_wal_size (1 GiB) of segments for reuse: 64 of 16 MiB.
MAX_SWITCHES = 80

_WAL_INIT = """SELECT sum(writes) AS writes, sum(write_bytes) AS bytes
               FROM pg_stat_io WHERE object = 'wal' AND context = 'init'"""


async def test_a_new_wal_segment_is_not_zero_filled(pg_dsn: str) -> None:
    """A commit that needs a new WAL segment waits until it exists, behind the WAL write lock
    with every other commit: zero-filled, that is 16 MiB written and fsynced, 50-90 ms."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        before = after = await conn.fetchrow(_WAL_INIT)
        # Each switch sends the next record to the next segment: a new one, or one a checkpoint
        # recycled (which needs no creation: then go on to the next).
        for _ in range(MAX_SWITCHES):
            await conn.execute("SELECT pg_switch_wal()")
            await conn.execute("SELECT pg_logical_emit_message(false, 'wal_probe', '', true)")
            await conn.execute("SELECT pg_stat_force_next_flush()")
            after = await conn.fetchrow(_WAL_INIT)
            if after["writes"] > before["writes"]:
                break
    finally:
        await conn.close()
    created = after["writes"] - before["writes"]
    assert created >= 1, f"no WAL segment was created in {MAX_SWITCHES} switches"
    assert (after["bytes"] - before["bytes"]) / created <= UNFILLED_MAX_BYTES
