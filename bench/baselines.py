"""The reference points the orchestrator is measured against, on one embedded Postgres of their
own (a fresh database each), with the same number of jobs as our end-to-end run, all queued at
once as ours are (a producer inserting them in batches while the workers drain):

- the bare loop: asyncpg workers each claiming one row with `FOR UPDATE SKIP LOCKED` and
  completing it, a statement each (what any Postgres queue must do at least per job, with no bus,
  no capacity, no hand-off);
- the batched loop: the same, claiming up to `BATCH` rows at once and completing them in one
  statement: the machine's limit for this shape of work;
- two peers users pick today, running the same no-op jobs: Procrastinate (Python), deferring
  them one by one, and graphile-worker (Node.js) with its documented throughput settings
  (24 concurrent jobs, a local queue of 500, completions batched), adding them in bulk. Each
  with its CPU per job (its process + every Postgres process, as ours).

graphile-worker is installed on first use into bench/peers/graphile/node_modules (`npm ci`,
the lockfile committed beside it); without node/npm, or when the install fails (no registry),
it is skipped with one line and its figures are None.

    python -m bench.baselines [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from app.main_loop import run
from bench import cpu
from bench.harness import DB_POOL_SIZE
from orchestrator.embedded import EmbeddedPostgres

BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS bare_jobs_queued ON bare_jobs (id) WHERE state = 'queued';
"""
INSERT_BATCH = 1000  # rows per insert of the producer
CONCURRENCY = 16  # workers of the bare loop and of Procrastinate (one connection each)
# The batched loop: rows per claim and workers. The best of a few tried on the 2-core machine
# (2 workers of 1000 beat 16 of 100, 4 of 500, 4 of 1000): the higher the limit, the less it flatters us.
BATCH = 1000
BATCH_WORKERS = 2
GRAPHILE = Path(__file__).parent / "peers" / "graphile"
GRAPHILE_CONCURRENCY = 24  # graphile-worker's documented throughput settings
GRAPHILE_LOCAL_QUEUE = 500


async def _produce(pool: asyncpg.Pool, jobs: int) -> None:
    async with pool.acquire() as conn:
        for start in range(0, jobs, INSERT_BATCH):
            await conn.execute(
                """INSERT INTO bare_jobs (payload) SELECT '{"command": ["true"]}' FROM generate_series(1, $1)""",
                min(INSERT_BATCH, jobs - start),
            )


async def _drain(dsn: str, jobs: int, concurrency: int, batch: int) -> float:
    """Jobs/s of `concurrency` workers claiming up to `batch` rows at a time and completing them
    in one statement, while a producer queues all `jobs`; timed from the first insert."""
    setup = await asyncpg.connect(dsn)
    await setup.execute(BARE_SCHEMA)
    await setup.close()
    pool = await asyncpg.create_pool(dsn, min_size=concurrency + 1, max_size=concurrency + 1)
    claimed = 0

    async def worker() -> None:
        nonlocal claimed
        async with pool.acquire() as conn:
            while claimed < jobs:
                ids = await conn.fetchval(
                    """WITH taken AS (
                           UPDATE bare_jobs SET state = 'running' WHERE id IN (
                               SELECT id FROM bare_jobs WHERE state = 'queued'
                               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id)
                       SELECT array_agg(id) FROM taken""",
                    batch,
                )
                if not ids:
                    await asyncio.sleep(0.001)  # the producer is behind
                    continue
                claimed += len(ids)
                await conn.execute("UPDATE bare_jobs SET state = 'succeeded' WHERE id = ANY($1::bigint[])", ids)

    try:
        start = time.perf_counter()
        await asyncio.gather(_produce(pool, jobs), *(worker() for _ in range(concurrency)))
        return jobs / (time.perf_counter() - start)
    finally:
        await pool.close()


async def bare_loop(dsn: str, jobs: int, concurrency: int = CONCURRENCY) -> float:
    """Jobs/s claimed and completed one row per statement."""
    return await _drain(dsn, jobs, concurrency, 1)


async def batched_loop(dsn: str, jobs: int, concurrency: int = BATCH_WORKERS, batch: int = BATCH) -> float:
    """Jobs/s claimed `batch` at a time, each batch completed in one statement."""
    return await _drain(dsn, jobs, concurrency, batch)


