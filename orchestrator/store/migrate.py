"""Forward-only SQL migrations, applied in order, each in its own transaction.

A session advisory lock makes concurrent `migrate` runs (several containers starting at once)
take turns instead of racing. Neither the services' statement timeout nor their lock timeout
applies: a migration may rebuild an index of a large table, and waits for the services' locks
and for another `migrate` as long as they take.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_KEY = 0x6F726368  # "orch"


def migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("orchestrator.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def apply(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; return the versions applied now."""
    # For this session only: `conn` is the migration's own (Store.migrate), closed after it.
    await conn.execute("SET statement_timeout = 0; SET lock_timeout = 0")
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
