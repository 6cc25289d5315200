"""The two reference points the orchestrator is measured against, on the same Postgres:

- the limit: a bare asyncpg loop, `concurrency` workers each doing insert → claim with
  `FOR UPDATE SKIP LOCKED` → complete, one row per transaction (what any Postgres queue must do
  at least, with no bus, no capacity, no hand-off);
- a peer users pick today: Procrastinate, deferring and running the same no-op jobs with a
  worker of the same concurrency.

    python -m bench.baselines [--jobs N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from orchestrator.embedded import EmbeddedPostgres

BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS bare_jobs_queued ON bare_jobs (id) WHERE state = 'queued';
"""


async def bare_loop(dsn: str, jobs: int, concurrency: int) -> float:
    """Jobs/s of `concurrency` workers doing insert → claim → complete, a transaction each."""
    setup = await asyncpg.connect(dsn)
    await setup.execute(BARE_SCHEMA)
    await setup.close()
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    per_worker = jobs // concurrency

    async def worker() -> None:
        async with pool.acquire() as conn:
            for _ in range(per_worker):
                await conn.execute('INSERT INTO bare_jobs (payload) VALUES (\'{"command": ["true"]}\')')
                async with conn.transaction():
                    job_id = await conn.fetchval(
                        """UPDATE bare_jobs SET state = 'running' WHERE id = (
                               SELECT id FROM bare_jobs WHERE state = 'queued'
                               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"""
                    )
                if job_id is not None:
                    await conn.execute("UPDATE bare_jobs SET state = 'succeeded' WHERE id = $1", job_id)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await pool.close()
    return per_worker * concurrency / elapsed


async def procrastinate_run(dsn: str, jobs: int, concurrency: int) -> float:
    """Jobs/s of Procrastinate deferring `jobs` no-op jobs and a worker running them all."""
    import procrastinate  # only the benchmark needs it

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_libpq(dsn)))

    @app.task(queue="bench", name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        with contextlib.suppress(Exception):  # already applied by an earlier run
            await app.schema_manager.apply_schema_async()
        start = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def defer() -> None:
            async with sem:
                await noop.defer_async()

        worker = asyncio.create_task(
            app.run_worker_async(queues=["bench"], concurrency=concurrency, wait=True, install_signal_handlers=False)
        )
        await asyncio.gather(*(defer() for _ in range(jobs)))
        async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            while True:
                cur = await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
                (left,) = await cur.fetchone()
                if left == 0:
                    break
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return jobs / elapsed


def _libpq(dsn: str) -> str:
    """asyncpg accepts `postgresql://user:@/db?host=/socket/dir`; libpq wants no empty password."""
    return dsn.replace("postgres:@", "postgres@")


@contextlib.asynccontextmanager
async def databases(names: list[str]) -> AsyncIterator[dict[str, str]]:
    """One embedded Postgres with a fresh database per name."""
    with tempfile.TemporaryDirectory(prefix="orch-baselines-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        dsn = await server.start()
        admin = await asyncpg.connect(dsn)
        try:
            for name in names:
                await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        base, _, query = dsn.partition("?")
        root = base.rsplit("/", 1)[0]
        try:
            yield {name: f"{root}/{name}?{query}" for name in names}
        finally:
            await server.stop()


async def main(jobs: int, concurrency: int) -> dict[str, float]:
    async with databases(["bare", "peer"]) as dsns:
        bare = await bare_loop(dsns["bare"], jobs, concurrency)
        peer = await procrastinate_run(dsns["peer"], jobs, concurrency)
    results = {"bare_asyncpg_jobs_per_s": round(bare), "procrastinate_jobs_per_s": round(peer)}
    for key, value in results.items():
        print(f"  {key:<26} {value}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.concurrency))
