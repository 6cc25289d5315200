"""Throughput over 1, 2 and 4 dispatch shards (issue 22).

    python -m bench.shards [--quick]

The throughput run with every service its own process (bench/processes.py), once per shard
count, each on a stack of its own: as many dispatch instances as shards
(`ORCH_DISPATCH_SHARDS`), timed once each leads one shard. The same load every time: 4 pools, pool i
pinned to shard i % shards, the jobs (20,000; 500 in --quick) and the 8 simulated runners of 32
no-op slots spread evenly over them; so the 1-shard run, one dispatcher for the 4 pools, is the
baseline of the others. Reports, per shard count, end-to-end and admission jobs/s, the CPU per
job by process (each dispatch instance its own), the shard holders, and jobs/s as a fraction of
the 1-shard run. On a machine of few cores more dispatch processes share the same cores: the
figure says what sharding costs there, not what it buys on more machines.
"""

from __future__ import annotations

from typing import Any

from bench import processes
from bench.harness import command

SHARD_COUNTS = (1, 2, 4)
POOLS = 4


async def run_all(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for shards in SHARD_COUNTS:
        results[str(shards)] = await processes.deployed(quick, shards=shards, pools=POOLS)
    one = results["1"]["end_to_end_jobs_per_s"]
    for run in results.values():
        run["fraction_of_one_shard"] = round(run["end_to_end_jobs_per_s"] / one, 3)
    return results


if __name__ == "__main__":
    command("shards", run_all, __doc__ or "")
