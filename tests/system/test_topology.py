"""compose.yaml's topology as OS processes, since containers cannot run here: `orchestrator
migrate` on an empty database, then `serve admission` x2, `serve capacity`, `serve dispatch` x2
and `serve api` all at once (each applying compose's own pools file, `deploy/pools.toml`), then
`orchestrator runner` x3 once capacity serves; each its own process of the real CLI, on the
session NATS and a Postgres database of this test's own. Thousands of jobs go in through the
JetStream intake; every one must run exactly once and succeed on its first attempt, under one
dispatch leader."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bench.procs import ServiceProcess, start_all
from orchestrator.bus import Bus
from orchestrator.pools import load_pools_file
from orchestrator.settings import Settings
from orchestrator.store.migrate import migrations
from schemas.pools import PoolConfig
from tests.support import eventually

pytestmark = pytest.mark.slow

JOBS = 2000
POOLS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "pools.toml"  # what compose mounts
LABELS = "linux,x86_64"  # compose's runners
RUNNERS = 3
SLOTS = 8


class Topology:
    def __init__(self, settings: Settings, database_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.env = {
            "ORCH_NATS_URL": settings.nats_url or "",
            "ORCH_DATABASE_URL": database_url,
            "ORCH_NAMESPACE": settings.namespace,
            "ORCH_POOLS_FILE": str(POOLS_FILE),
            "ORCH_HTTP_PORT": "0",
            "ORCH_STOP_TIMEOUT_S": "2",
        }

        def serve(instance_id: str, service: str) -> ServiceProcess:
            return ServiceProcess(instance_id, [service], self.env, log_dir)

        self.services = [
            serve("capacity", "capacity"),
            serve("admission-0", "admission"),
            serve("admission-1", "admission"),
            serve("dispatch-0", "dispatch"),
            serve("dispatch-1", "dispatch"),
            serve("api", "api"),
        ]
        self.runners = [
            ServiceProcess(
                f"runner-{i}",
                [],
                self.env,
                log_dir,
                args=["runner", "--pool", "default", "--labels", LABELS, "--slots", str(SLOTS), "--id", f"runner-{i}"],
                ready_text=f"runner runner-{i} serving",
            )
            for i in range(RUNNERS)
        ]
        self.api_url = ""

    @property
    def procs(self) -> list[ServiceProcess]:
        return [*self.services, *self.runners]

    def migrate(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        everything = [version for version, _, _ in migrations()]
        assert result.stdout.strip() == f"applied migrations: {everything}", result.stdout

    async def start(self) -> None:
        # As compose starts them: every service at once once migrated, the runners once capacity
        # serves (a runner's start is its registration, which capacity answers).
        await start_all(self.services)
        await start_all(self.runners)
        # `serve api` announces its address like `up` does (the port was 0: any free one).
        ready = re.search(r"^orchestrator ready http=(\S+) ", self.services[-1].log(), re.M)
        assert ready, self.services[-1].log()
        self.api_url = ready.group(1)

    async def close(self) -> None:
        await asyncio.gather(*(proc.close() for proc in self.procs))


@pytest.fixture
async def topology(settings: Settings, empty_database_url: str, tmp_path: Path) -> AsyncIterator[Topology]:
    topology = Topology(settings, empty_database_url, tmp_path / "logs")
    topology.migrate()
    try:
        await topology.start()
        yield topology
    finally:
        await topology.close()
    for proc in topology.procs:  # a clean, graceful stop of every one
        assert proc.proc is not None and proc.proc.returncode == 0, f"{proc.instance_id}:\n{proc.log()[-3000:]}"


async def test_every_job_runs_exactly_once_across_the_scaled_out_services(
    topology: Topology, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.log"
    keys = [f"job-{i}" for i in range(JOBS)]
    started = time.monotonic()
    for key in keys:
        # Each run appends its key: a job run twice would show twice. (Short appends are atomic.)
        body = {"pool": "default", "key": key, "payload": {"command": ["sh", "-c", f"echo {key} >> {ran}"]}}
        await bus.submit(json.dumps(body).encode(), key=key)
    submitted = time.monotonic()

    conn = await asyncpg.connect(topology.database_url)
    try:
        # Six processes applied the pools file at once: it holds, exactly as written.
        pools = {r["name"]: PoolConfig.from_row(r) for r in await conn.fetch("SELECT * FROM pools")}
        assert pools == load_pools_file(POOLS_FILE).pools

        async def all_final() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM jobs WHERE state NOT IN ('queued', 'assigned', 'running')")
            return n == JOBS

        await eventually(all_final, timeout=90, what=f"all {JOBS} jobs to end")
        done = time.monotonic()
        rows = await conn.fetch("SELECT key, state, attempt, runner_id, claim_epoch FROM jobs")
    finally:
        await conn.close()
    print(f"\n{JOBS} jobs: submitted in {submitted - started:.1f}s, all ended {done - started:.1f}s after the first")

    assert sorted(r["key"] for r in rows) == sorted(keys)  # each admitted once
    assert {(r["state"], r["attempt"]) for r in rows} == {("succeeded", 1)}  # none failed, none retried
    assert sorted(ran.read_text().split()) == sorted(keys)  # each ran exactly once
    assert {r["runner_id"] for r in rows} == {f"runner-{i}" for i in range(RUNNERS)}  # runners share the work
    # One leader dispatched all of it; the other dispatch instance stood by.
    epochs = {r["claim_epoch"] for r in rows}
    assert len(epochs) == 1 and None not in epochs
    async with aiohttp.ClientSession() as http, http.get(f"{topology.api_url}/v1/leader") as resp:
        leader = await resp.json()
    assert leader["epoch"] in epochs
    assert leader["holder"] in {"dispatch-0", "dispatch-1"}

    # The image's HEALTHCHECK for the api container: its own /readyz on its port.
    port = topology.api_url.rsplit(":", 1)[1]
    health = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "health", "api"],
        env={**os.environ, **topology.env, "ORCH_HTTP_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert health.returncode == 0, health.stderr
