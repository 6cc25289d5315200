"""Throughput with every service its own process, as deployed (issue 19).

    python -m bench.processes [--quick]

The one-process throughput run (bench/dispatch.py) has admission, dispatch, capacity, the api
and the outbox relay share the benchmark's process. Here capacity, admission, dispatch and api
are each an `orchestrator serve <service>` process of the real CLI (each with its own outbox
relay, Postgres pool and NATS connection, at the deployed defaults), on an embedded NATS and
Postgres (or ORCH_NATS_URL / ORCH_DATABASE_URL). This process is the producer (pipelined
publishes to the JetStream intake) and the runner fleet: the same 8 simulated runners of 32
no-op slots, in this process, the same uncapped pool and as many jobs (20,000; 500 in --quick),
so the two runs compare. It reports end-to-end and admission jobs/s, both from the first publish,
and the CPU per job by process: each service's, `bench` (this one: producer and runners), nats,
postgres; `cpu_ms_per_job` is their sum. Service start-up is not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from app.runtime import Runtime
from bench import cpu, dispatch
from bench.harness import command, stack, until
from bench.procs import ServiceProcess, running, service_env
from orchestrator.shards import shard_names

SERVICES = ("capacity", "admission", "dispatch", "api")
POOL = "processes"


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM cancels the current task instead of killing this process outright, so the
    `finally`s run and the service processes and servers are stopped, not orphaned."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_all(quick: bool) -> dict[str, Any]:
    """The throughput run with every service a process of its own, on a stack of its own."""
    return await deployed(quick)


async def deployed(quick: bool, *, shards: int = 1, pools: int = 1) -> dict[str, Any]:
    """The throughput run with every service a process of its own, on a stack of its own. With
    `shards` > 1, as many dispatch instances as shards (`dispatch-0` ..), timed once each leads
    one; the jobs and runners spread over `pools` pools, pool i on shard i % `shards`."""
    with sigterm_unwinds():
        # No service in this process's runtime: only the servers, its store and its bus.
        async with stack(services=()) as runtime:
            env = {
                **service_env(runtime.settings),
                "ORCH_HTTP_PORT": "0",  # any free port for the api
                "ORCH_DISPATCH_SHARDS": str(shards),
            }
            log_dir = runtime.settings.data_dir / "logs"
            dispatchers = ["dispatch"] if shards == 1 else [f"dispatch-{i}" for i in range(shards)]
            procs = [ServiceProcess(name, [name], env, log_dir) for name in SERVICES if name != "dispatch"]
            procs += [ServiceProcess(name, ["dispatch"], env, log_dir) for name in dispatchers]
            async with running(procs):
                holders = await led_one_each(runtime, shards)
                samplers = {proc.instance_id: cpu.process(proc.pid) for proc in procs}
                n = dispatch.end_to_end_jobs(quick)
                results = await dispatch.throughput(runtime, POOL, n, -1, samplers, pools=pools, shards=shards)
    # In this run the harness's "python" process is the benchmark alone.
    split = results["cpu_ms_per_job_by_process"]
    if split is not None:
        split["bench"] = split.pop("python")
    return {**results, "shard_holders": holders}


async def led_one_each(runtime: Runtime, shards: int, timeout: float = 60.0) -> dict[str, str]:
    """Wait until each of the `shards` dispatch instances leads one shard (the shares settle
    after the first to start took them all); shard -> its holder, from the fencing epochs."""
    store = runtime.store
    assert store is not None
    names = shard_names(shards)
    holders: dict[str, str] = {}

    async def settled() -> bool:
        nonlocal holders
        holders = {t.shard: t.holder for t in await store.dispatch_epoch_list(names) if t.holder is not None}
        return len(holders) == shards and len(set(holders.values())) == shards

    await until(settled, timeout, f"{shards} dispatch instances to lead a shard each")
    return holders


if __name__ == "__main__":
    command("processes", run_all, __doc__ or "")
