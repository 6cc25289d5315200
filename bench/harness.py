"""What every benchmark needs: an embedded NATS + Postgres in a temp dir (or given URLs), the
orchestrator's services, simulated runners whose jobs are no-ops, and percentile arithmetic."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from app.main_loop import run
from app.runtime import Runtime
from bench import cpu
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.settings import Settings
from schemas.events import JobAssigned, Reply
from schemas.jobs import JobState
from services.runner import Runner

# Postgres connections of the benchmark's process (its one Store, all services in it); the
# reference points (bench/baselines.py) get the same number.
DB_POOL_SIZE = 20

# The processes of each running stack by kind, for CPU per job (bench/cpu.py): the benchmark's
# own (services and simulated runners) and, when embedded, nats-server and every Postgres process.
_processes: weakref.WeakKeyDictionary[Runtime, dict[str, cpu.Sampler]] = weakref.WeakKeyDictionary()


def processes(runtime: Runtime) -> tuple[dict[str, cpu.Sampler], bool]:
    """The stack's processes by kind, and whether that is all of them (not with servers given
    by URL: they may be anywhere)."""
    kinds = _processes.get(runtime, {"python": cpu.process(os.getpid())})
    return kinds, set(kinds) == {"python", "nats", "postgres"}


async def noop(job: JobAssigned) -> tuple[JobState, int | None, str | None]:
    return JobState.succeeded, 0, None


@contextlib.asynccontextmanager
async def stack(services: tuple[str, ...] = ("capacity", "admission", "dispatch", "api")) -> AsyncIterator[Runtime]:
    """The services on their own servers: ORCH_NATS_URL / ORCH_DATABASE_URL if set, else embedded."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        servers: list[Any] = []
        nats_url, db_url = os.environ.get("ORCH_NATS_URL"), os.environ.get("ORCH_DATABASE_URL")
        if not (nats_url and db_url):
            servers = [EmbeddedNats(Path(tmp) / "nats"), EmbeddedPostgres(Path(tmp) / "pg")]
            nats_url, db_url = await servers[0].start(), await servers[1].start()
        settings = Settings(
            nats_url=nats_url,
            database_url=db_url,
            data_dir=Path(tmp) / "data",
            http_port=0,
            db_pool_size=DB_POOL_SIZE,
        )
        runtime = Runtime(settings, services, migrate=True)
        _processes[runtime] = {"python": cpu.process(os.getpid())}
        if servers:
            _processes[runtime]["nats"] = cpu.process(servers[0].pid)
            _processes[runtime]["postgres"] = cpu.postgres(servers[1].pids)
        try:
            await runtime.start()
            yield runtime
        finally:
            await runtime.stop()
            for server in reversed(servers):
                await server.stop()


class SimulatedRunner(Runner):
    """A runner whose jobs are no-ops, noting when it acked each assignment (wall clock, the
    clock Postgres's timestamps are on): where a hand-off ends, for wake_ms."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acked_at: dict[UUID, float] = {}

    async def _on_assign(self, event: JobAssigned) -> Reply:
        reply = await super()._on_assign(event)
        if reply.ok:
            self.acked_at[event.job_id] = time.time()
        return reply


@contextlib.asynccontextmanager
async def simulated_runners(
    runtime: Runtime, pool: str, count: int, slots: int, labels: list[str]
) -> AsyncIterator[list[SimulatedRunner]]:
    assert runtime.bus is not None
    runners = [
        SimulatedRunner(
            runtime.settings.timings,
            runtime.settings.log_limits,
            runtime.bus,
            runner_id=f"{pool}-sim-{i}",
            pool=pool,
            labels=labels,
            slots=slots,
            execute=noop,
        )
        for i in range(count)
    ]
    try:
        for r in runners:
            await r.start()
        yield runners
    finally:
        for r in runners:
            await r.stop()


async def announced(runtime: Runtime, verb: str, pool: str) -> int:
    """How many of `pool`'s `verb` events (`admitted`, `finished`, ...) the job-events stream
    holds, deduplicated by event id: what a producer following its jobs has been told, counted
    by the server. The benchmark waits on this rather than on a count(*) in Postgres, which cost
    Postgres more CPU than the 20,000 jobs it measured (and a subscription of its own would cost
    the services' process as much)."""
    bus = runtime.bus
    assert bus is not None
    subject = getattr(bus.subjects, f"job_{verb}").at(pool).subject
    info = await bus.js.stream_info(bus.subjects.job_events_stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def until_announced(runtime: Runtime, verb: str, pool: str, n: int, timeout: float) -> float:
    """Wait until `n` of `pool`'s `verb` events were announced; when that was (perf_counter, to
    within 20 ms: each look costs the server and us a JetStream request)."""

    async def done() -> bool:
        return await announced(runtime, verb, pool) >= n

    await until(done, timeout, f"{n} jobs {verb} in {pool}", every=0.02)
    return time.perf_counter()


async def until(probe: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.01) -> float:
    """Poll `probe` every `every` s until true; return the seconds it took."""
    start = time.perf_counter()
    while not await probe():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(every)
    return time.perf_counter() - start


def percentiles(values_ms: list[float]) -> dict[str, float]:
    values = sorted(values_ms)
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {
        "n": len(values),
        "p50": round(q[49], 3),
        "p95": round(q[94], 3),
        "p99": round(q[98], 3),
        "max": round(values[-1], 3),
    }


def command(name: str, measure: Callable[[bool], Awaitable[dict[str, Any]]], doc: str) -> None:
    """`python -m bench.<name> [--quick]`: `measure(quick)`, reported as `name`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks it runs, not how fast")
    quick = parser.parse_args().quick

    async def main() -> None:
        report(name, await measure(quick))

    run(main())


def scenario_command(name: str, run_all: Callable[[Runtime, bool], Awaitable[dict[str, Any]]], doc: str) -> None:
    """`python -m bench.<name> [--quick]`: `run_all` on its own stack, reported as `name`."""

    async def on_own_stack(quick: bool) -> dict[str, Any]:
        async with stack() as runtime:
            return await run_all(runtime, quick)

    command(name, on_own_stack, doc)


def report(name: str, results: dict[str, Any], out_dir: Path = Path("bench-results")) -> None:
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"  {key:<{width}}  {value}")
    print(f"(written to {path})")
