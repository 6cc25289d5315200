"""The whole benchmark in one run: `python -m bench [--quick]`.

Starts its own embedded NATS and Postgres (or uses ORCH_NATS_URL / ORCH_DATABASE_URL), runs the
dispatch scenarios (wake latency, throughput with its CPU per job, capped pool, latency idle and
at 30 % and 80 % of peak, head-of-line in one shape and in many, due → start of delayed jobs),
what one hop between processes costs on this machine (the floor under those latencies: bench/hops.py),
job output (the log path's MB/s and its cost to dispatch), the throughput run again with every
service its own process, as deployed (`processes.*`, on a stack of its own: bench/processes.py),
the same over 1, 2 and 4 dispatch shards (`shards.*`: bench/shards.py),
the leader failover, and the reference points on one Postgres of their own with as many jobs as
our end-to-end run (bench/baselines.py: a bare asyncpg claim loop, a batched one as the machine's limit,
Procrastinate, and graphile-worker, which needs node and npm and is not run in --quick), then
prints one table with our figures as ratios to them and the goals, and writes
bench-results/all.json. `--quick` uses small sizes: it shows the benchmark works, not how fast
anything is (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import operator
import sys
from typing import Any

from app.main_loop import run
from bench import baselines, dispatch, failover, hops, logs, processes, shards
from bench.harness import report, stack

GOALS = {
    "end_to_end_jobs_per_s": ">= 5000",
    "cpu_ms_per_job": "<= 0.3",
    "submit_to_start_ms_idle.p50": "<= 5",
    "submit_to_start_ms_idle.p99": "<= 10",
    "submit_to_start_ms_at_30pct.p99": "<= 25",
    "wake_ms.p99": "<= 5",
    "capped_fraction_of_uncapped": ">= 0.9",
    "hol_ratio": "<= 2",
    "hol_ratio_distinct_shapes": "<= 2",
    "due_to_start_ms_delayed.p99": "<= 50",
    "job_output.dispatch_with_printers_fraction": ">= 0.9",
    "vs_bare_asyncpg": ">= 1.0",
    "vs_procrastinate": ">= 5",
}
# Beside the goals, no goal of their own: where we stand against the others.
REFERENCES = [
    "hol_ratio_settled",
    "hol_ratio_distinct_shapes_settled",
    "fraction_of_machine_limit",
    "vs_graphile_worker",
    "graphile_worker_cpu_ms_per_job",
    "procrastinate_cpu_ms_per_job",
]
# Every throughput run's jobs/s: the figures above are the median run's.
RUNS = ["end_to_end_jobs_per_s_runs", "capped_jobs_per_s_runs"]
# Where idle submit → start latency goes, stage by stage (p50 ms each: bench/dispatch.py).
STAGES = [f"submit_to_start_ms_idle.stages_p50.{stage}" for stage in dispatch.STAGES]
# CPU per job at the latency runs' steady rates: little is batched at a light load.
LIGHT_LOAD = [f"submit_to_start_ms_{load}.cpu_ms_per_job" for load in ("idle", "at_30pct", "at_80pct")]
# What one hop costs here, at the idle pace and back to back (p50 ms): the latencies' floor.
HOP_KEYS = [
    f"hops.{kind}.{pace}.p50"
    for kind in ("nats_request_ms", "postgres_round_trip_ms", "postgres_commit_ms")
    for pace in ("idle", "busy")
]
# The throughput run with every service its own process, beside the one-process figures.
PROCESSES = ["processes.end_to_end_jobs_per_s", "processes.fraction_of_one_process", "processes.cpu_ms_per_job"]
# The same, over 1, 2 and 4 dispatch shards, one dispatch instance each (bench/shards.py).
SHARDS = [f"shards.{n}.{key}" for n in shards.SHARD_COUNTS for key in ("end_to_end_jobs_per_s", "cpu_ms_per_job")]
_COMPARE = {">=": operator.ge, "<=": operator.le}


def _ratio(ours: float, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def _lookup(results: dict[str, Any], key: str) -> Any:
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _verdict(value: Any, goal: str) -> str:
    if not isinstance(value, int | float):
        return "not measured"
    sign, bound = goal.split()
    return "met" if _COMPARE[sign](value, float(bound)) else "MISSED"


async def main(quick: bool) -> dict[str, Any]:
    print("dispatch scenarios", file=sys.stderr, flush=True)
    async with stack() as runtime:
        results = await dispatch.run_all(runtime, quick)
        print("one hop between processes", file=sys.stderr, flush=True)
        results["hops"] = await hops.measure(runtime, quick)
        print("job output", file=sys.stderr, flush=True)
        results["job_output"] = await logs.run_all(runtime, quick)
    print("throughput with every service its own process", file=sys.stderr, flush=True)
    results["processes"] = await processes.run_all(quick)
    results["processes"]["fraction_of_one_process"] = _ratio(
        results["processes"]["end_to_end_jobs_per_s"], results["end_to_end_jobs_per_s"]
    )
    print("throughput over 1, 2 and 4 dispatch shards", file=sys.stderr, flush=True)
    results["shards"] = await shards.run_all(quick)
    print("reference points (asyncpg loops, Procrastinate, graphile-worker)", file=sys.stderr, flush=True)
    results.update(await baselines.run_all(dispatch.end_to_end_jobs(quick), with_graphile=not quick))
    ours = results["end_to_end_jobs_per_s"]
    results["vs_bare_asyncpg"] = round(ours / results["bare_asyncpg_jobs_per_s"], 2)
    results["vs_procrastinate"] = round(ours / results["procrastinate_jobs_per_s"], 2)
    results["vs_graphile_worker"] = _ratio(ours, results["graphile_worker_jobs_per_s"])
    results["fraction_of_machine_limit"] = _ratio(ours, results["batched_skip_locked_jobs_per_s"])
    print("leader failover", file=sys.stderr, flush=True)
    results["failover"] = failover.summarize(await failover.measure(1 if quick else 5))
    report("all", results)
    print("\ngoals (issues 8, 17, 19 and 23):")
    for key, goal in GOALS.items():
        value = _lookup(results, key)
        print(f"  {key:<46} {value!s:>10}   goal {goal:<8} {_verdict(value, goal)}")
    sections = (
        ("beside the goals, and against the reference points", REFERENCES),
        ("every throughput run (the figures are the median run's)", RUNS),
        ("idle submit → start, stage by stage (p50)", STAGES),
        ("one hop on this machine, at the idle pace and back to back (p50 ms)", HOP_KEYS),
        ("CPU per job at a steady rate (ms)", LIGHT_LOAD),
        ("every service its own process", PROCESSES),
        ("over dispatch shards, a dispatch instance each", SHARDS),
    )
    for title, keys in sections:
        print(f"{title}:")
        for key in keys:
            print(f"  {key:<46} {_lookup(results, key)!s:>10}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks it runs, not how fast")
    run(main(parser.parse_args().quick))
