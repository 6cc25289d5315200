"""Job output figures (issue 17), through a real runner and the real job-output stream.

    python -m bench.logs [--quick]

1. log path: one job printing `MB` megabytes as fast as it can, on a runner process of its own;
   MB/s from its start to its end (the runner stores every chunk before it reports the end), how
   much of it the cap kept, and the runner process's peak memory.
2. cost to dispatch: end-to-end no-op jobs/s (simulated runners, as in bench.dispatch) alone,
   then while printers run back to back on the printers' runner, their output discarded (the
   job's own CPU, on a 2-core machine), then shipped: the last two compared are what the log
   path costs dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from app.runtime import Runtime
from bench import dispatch
from bench.factories import pool
from bench.harness import scenario_command, until
from schemas.jobs import JobSpec

# `n` KiB as fast as it can, to its stdout or (`discard`) to /dev/null: the same job, with and
# without the log path.
PRINTER = (
    "import os, sys\nout = open(os.devnull, 'wb') if {discard} else sys.stdout.buffer\n"
    "line = b'x' * 1023 + b'\\n'\nfor _ in range({n}): out.write(line)\n"
)


@contextlib.asynccontextmanager
async def real_runner(runtime: Runtime, name: str) -> AsyncIterator[int]:
    """`orchestrator runner` for pool `name`, in a process of its own as in a deployment: it
    runs its jobs' commands and ships their output."""
    assert runtime.store is not None
    await pool(runtime.store, name, max_concurrent=-1, max_active=-1, labels=["printer"])
    s = runtime.settings
    env = {**os.environ, "ORCH_NATS_URL": s.nats_url or "", "ORCH_NAMESPACE": s.namespace}
    args = ["runner", "--pool", name, "--labels", "printer", "--slots", "1", "--id", f"{name}-runner"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # "runner ... serving pool ..."
        assert b"serving" in line, line
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()


async def print_job(runtime: Runtime, pool_name: str, megabytes: int, discard: bool = False) -> dict[str, Any]:
    """Run one printer; its figures from the timestamps Postgres recorded."""
    admission, store = runtime.services["admission"], runtime.store
    assert store is not None
    spec = JobSpec(
        pool=pool_name,
        labels=["printer"],
        payload={"command": [sys.executable, "-c", PRINTER.format(n=megabytes * 1024, discard=discard)]},
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


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def kept_bytes(runtime: Runtime, job_id: Any) -> int:
    """What GET /v1/jobs/{id}/logs answers for it (the head, the marker, the tail)."""
    async with aiohttp.ClientSession(base_url=runtime.http_url) as http, http.get(f"/v1/jobs/{job_id}/logs") as resp:
        return len(await resp.read())


async def beside_printers(runtime: Runtime, n: int, megabytes: int, discard: bool) -> tuple[int, int]:
    """Dispatch throughput while printers run back to back on the printers' runner; and how
    many MB they printed meanwhile."""
    stop = asyncio.Event()
    printed = 0

    async def printers() -> None:
        nonlocal printed
        while not stop.is_set():
            await print_job(runtime, "printers", megabytes, discard)
            printed += megabytes

    noise = asyncio.create_task(printers())
    try:
        name = "beside_" + ("discarding" if discard else "shipping")
        return (await dispatch.throughput(runtime, name, n, -1))["end_to_end_jobs_per_s"], printed
    finally:
        stop.set()
        await noise


async def run_all(runtime: Runtime, quick: bool) -> dict[str, Any]:
    megabytes = 8 if quick else 100
    n = 500 if quick else 20_000
    results: dict[str, Any] = {}
    async with real_runner(runtime, "printers") as runner_pid:
        print("  ... one job printing as fast as it can", file=sys.stderr, flush=True)
        one = await print_job(runtime, "printers", megabytes)
        results["runner_peak_rss_mb"] = peak_rss_mb(runner_pid)
        results["printed_mb"] = megabytes
        results["log_path_mb_per_s"] = one["mb_per_s"]
        results["log_kept_bytes"] = await kept_bytes(runtime, one["job_id"])

        print("  ... dispatch throughput alone", file=sys.stderr, flush=True)
        alone = (await dispatch.throughput(runtime, "quiet", n, -1))["end_to_end_jobs_per_s"]
        for case, discard in (("discarding", True), ("shipping", False)):
            print(f"  ... dispatch throughput beside printers {case} their output", file=sys.stderr, flush=True)
            beside, printed = await beside_printers(runtime, n, megabytes, discard)
            results[f"jobs_per_s_beside_printers_{case}"] = beside
            results[f"printed_meanwhile_{case}_mb"] = printed
    results["jobs_per_s_alone"] = alone
    results["dispatch_with_printers_fraction"] = round(results["jobs_per_s_beside_printers_shipping"] / alone, 3)
    # What the log path itself costs: the same printers, their output shipped or discarded.
    results["log_path_cost_to_dispatch"] = round(
        1 - results["jobs_per_s_beside_printers_shipping"] / results["jobs_per_s_beside_printers_discarding"], 3
    )
    return results


if __name__ == "__main__":
    scenario_command("logs", run_all, __doc__ or "")
