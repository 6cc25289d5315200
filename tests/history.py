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
    runner_id   text,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()  -- when it happened (to time recoveries)
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


def dispatch_stalls(transitions: Iterable[Mapping[str, Any]], caps: Mapping[str, int]) -> list[tuple[Any, float]]:
    """Each time a pool had a job queued and room under its cap, and no job was assigned: when
    it began and how many seconds until the next assignment (a recovery's length, from `at`). A
    wait that never ended is left out, and so is one for jobs that were not queued yet."""
    queued: dict[str, int] = defaultdict(int)
    in_flight: dict[str, int] = defaultdict(int)
    since: dict[str, Any] = {}
    stalls: list[tuple[Any, float]] = []
    for tr in sorted(transitions, key=lambda tr: tr["seq"]):
        pool, new, old = tr["pool"], tr["new_state"], tr["old_state"]
        if new == "assigned" and since.get(pool) is not None:
            stalls.append((since[pool], (tr["at"] - since[pool]).total_seconds()))
            since[pool] = None
        queued[pool] += (new == "queued") - (old == "queued")
        in_flight[pool] += (new in IN_FLIGHT) - (old in IN_FLIGHT)
        cap = caps.get(pool, -1)
        waiting = queued[pool] > 0 and (cap < 0 or in_flight[pool] < cap)
        if not waiting:
            since[pool] = None
        elif since.get(pool) is None:
            since[pool] = tr["at"]
    return stalls
