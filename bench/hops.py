"""What one hop between processes costs on this machine: the floor under the latency figures.

    python -m bench.hops [--quick]

A job on an idle system crosses a few hops before it starts (bench/dispatch.py's idle scenario:
the intake, admission's wake, the hand-off and its ack, the start request, and the transactions
of admission, claim and start). Each costs at least what one message there and back costs between
processes that sleep while they wait, whatever the code that sends it. Measured here on the
benchmark's own servers, at the idle scenario's pace (`idle`: IDLE_RATE a second, both sides
asleep in between) and back to back (`busy`), in ms, beside the stack's services (idle then, as
they are between the idle scenario's jobs):

- `nats_request_ms`: a core NATS request on the services' own connection, answered by another
  process (bench/echo.py, connected as they are, on the same event loop);
- `postgres_round_trip_ms`: `SELECT 1` on a pooled connection;
- `postgres_commit_ms`: a one-row insert committed with `synchronous_commit` on (as admission's
  and the start's commits are: the claim's does not wait for the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.runtime import Runtime
from bench.dispatch import IDLE_RATE
from bench.harness import percentiles, scenario_command
from bench.procs import service_env
from orchestrator.bus.credentials import credentials_env
from orchestrator.settings import Settings

# Hops timed of each kind at each pace (in --quick, QUICK_HOPS).
HOPS, QUICK_HOPS = 200, 20
# How long the responder may take to start and subscribe.
READY_TIMEOUT_S = 30.0


async def timed(hop: Callable[[], Awaitable[Any]], n: int, rate: float | None) -> dict[str, float]:
    """Percentiles (ms) of `n` hops, one every 1 / `rate` s, or back to back without a rate."""
    taken = []
    for _ in range(n):
        if rate:
            await asyncio.sleep(1 / rate)
        start = time.perf_counter()
        await hop()
        taken.append((time.perf_counter() - start) * 1000)
    return percentiles(taken)


async def both_paces(hop: Callable[[], Awaitable[Any]], n: int) -> dict[str, dict[str, float]]:
    return {"idle": await timed(hop, n, IDLE_RATE), "busy": await timed(hop, n, None)}


@contextlib.asynccontextmanager
async def echo(settings: Settings, subject: str) -> AsyncIterator[None]:
    """bench/echo.py answering `subject` on the NATS of `settings`, in a process of its own,
    until the block ends (the URL and credentials go in its environment, not on its command line)."""
    env = {**os.environ, **service_env(settings), **credentials_env(settings.nats_credentials)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.echo", subject, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(READY_TIMEOUT_S):
            ready = await proc.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"bench.echo did not start (exit code {await proc.wait()})")
        yield
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def measure(runtime: Runtime, quick: bool) -> dict[str, Any]:
    store, bus = runtime.store, runtime.bus
    assert store is not None and bus is not None
    n = QUICK_HOPS if quick else HOPS
    results: dict[str, Any] = {}
    subject = f"{bus.subjects.root}.bench.echo"
    async with echo(runtime.settings, subject):
        results["nats_request_ms"] = await both_paces(lambda: bus.nc.request(subject, b"", timeout=5), n)
    async with store.connection() as conn:
        results["postgres_round_trip_ms"] = await both_paces(lambda: conn.fetchval("SELECT 1"), n)
        # A table left by a run cut short (on a Postgres given by URL) is made anew. Not TEMP
        # nor UNLOGGED: their commits write no WAL, so they would not wait for the disk.
        await conn.execute("DROP TABLE IF EXISTS bench_hops; CREATE TABLE bench_hops (id bigserial PRIMARY KEY)")
        try:
            await conn.execute("SET synchronous_commit = on")  # whatever the server's default
            commit = "INSERT INTO bench_hops DEFAULT VALUES"
            results["postgres_commit_ms"] = await both_paces(lambda: conn.execute(commit), n)
        finally:  # the pool does not reset a session it takes back
            await conn.execute("DROP TABLE bench_hops; RESET synchronous_commit")
    return results


if __name__ == "__main__":
    scenario_command("hops", measure, __doc__ or "")
