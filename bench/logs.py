"""Job output figures (issue 17), through a real runner and the real job-output stream.

    python -m bench.logs [--quick]

1. log path: one job printing `MB` megabytes as fast as it can; MB/s from its start to its end
   (the runner stores every chunk before it reports the end), how much of it the cap kept, and
   how much the benchmark process's peak memory grew meanwhile (the runner's share of it: its
   buffers are bounded however much a job prints).
2. cost to dispatch: end-to-end no-op jobs/s (simulated runners, as in bench.dispatch) alone,
   then again while printers run back to back on another runner; the ratio of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bench import dispatch
from bench.harness import report, stack, until
from orchestrator.runtime import Runtime
from schemas.jobs import JobSpec
from services.runner import Runner
from tests.factories import pool

PRINTER = "import sys\nline = b'x' * 1023 + b'\\n'\nfor _ in range({n}): sys.stdout.buffer.write(line)\n"


@contextlib.asynccontextmanager
async def real_runner(runtime: Runtime, name: str) -> AsyncIterator[Runner]:
    """A runner of pool `name` that runs its jobs' commands (and ships their output)."""
    assert runtime.bus is not None and runtime.store is not None
    await pool(runtime.store, name, max_concurrent=-1, max_active=-1, labels=["printer"])
    runner = Runner(runtime.settings, runtime.bus, runner_id=f"{name}-runner", pool=name, labels=["printer"], slots=1)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def print_job(runtime: Runtime, pool_name: str, megabytes: int) -> dict[str, Any]:
    """Run one printer; its figures from the timestamps Postgres recorded."""
    admission, store = runtime.services["admission"], runtime.store
    assert store is not None
    spec = JobSpec(
        pool=pool_name,
        labels=["printer"],
        payload={"command": [sys.executable, "-c", PRINTER.format(n=megabytes * 1024)]},
    )
    job_id = (await admission.admit(spec)).job.id  # type: ignore[attr-defined]

    async def done() -> bool:
        row = await store.job_get(job_id)
        return row is not None and row["state"] == "succeeded"

    await until(done, 600, "the printer to finish")
    row = await store.job_get(job_id)
    assert row is not None
    seconds = (row["finished_at"] - row["started_at"]).total_seconds()
    return {"job_id": job_id, "seconds": seconds, "mb_per_s": round(megabytes * 1_048_576 / seconds / 1e6, 1)}


async def kept_bytes(runtime: Runtime, job_id: Any) -> int:
    """What GET /v1/jobs/{id}/logs answers for it (the head, the marker, the tail)."""
    async with aiohttp.ClientSession(base_url=runtime.http_url) as http, http.get(f"/v1/jobs/{job_id}/logs") as resp:
        return len(await resp.read())


async def run_all(runtime: Runtime, quick: bool) -> dict[str, Any]:
    megabytes = 8 if quick else 100
    n = 500 if quick else 20_000
    results: dict[str, Any] = {}
    async with real_runner(runtime, "printers"):
        print("  ... one job printing as fast as it can", file=sys.stderr, flush=True)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        one = await print_job(runtime, "printers", megabytes)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results["printed_mb"] = megabytes
        results["log_path_mb_per_s"] = one["mb_per_s"]
        results["log_kept_bytes"] = await kept_bytes(runtime, one["job_id"])
        results["peak_rss_growth_mb"] = round((rss_after - rss_before) / 1024, 1)

        print("  ... dispatch throughput alone", file=sys.stderr, flush=True)
        alone = (await dispatch.throughput(runtime, "quiet", n, -1))["end_to_end_jobs_per_s"]
        print("  ... dispatch throughput beside printers", file=sys.stderr, flush=True)
        printing = asyncio.Event()
        printed = 0

        async def printers() -> None:
            nonlocal printed
            while not printing.is_set():
                await print_job(runtime, "printers", megabytes)
                printed += megabytes

        noise = asyncio.create_task(printers())
        try:
            beside = (await dispatch.throughput(runtime, "noisy", n, -1))["end_to_end_jobs_per_s"]
        finally:
            printing.set()
            await noise
    results["jobs_per_s_alone"] = alone
    results["jobs_per_s_beside_printers"] = beside
    results["printed_meanwhile_mb"] = printed
    results["dispatch_with_printers_fraction"] = round(beside / alone, 3)
    return results


async def main(quick: bool) -> dict[str, Any]:
    async with stack() as runtime:
        results = await run_all(runtime, quick)
    report("logs", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks it runs, not how fast")
    asyncio.run(main(parser.parse_args().quick))
