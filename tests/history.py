"""Every job transition, recorded by a trigger a test installs in its database: the exact history
the cap and exactly-once checks read, never a sample of it (a sampler misses what happens between
two looks, and reads a count that was never committed together).

`seq` orders the transitions as they happened: a job's are serialized by its row lock, and a claim
and a finish in one pool by the pool's count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

IN_FLIGHT = {"assigned", "running"}

RECORD_SQL = """
CREATE TABLE IF NOT EXISTS transition_history (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL,
    pool        text NOT NULL,
    old_state   text,
    new_state   text NOT NULL,
    attempt     integer NOT NULL,
    runner_id   text
);
CREATE OR REPLACE FUNCTION record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO transition_history (job_id, pool, old_state, new_state, attempt, runner_id)
        VALUES (NEW.id, NEW.pool, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.attempt,
                NEW.runner_id);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER transition_history AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION record_transition();
"""
READ_SQL = "SELECT * FROM transition_history ORDER BY seq"


async def record(conn: asyncpg.Connection) -> None:
    """From now on, every job transition of this database is recorded."""
    await conn.execute(RECORD_SQL)


async def read(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(READ_SQL)]


def in_flight_peaks(transitions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Per pool, the most jobs assigned or running at once."""
    n: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for tr in sorted(transitions, key=lambda tr: tr["seq"]):
        pool = tr["pool"]
        n[pool] += (tr["new_state"] in IN_FLIGHT) - (tr["old_state"] in IN_FLIGHT)
        peak[pool] = max(peak[pool], n[pool])
    return dict(peak)