async def procrastinate_run(
    dsn: str, jobs: int, postgres: cpu.Sampler | None = None, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Jobs/s of Procrastinate deferring `jobs` no-op jobs and a worker running them all, with
    `DB_POOL_SIZE` connections as ours (psycopg_pool's default would be 4), and its CPU per job
    (this process + Postgres)."""
    import procrastinate  # only the benchmark needs it

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=_libpq(dsn), min_size=DB_POOL_SIZE, max_size=DB_POOL_SIZE)
    )

    @app.task(queue="bench", name="noop")
    async def noop() -> None:
        return None

    kinds = {"python": cpu.process(os.getpid())}
    if postgres is not None:
        kinds["postgres"] = postgres
    meter = cpu.Meter(kinds)
    async with app.open_async():
        with contextlib.suppress(Exception):  # already applied by an earlier run
            await app.schema_manager.apply_schema_async()
        meter.start()
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
        used = meter.stop()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return {"jobs_per_s": jobs / elapsed, **cpu.per_job(used, jobs, postgres is not None)}


def graphile_install() -> str | None:
    """Install graphile-worker (the committed lockfile's versions) unless already there; why
    not, or None when it is ready."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found"
    pinned = json.loads((GRAPHILE / "package.json").read_text())["dependencies"]["graphile-worker"]
    installed = GRAPHILE / "node_modules" / "graphile-worker" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == pinned:
        return None
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=GRAPHILE, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm ci failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"npm ci failed (no registry?): {last}"
    return None


async def graphile_run(dsn: str, jobs: int, postgres: cpu.Sampler | None = None) -> dict[str, Any]:
    """Jobs/s of graphile-worker adding `jobs` no-op jobs in bulk and running them all, and its
    CPU per job (the node process + Postgres). Its pool is the size its docs recommend, the
    larger of 10 and concurrency + 2 (26, more than our `DB_POOL_SIZE`): with fewer it warns of
    "non-optimal performance", and a reference point must not be handicapped."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(GRAPHILE / "run.mjs"),
        _libpq(dsn),
        str(jobs),
        str(GRAPHILE_CONCURRENCY),
        str(GRAPHILE_LOCAL_QUEUE),
        str(max(10, GRAPHILE_CONCURRENCY + 2)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=GRAPHILE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(600):
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"graphile-worker did not start: {line!r}")
            meter = cpu.Meter({"postgres": postgres} if postgres is not None else {})
            meter.start()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            line = await proc.stdout.readline()
            used = meter.stop()
            proc.stdin.close()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"run.mjs exited with {proc.returncode}")
    result = json.loads(line)
    return {
        "jobs_per_s": result["jobs"] / result["seconds"],
        **cpu.per_job({"node": result["cpu_s"], **used}, result["jobs"], postgres is not None),
    }


def _libpq(dsn: str) -> str:
    """asyncpg accepts `postgresql://user:@/db?host=/socket/dir`; libpq wants no empty password."""
    return dsn.replace("postgres:@", "postgres@")


@dataclass
class References:
    dsns: dict[str, str]  # a fresh database per name
    postgres: cpu.Sampler  # the server's processes, for CPU per job


@contextlib.asynccontextmanager
async def databases(names: list[str]) -> AsyncIterator[References]:
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
            yield References({name: f"{root}/{name}?{query}" for name in names}, cpu.postgres(server.pids))
        finally:
            await server.stop()


async def run_all(jobs: int, with_graphile: bool = True) -> dict[str, Any]:
    """Every reference point with `jobs` jobs; figures of a peer not run are None."""
    results: dict[str, Any] = {}
    async with databases(["bare", "batched", "procrastinate", "graphile"]) as refs:
        results["bare_asyncpg_jobs_per_s"] = round(await bare_loop(refs.dsns["bare"], jobs))
        results["batched_skip_locked_jobs_per_s"] = round(await batched_loop(refs.dsns["batched"], jobs))
        peer = await procrastinate_run(refs.dsns["procrastinate"], jobs, refs.postgres)
        results["procrastinate_jobs_per_s"] = round(peer["jobs_per_s"])
        results["procrastinate_cpu_ms_per_job"] = peer["cpu_ms_per_job"]
        why_not = graphile_install() if with_graphile else "not in --quick"
        graphile: dict[str, Any] = {}
        if why_not is None:
            try:  # a long run is not lost for a peer that would not run (a node too old, ...)
                graphile = await graphile_run(refs.dsns["graphile"], jobs, refs.postgres)
            except Exception as exc:
                print(f"graphile-worker failed, skipped: {exc!r}", file=sys.stderr, flush=True)
        else:
            print(f"graphile-worker skipped: {why_not}", file=sys.stderr, flush=True)
        results["graphile_worker_jobs_per_s"] = round(graphile["jobs_per_s"]) if graphile else None
        results["graphile_worker_cpu_ms_per_job"] = graphile.get("cpu_ms_per_job")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--no-graphile", action="store_true", help="skip graphile-worker (needs node and npm)")
    args = parser.parse_args()
    for key, value in run(run_all(args.jobs, not args.no_graphile)).items():
        print(f"  {key:<32} {value}")
