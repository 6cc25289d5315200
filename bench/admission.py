"""Admission throughput through the JetStream door: `python -m bench.admission`.

Starts its own embedded NATS and Postgres in a temporary directory, then for 1 and then 2
admission instances (each `orchestrator serve admission`, a process of its own, sharing the
durable intake consumer as they would in production): pre-loads N `JobSubmitted` with unique
keys into the intake stream, starts the instances, and times from the first admitted job to the
last. Start-up is not timed. Reports admitted jobs/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from app import main_loop
from orchestrator.bus import Bus, Subjects
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.pools import change_pool
from orchestrator.store import Store
from schemas.pools import PoolConfig

PUBLISH_WINDOW = 1000  # publishes in flight at once while pre-loading


async def preload(bus: Bus, pool: str, count: int) -> None:
    await bus.ensure_intake_stream()
    for start in range(0, count, PUBLISH_WINDOW):
        await asyncio.gather(
            *(
                bus.submit(json.dumps({"pool": pool, "key": f"{pool}-{i}", "payload": {}}).encode(), key=f"{pool}-{i}")
                for i in range(start, min(start + PUBLISH_WINDOW, count))
            )
        )


async def run(nats_url: str, dsn: str, store: Store, instances: int, count: int) -> float:
    namespace = f"bench{instances}"
    pool = f"bench{instances}"
    bus = Bus(nats_url, Subjects(namespace), name="bench")
    await bus.connect()
    try:
        await change_pool(store, bus, pool, config=PoolConfig(max_concurrent=-1, max_active=-1))
        await preload(bus, pool, count)
    finally:
        await bus.close()
    env = {
        **os.environ,
        "ORCH_NATS_URL": nats_url,
        "ORCH_DATABASE_URL": dsn,
        "ORCH_NAMESPACE": namespace,
        "ORCH_LOG_LEVEL": "WARNING",
    }
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", "serve", "admission", env=env)
        for _ in range(instances)
    ]
    try:
        first_at, first_count = None, 0
        deadline = time.monotonic() + 300
        while True:
            done = await store.job_count(pool)
            now = time.monotonic()
            if first_at is None and done > 0:
                first_at, first_count = now, done
            if done >= count:
                break
            if now > deadline or any(p.returncode is not None for p in procs):
                raise RuntimeError(f"admitted {done} of {count}; an instance exited or time ran out")
            await asyncio.sleep(0.01)
        assert first_at is not None
        return (count - first_count) / max(now - first_at, 1e-3)
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await p.wait()


async def main(count: int, instances: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp:
        nats, pg = EmbeddedNats(Path(tmp) / "nats"), EmbeddedPostgres(Path(tmp) / "pg")
        nats_url, dsn = await asyncio.gather(nats.start(), pg.start())
        store = Store(dsn, max_size=2)
        try:
            await store.connect()
            await store.migrate()
            for n in instances:
                rate = await run(nats_url, dsn, store, n, count)
                print(f"admission instances={n} jobs={count} admitted/s={rate:,.0f}", flush=True)
        finally:
            await store.close()
            await nats.stop()
            await pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--instances", default="1,2", help="comma-separated instance counts to run in turn")
    args = parser.parse_args()
    main_loop.run(main(args.jobs, [int(n) for n in args.instances.split(",")]))
