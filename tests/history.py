"""Every job transition, recorded by a trigger a test installs in its database: the exact history
the cap and exactly-once checks read, never a sample of it (a sampler misses what happens between
two looks, and reads a count that was never committed together).

`seq` orders the transitions as they happened: a job's are serialized by its row lock, and a claim
and a finish in one pool by the pool's count. A claim (queued -> assigned) records the leader term
that made it (`claim_epoch`) and the shard its pool was in; every term Postgres issues is recorded
too (`term_history`), so "one dispatcher per pool at a time" is read from what happened. A claim
of a concurrency key counts only ends that committed before it (it locks the key first), and an
end's `seq` is drawn before its commit: so by `seq`, every end a claim relied on comes before it,
and a peak read in `seq` order is never less than the true one.

`at` is when it happened: a claim's own `assigned_at` (the time its rate limit was judged at), or
the clock when the row changed.
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
    claim_epoch bigint,
    shard       text,
    concurrency_key text,
    rate_limit_key text,
    -- When it happened: a claim's own assigned_at (the time its rate limit was judged at), else the
    -- clock when the row changed (to time recoveries).
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS term_history (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard       text NOT NULL,
    epoch       bigint NOT NULL,
    holder      text
);
CREATE OR REPLACE FUNCTION record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO transition_history (job_id, pool, old_state, new_state, attempt, runner_id, claim_epoch, shard,
                                        concurrency_key, rate_limit_key, at)
        VALUES (NEW.id, NEW.pool, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.attempt,
                NEW.runner_id, NEW.claim_epoch, (SELECT p.dispatch_shard FROM pools p WHERE p.name = NEW.pool),
                NEW.concurrency_key, NEW.rate_limit_key,
                CASE WHEN NEW.state = 'assigned' THEN NEW.assigned_at ELSE clock_timestamp() END);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER transition_history AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION record_transition();
CREATE OR REPLACE FUNCTION record_term() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO term_history (shard, epoch, holder) VALUES (NEW.shard, NEW.epoch, NEW.holder);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER term_history AFTER INSERT OR UPDATE ON dispatch_epochs
    FOR EACH ROW EXECUTE FUNCTION record_term();
"""
READ_SQL = "SELECT * FROM transition_history ORDER BY seq"
TERMS_SQL = "SELECT * FROM term_history ORDER BY seq"


async def record(conn: asyncpg.Connection) -> None:
    """From now on, every job transition of this database is recorded."""
    await conn.execute(RECORD_SQL)


async def read(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(READ_SQL)]


async def read_terms(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    """Every leader term issued since recording began: epoch -> (shard, holder)."""
    return {r["epoch"]: (r["shard"], r["holder"]) for r in await conn.fetch(TERMS_SQL)}


def claims(transitions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The claims (queued -> assigned), in the order they happened."""
    return [
        tr
        for tr in sorted(transitions, key=lambda tr: tr["seq"])
        if (tr["old_state"], tr["new_state"]) == ("queued", "assigned")
    ]


def interleaved_terms(transitions: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Pools that had two dispatchers at once: a term claimed in the pool after another term
    had claimed there since its own last claim. Per such pool, its terms in the order they
    claimed (each run of claims by one term once). Empty: one dispatcher per pool at a time."""
    runs: dict[str, list[int]] = defaultdict(list)
    for tr in claims(transitions):
        terms = runs[tr["pool"]]
        if not terms or terms[-1] != tr["claim_epoch"]:
            terms.append(tr["claim_epoch"])
    return {pool: terms for pool, terms in runs.items() if len(terms) != len(set(terms))}


def claims_outside_their_shard(
    transitions: Iterable[Mapping[str, Any]], terms: Mapping[int, tuple[str, str]]
) -> list[Mapping[str, Any]]:
    """Claims made under a term of another shard than the one their pool was in, or under a term
    Postgres never issued: each a dispatcher claiming what was not its to claim."""
    return [tr for tr in claims(transitions) if terms.get(tr["claim_epoch"], (None, None))[0] != tr["shard"]]


def in_flight_peaks(transitions: Iterable[Mapping[str, Any]], by: str = "pool") -> dict[str, int]:
    """Per pool (or per value of another column: `concurrency_key`), the most jobs assigned or
    running at once. Jobs without a value (no key) are not counted."""
    n: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for tr in sorted(transitions, key=lambda tr: tr["seq"]):
        group = tr[by]
        if group is None:
            continue
        n[group] += (tr["new_state"] in IN_FLIGHT) - (tr["old_state"] in IN_FLIGHT)
        peak[group] = max(peak[group], n[group])
    return dict(peak)


def concurrency_key_peaks(transitions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Per concurrency key, the most of its jobs assigned or running at once."""
    return in_flight_peaks(transitions, by="concurrency_key")


def claim_times(transitions: Iterable[Mapping[str, Any]], column: str, value: str) -> list[float]:
    """When each job with `column` = `value` (a rate_limit_key, a pool) was claimed (assigned), in
    order, as epoch seconds: the starts a rate limit counts."""
    return sorted(tr["at"].timestamp() for tr in transitions if tr["new_state"] == "assigned" and tr[column] == value)


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
