"""The whole benchmark in one run: `python -m bench [--quick]`.

Starts its own embedded NATS and Postgres (or uses ORCH_NATS_URL / ORCH_DATABASE_URL), runs the
dispatch scenarios (wake latency, throughput, capped pool, latency at 30 % and 80 % of peak,
head-of-line), job output (the log path's MB/s and its cost to dispatch), the leader failover,
and the two reference points on the same Postgres (a bare asyncpg claim loop and
Procrastinate), then prints one table with our figures as ratios to both and writes
bench-results/all.json. `--quick` uses small sizes: it shows the benchmark works,
not how fast anything is (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bench import baselines, dispatch, failover, logs
from bench.harness import report, stack

GOALS = {
    "end_to_end_jobs_per_s": ">= 3000",
    "wake_ms.p99": "<= 5",
    "submit_to_start_ms_at_30pct.p99": "<= 25",
    "capped_fraction_of_uncapped": ">= 0.9",
    "hol_ratio": "<= 2",
    "job_output.dispatch_with_printers_fraction": ">= 0.9",
    "vs_bare_asyncpg": ">= 1.0",
    "vs_procrastinate": ">= 5",
}


async def main(quick: bool) -> dict[str, Any]:
    print("dispatch scenarios", file=sys.stderr, flush=True)
    async with stack() as runtime:
        results = await dispatch.run_all(runtime, quick)
        print("job output", file=sys.stderr, flush=True)
        results["job_output"] = await logs.run_all(runtime, quick)
    print("reference points (bare asyncpg loop, Procrastinate)", file=sys.stderr, flush=True)
    jobs = 500 if quick else 5000
    async with baselines.databases(["bare", "peer"]) as dsns:
        bare = await baselines.bare_loop(dsns["bare"], jobs, 16)
        peer = await baselines.procrastinate_run(dsns["peer"], jobs, 16)
    results["bare_asyncpg_jobs_per_s"] = round(bare)
    results["procrastinate_jobs_per_s"] = round(peer)
    results["vs_bare_asyncpg"] = round(results["end_to_end_jobs_per_s"] / bare, 2)
    results["vs_procrastinate"] = round(results["end_to_end_jobs_per_s"] / peer, 2)
    print("leader failover", file=sys.stderr, flush=True)
    results["failover"] = failover.summarize(await failover.measure(1 if quick else 5))
    report("all", results)
    print("\ngoals (issues 8 and 17):")
    for key, goal in GOALS.items():
        value: Any = results
        for part in key.split("."):
            value = value[part]
        print(f"  {key:<34} {value!s:>10}   goal {goal}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks it runs, not how fast")
    asyncio.run(main(parser.parse_args().quick))
