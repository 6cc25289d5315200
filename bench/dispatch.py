"""Capacity and dispatch figures (issue 4), on this machine, through the real services.

    python -m bench.dispatch [--quick]

1. wake: slot freed → next job assigned, with a waiting backlog (pool cap 1, one 1-slot runner),
   from the finish and claim timestamps Postgres recorded (clock_timestamp at each transition).
2. throughput: jobs/s end to end (JetStream submit → succeeded) with no-op jobs on many slots,
   and admission-only jobs/s (submit → admitted) in the same run.
3. capped: the same load through a pool capped at 32 concurrent, as a fraction of uncapped.
4. head-of-line: submit → assigned of a matching job with 0 and with 100,000 non-matching
   jobs queued ahead of it (higher priority).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from app.runtime import Runtime
from bench.factories import bulk_queue, pool
from bench.harness import percentiles, scenario_command, simulated_runners, until
from orchestrator.store import Store
from schemas.jobs import JobSpec


async def fetch(store: Store, sql: str, *args: Any) -> list[Any]:
    async with store.connection() as conn:
        return await conn.fetch(sql, *args)


async def submit(runtime: Runtime, pool_name: str, n: int, prefix: str) -> None:
    """Publish `n` no-op jobs to the JetStream intake, pipelined, as a producer would."""
    assert runtime.bus is not None
    js, subject = runtime.bus.js, runtime.bus.subjects.submit.subject
    for i in range(n):
        body = json.dumps({"pool": pool_name, "payload": {"command": ["true"]}}).encode()
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": f"{prefix}-{i}"})
    await js.publish_async_completed()


async def latency_at_load(runtime: Runtime, rate: float, seconds: float) -> dict[str, Any]:
    """Submit → start latency (ms) with jobs offered at a steady `rate` per second. The producer's
    submit time travels in the payload; the start time is the one Postgres recorded."""
    store, bus = runtime.store, runtime.bus
    assert store is not None and bus is not None
    name = f"load{round(rate)}"
    await pool(store, name, max_concurrent=-1, max_active=-1, labels=["sim"])
    n = max(1, round(rate * seconds))
    async with simulated_runners(runtime, name, 8, 32, ["sim"]):
        start = time.time()
        for i in range(n):
            delay = start + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"pool": name, "payload": {"command": ["true"], "submitted_at": time.time()}}
            await bus.js.publish_async(
                bus.subjects.submit.subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": f"{name}-{i}"}
            )
        await bus.js.publish_async_completed()
        await until(lambda: _all_done(store, name, n), 120, "the offered load to finish")
    rows = await fetch(
        store,
        """SELECT (extract(epoch FROM started_at) - (payload->>'submitted_at')::float8) * 1000 AS ms
           FROM jobs WHERE pool = $1""",
        name,
    )
    return percentiles([float(r["ms"]) for r in rows])


async def count(store: Store, pool_name: str, states: tuple[str, ...]) -> int:
    rows = await fetch(store, "SELECT count(*) FROM jobs WHERE pool = $1 AND state = ANY($2)", pool_name, list(states))
    return rows[0][0]


async def wake_latency(runtime: Runtime, n: int) -> dict[str, Any]:
    store = runtime.store
    assert store is not None
    await pool(store, "wake", max_concurrent=1, max_active=-1, labels=["sim"])
    async with simulated_runners(runtime, "wake", 1, 1, ["sim"]):
        await submit(runtime, "wake", n, "wake")
        await until(lambda: _all_done(store, "wake", n), 120, "the wake backlog to drain")
    rows = await fetch(
        store,
        """SELECT extract(epoch FROM assigned_at - lag(finished_at) OVER (ORDER BY assigned_at)) * 1000 AS ms
           FROM jobs WHERE pool = 'wake' ORDER BY assigned_at""",
    )
    # The first few slots free before the whole backlog is admitted; measure only with a backlog.
    return percentiles([float(r["ms"]) for r in rows[10:] if r["ms"] is not None])


async def _all_done(store: Store, pool_name: str, n: int) -> bool:
    return await count(store, pool_name, ("succeeded",)) >= n


async def throughput(runtime: Runtime, pool_name: str, n: int, max_concurrent: int) -> dict[str, float]:
    store = runtime.store
    assert store is not None
    await pool(store, pool_name, max_concurrent=max_concurrent, max_active=-1, labels=["sim"])
    async with simulated_runners(runtime, pool_name, 8, 32, ["sim"]):
        start = time.perf_counter()
        await submit(runtime, pool_name, n, pool_name)
        admitted = asyncio.create_task(until(lambda: _admitted(store, pool_name, n), 300, "admission"))
        await until(lambda: _all_done(store, pool_name, n), 600, "the jobs to finish")
        elapsed = time.perf_counter() - start
        admit_s = await admitted
    return {"end_to_end_jobs_per_s": round(n / elapsed), "admission_jobs_per_s": round(n / admit_s)}


async def _admitted(store: Store, pool_name: str, n: int) -> bool:
    rows = await fetch(store, "SELECT count(*) FROM jobs WHERE pool = $1", pool_name)
    return rows[0][0] >= n


async def head_of_line(runtime: Runtime, ahead: int, samples: int) -> float:
    """Median ms from admission to assignment of a matching job with `ahead` unrunnable jobs queued."""
    store, admission = runtime.store, runtime.services["admission"]
    assert store is not None
    name = f"hol{ahead}"
    await pool(store, name, max_active=-1, labels=["sim", "gpu"])
    if ahead:
        await bulk_queue(store, ahead, pool=name, labels=["gpu"], priority=100)

        async def relayed() -> bool:  # their `admitted` news: what is measured here is the claim
            return await store.outbox_depth() == 0

        await until(relayed, 300, "the backlog's news to be relayed")
    waits = []
    async with simulated_runners(runtime, name, 1, 1, ["sim"]):
        for _ in range(samples):
            spec = JobSpec(pool=name, labels=["sim"], payload={"command": ["true"]})
            result = await admission.admit(spec)  # type: ignore[attr-defined]
            job_id = result.job.id

            async def done(job_id: Any = job_id) -> bool:
                row = await store.job_get(job_id)
                return row is not None and row["state"] == "succeeded"

            await until(done, 30, "the matching job to run")
            row = await store.job_get(job_id)
            waits.append((row["assigned_at"] - row["created_at"]).total_seconds() * 1000)  # type: ignore[index]
    return round(statistics.median(waits), 3)


async def run_all(runtime: Runtime, quick: bool) -> dict[str, Any]:
    """Every dispatch scenario on one stack; progress on stderr."""
    n = 500 if quick else 20_000
    results: dict[str, Any] = {}

    def step(what: str) -> None:
        print(f"  ... {what}", file=sys.stderr, flush=True)

    step("wake latency")
    results["wake_ms"] = await wake_latency(runtime, 100 if quick else 1000)
    step("throughput, uncapped")
    uncapped = await throughput(runtime, "uncapped", n, -1)
    results.update(uncapped)
    step("throughput, capped at 32")
    capped = await throughput(runtime, "capped", n, 32)
    results["capped_jobs_per_s"] = capped["end_to_end_jobs_per_s"]
    results["capped_fraction_of_uncapped"] = round(
        capped["end_to_end_jobs_per_s"] / uncapped["end_to_end_jobs_per_s"], 3
    )
    peak = uncapped["end_to_end_jobs_per_s"]
    for share in (0.3, 0.8):
        step(f"latency at {share:.0%} of peak")
        results[f"submit_to_start_ms_at_{round(share * 100)}pct"] = await latency_at_load(
            runtime, share * peak, 2 if quick else 10
        )
    step("head-of-line")
    ahead = 1000 if quick else 100_000
    results["hol_0_ahead_ms"] = await head_of_line(runtime, 0, 20)
    results[f"hol_{ahead}_ahead_ms"] = await head_of_line(runtime, ahead, 20)
    results["hol_ratio"] = round(results[f"hol_{ahead}_ahead_ms"] / results["hol_0_ahead_ms"], 2)
    return results


if __name__ == "__main__":
    scenario_command("dispatch", run_all, __doc__ or "")
