"""Migrations applied from zero give exactly the schema in `schema.sql`, and re-running is a no-op."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest

from orchestrator.store import Store
from orchestrator.store.migrate import migrations
from tests.conftest import with_database

SNAPSHOT = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                  FROM information_schema.columns
                  WHERE table_schema = 'public' AND table_name <> 'schema_migrations' ORDER BY 1, 2""",
    "indexes": """SELECT tablename, indexname, indexdef FROM pg_indexes
                  WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1, 2""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                      WHERE connamespace = 'public'::regnamespace
                        AND conrelid::regclass::text <> 'schema_migrations' ORDER BY 1, 2""",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1""",
    "options": """SELECT relname, reloptions FROM pg_class
                  WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
                    AND relname <> 'schema_migrations' ORDER BY 1""",
}


@pytest.fixture
async def empty_databases(pg_dsn: str) -> AsyncIterator[tuple[str, str]]:
    names = ("mig_from_zero", "mig_schema_sql")
    conn = await asyncpg.connect(pg_dsn)
    try:
        for name in names:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        yield with_database(pg_dsn, names[0]), with_database(pg_dsn, names[1])
    finally:
        for name in names:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


async def snapshot(dsn: str) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {what: [tuple(r) for r in await conn.fetch(sql)] for what, sql in SNAPSHOT.items()}
    finally:
        await conn.close()


async def test_migrations_from_zero_match_schema_sql(empty_databases: tuple[str, str]) -> None:
    migrated, declared = empty_databases
    store = Store(migrated, max_size=1)
    await store.connect()
    try:
        assert await store.migrate() == [v for v, _, _ in migrations()]
        assert await store.migrate() == []  # idempotent: nothing left to apply
    finally:
        await store.close()
    conn = await asyncpg.connect(declared)
    try:
        await conn.execute((resources.files("orchestrator.store") / "schema.sql").read_text())
    finally:
        await conn.close()
    got, want = await snapshot(migrated), await snapshot(declared)
    assert got["columns"], "the migrations created no tables"
    assert got == want
