"""`schema.sql` is what every migration from zero adds up to: compare the two catalogs."""

from __future__ import annotations

from importlib import resources

import asyncpg

from tests.conftest import with_database

CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, column_default, is_nullable, is_identity
                  FROM information_schema.columns WHERE table_schema = 'public'
                  AND table_name <> 'schema_migrations' ORDER BY 1, 2""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                      WHERE connamespace = 'public'::regnamespace
                      AND conrelid::regclass::text <> 'schema_migrations' ORDER BY 1, 2""",
    "indexes": """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
                  AND tablename <> 'schema_migrations' ORDER BY 1""",
    "options": """SELECT relname, reloptions FROM pg_class WHERE relnamespace = 'public'::regnamespace
                  AND relkind = 'r' AND relname <> 'schema_migrations' ORDER BY 1""",
}


async def catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}
    finally:
        await conn.close()


async def test_schema_sql_equals_the_migrations(pg_dsn: str, database_url: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS orch_schema_sql")
        await admin.execute("CREATE DATABASE orch_schema_sql")
        fresh = with_database(pg_dsn, "orch_schema_sql")
        conn = await asyncpg.connect(fresh)
        try:
            await conn.execute((resources.files("orchestrator.store") / "schema.sql").read_text())
        finally:
            await conn.close()
        assert await catalog(fresh) == await catalog(database_url)  # the test database is migrated
    finally:
        await admin.execute("DROP DATABASE IF EXISTS orch_schema_sql WITH (FORCE)")
        await admin.close()
