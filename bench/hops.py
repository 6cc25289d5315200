"""What one hop between processes costs on this machine: the floor under the latency figures.

    python -m bench.hops [--quick]

A job on an idle system crosses a few hops before it starts (bench/dispatch.py's idle scenario:
the intake, admission's wake, the hand-off and its ack, the start request, and the transactions
of admission, claim and start). Each costs at least what one message there and back costs between
processes that sleep while they wait, whatever the code that sends it. Measured here on the
benchmark's own servers, at the idle scenario's pace (`idle`: IDLE_RATE a second, both sides
asleep in between) and back to back (`busy`), in ms:

- `nats_request_ms`: a core NATS request from this process, answered by another (bench/echo.py,
  nats-py on the same event loop as the services);
- `postgres_round_trip_ms`: `SELECT 1` on a pooled connection;
- `postgres_commit_ms`: a one-row insert committed with `synchronous_commit` on (as admission's
  and the start's commits are: the claim's does not wait for the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats

from app.runtime import Runtime
from bench.dispatch import IDLE_RATE
from bench.harness import percentiles, scenario_command

SUBJECT = "bench.hops.echo"
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
async def echo(url: str) -> AsyncIterator[None]:
    """bench/echo.py answering SUBJECT on `url`, in a process of its own, until the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.echo", url, SUBJECT, stdout=asyncio.subprocess.PIPE
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
    store, url = runtime.store, runtime.settings.nats_url
    assert store is not None and url
    n = QUICK_HOPS if quick else HOPS
    results: dict[str, Any] = {}
    nc = await nats.connect(url)
    try:
        async with echo(url):
            results["nats_request_ms"] = await both_paces(lambda: nc.request(SUBJECT, b"", timeout=5), n)
    finally:
        await nc.close()
    async with store.connection() as conn:
        results["postgres_round_trip_ms"] = await both_paces(lambda: conn.fetchval("SELECT 1"), n)
        await conn.execute("CREATE TABLE bench_hops (id bigserial PRIMARY KEY)")
        try:
            await conn.execute("SET synchronous_commit = on")  # whatever the server's default
            commit = "INSERT INTO bench_hops DEFAULT VALUES"
            results["postgres_commit_ms"] = await both_paces(lambda: conn.execute(commit), n)
        finally:
            await conn.execute("DROP TABLE bench_hops")
    return results


if __name__ == "__main__":
    scenario_command("hops", measure, __doc__ or "")
