"""One chaos run: its servers and processes, the load, the faults, and the results with every
violation the checker (check.py) and the observers (observe.py) found. The run is described in
the package's docstring (tests/system/chaos/__init__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import report
from bench.procs import ServiceProcess, start_all
from orchestrator.bus import Bus, Subjects
from orchestrator.bus.lease import read_lease
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.store import Store
from tests import history
from tests.support import FAST_FAILURE_ENV, eventually
from tests.system.chaos import check as chaos_check
from tests.system.chaos.observe import IN_FLIGHT_SQL, fetch, orphans, sample_in_flight

POOL = "chaos"
NAMESPACE = "chaos"
JOB = Path(__file__).resolve().parent / "job.py"
KILLS = ("admission", "capacity", "dispatch_leader", "runner", "nats", "postgres")
# Each pause outlasts the timeout that watches what is paused (the run's settings below): the
# runners' TTL (3 s), a runner's start request (5 s), the dispatch lease (2 s).
PAUSES = {
    "pause_postgres": (3.5, 4.5),
    "pause_capacity": (5.5, 6.5),
    "pause_runner": (3.5, 4.5),
    "pause_dispatch_leader": (2.5, 3.5),
}
KINDS = (*KILLS, *PAUSES)


@dataclass(frozen=True)
class Config:
    seconds: float = 45.0  # of load and kills, at least
    rounds: int = 0  # and at least this many rounds of kills (a round kills every kind once)
    seed: int = 11
    rate: float = 3.0  # jobs submitted per second
    cap: int = 4  # the pool's max_concurrent
    runners: int = 3
    slots: int = 2  # per runner: 6 in all, above the cap
    pause_s: tuple[float, float] = (1.5, 4.0)  # between kills
    outage_s: tuple[float, float] = (0.2, 1.5)  # a server stays down this long
    settle_s: float = 120.0  # for every job to end once the load stops
    keep: bool = False  # the run's directory (server data, logs), even when nothing was violated


@dataclass
class Figures:
    submitted: set[str] = field(default_factory=set)
    kills: Counter[str] = field(default_factory=Counter)
    crashed: list[str] = field(default_factory=list)  # processes that died without being killed
    sampled_peak: dict[str, int] = field(default_factory=dict)
    over_cap_samples: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, root: Path, config: Config) -> None:
        self.root, self.config = root, config
        # One stream for the load, one for the kills: each a function of the seed alone.
        self.load_rng, self.kill_rng = random.Random(config.seed), random.Random(config.seed + 1)
        self.nats = EmbeddedNats(root / "nats")
        self.pg = EmbeddedPostgres(root / "pg")
        self.exec_log = root / "executions.log"
        self.figures = Figures()
        self.procs: dict[str, ServiceProcess] = {}
        self.bus: Bus | None = None
        self.dsn = ""
        self._next_job = 0
        self.violated = False
        self.rounds_done = asyncio.Event()
        if config.rounds <= 0:
            self.rounds_done.set()

    # --- the system --------------------------------------------------------------------------

    async def start(self) -> None:
        nats_url = await self.nats.start()
        self.dsn = await self.pg.start()
        store = Store(self.dsn, max_size=1)
        await store.connect()
        try:
            await store.migrate()
        finally:
            await store.close()
        conn = await asyncpg.connect(self.dsn)
        try:
            await history.record(conn)
        finally:
            await conn.close()
        pools_file = self.root / "pools.toml"
        pools_file.write_text(f'[pools.{POOL}]\nlabels = ["chaos"]\nmax_concurrent = {self.config.cap}\n')
        env = {
            "ORCH_NATS_URL": nats_url,
            "ORCH_DATABASE_URL": self.dsn,
            "ORCH_NAMESPACE": NAMESPACE,
            "ORCH_POOLS_FILE": str(pools_file),
            "ORCH_HTTP_PORT": "0",
            **FAST_FAILURE_ENV,
        }
        logs = self.root / "logs"
        for name, service in [
            ("capacity", "capacity"),
            ("admission", "admission"),
            ("dispatch-0", "dispatch"),
            ("dispatch-1", "dispatch"),
        ]:
            self.procs[name] = ServiceProcess(name, [service], env, logs)
        for i in range(self.config.runners):
            rid = f"runner-{i}"
            args = ["runner", "--pool", POOL, "--labels", "chaos", "--slots", str(self.config.slots), "--id", rid]
            self.procs[rid] = ServiceProcess(rid, [], env, logs, args=args, ready_text=f"runner {rid} serving")
        services = [p for name, p in self.procs.items() if not name.startswith("runner")]
        await start_all(services)
        await start_all([p for p in self.procs.values() if p not in services])  # capacity answers them
        self.bus = Bus(nats_url, Subjects(NAMESPACE), name="chaos-producer")
        await self.bus.connect()

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        await asyncio.gather(*(proc.close() for proc in self.procs.values()))
        await self.nats.stop()
        await self.pg.stop()

    # --- load --------------------------------------------------------------------------------

    def _job(self, mode: str, *args: str) -> tuple[str, bytes]:
        key = f"job-{self._next_job}"
        self._next_job += 1
        command = [sys.executable, "-I", "-S", str(JOB), str(self.exec_log), POOL, mode, *args]
        spec = {"pool": POOL, "labels": ["chaos"], "key": key, "max_attempts": 10, "timeout_s": 60}
        return key, json.dumps({**spec, "payload": {"command": command}}).encode()

    def _duration(self) -> float:
        # Mostly short; some long enough to outlive a runner's restart and a requeue's backoff.
        rng = self.load_rng
        return rng.uniform(3.0, 6.0) if rng.random() < 0.1 else rng.uniform(0.2, 1.5)

    async def _submit(self, key: str, body: bytes) -> None:
        """Until JetStream acknowledges it: the same key again is deduplicated (NATS and Postgres)."""
        assert self.bus is not None

        async def accepted() -> bool:
            try:
                await self.bus.submit(body, key)  # type: ignore[union-attr]
            except Exception:  # NATS is down or reconnecting
                return False
            return True

        await eventually(accepted, timeout=60, what=f"JetStream to accept {key}")
        self.figures.submitted.add(key)

    async def load(self, stop: asyncio.Event) -> None:
        interval = 1 / self.config.rate
        next_at = time.monotonic()
        while not stop.is_set():
            await self._submit(*self._job("sleep", f"{self._duration():.2f}"))
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    # --- kills -------------------------------------------------------------------------------

    async def chaos(self, stop: asyncio.Event) -> None:
        kinds: list[str] = []
        while not stop.is_set():
            lo, hi = self.config.pause_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.kill_rng.uniform(lo, hi))
            if stop.is_set():
                return
            if not kinds:  # every kind once per round, in a seeded order
                kinds = list(KINDS)
                self.kill_rng.shuffle(kinds)
            kind = kinds.pop()
            await self._kill(kind)
            self.figures.kills[kind] += 1
            await self._restart_crashed()
            if min(self.figures.kills[k] for k in KINDS) >= self.config.rounds:
                self.rounds_done.set()

    async def _kill(self, kind: str) -> None:
        if kind in PAUSES:
            await self._pause(kind)
            return
        if kind in ("nats", "postgres"):
            await (self.nats.kill() if kind == "nats" else self.pg.crash())
            await asyncio.sleep(self.kill_rng.uniform(*self.config.outage_s))  # the outage itself
            await (self.nats.start() if kind == "nats" else self.pg.restart())
            return
        if kind == "dispatch_leader":
            name = await self._leader()
        elif kind == "runner":
            name = self.kill_rng.choice([n for n in self.procs if n.startswith("runner")])
        else:
            name = kind
        proc = self.procs[name]
        proc.signal(signal.SIGKILL)
        await proc.wait_exit()
        proc.start()
        await proc.ready(timeout=60)

    async def _pause(self, kind: str) -> None:
        target = kind.removeprefix("pause_")
        if target == "postgres":
            pids = self.pg.pids()
        else:
            name = await self._leader() if target == "dispatch_leader" else target
            if name == "runner":
                name = self.kill_rng.choice([n for n in self.procs if n.startswith("runner")])
            pids = [self.procs[name].pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.kill_rng.uniform(*PAUSES[kind]))  # the pause itself
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    async def _leader(self) -> str:
        async def holder() -> str | None:
            try:
                lease = await read_lease(self.bus, "all")  # type: ignore[arg-type]
            except Exception:  # NATS reconnecting
                return None
            return lease.holder if lease is not None and lease.holder in self.procs else None

        return await eventually(holder, timeout=30, what="a dispatch leader")

    async def _restart_crashed(self) -> None:
        """A process that died on its own (not killed by us) is a defect: note it, start it again."""
        for name, proc in self.procs.items():
            if proc.proc is not None and proc.proc.poll() is not None:
                self.figures.crashed.append(f"{name} exited with {proc.proc.returncode}: {proc.log()[-2000:]}")
                proc.start()
                await proc.ready(timeout=60)

    # --- observation -------------------------------------------------------------------------

    async def settle(self, keys: set[str]) -> list[str]:
        """Wait until every job of `keys` is admitted and final; what is not, after the deadline."""

        async def pending() -> list[str]:
            states = {r["key"]: r["state"] for r in await fetch(self.dsn, "SELECT key, state FROM jobs")}
            return [f"{k} is {states.get(k, 'not admitted')}" for k in keys if states.get(k) not in chaos_check.FINAL]

        async def none_pending() -> bool:
            return not await pending()

        with contextlib.suppress(AssertionError):
            await eventually(none_pending, timeout=self.config.settle_s, what="every job to end")
        return await pending()

    async def burst(self) -> list[str]:
        """No slot leaked: `cap` jobs that each wait for all the others must all run at once."""
        rows = await fetch(self.dsn, IN_FLIGHT_SQL)
        out = [f"{r['name']}: {r['in_flight']} in flight at rest" for r in rows if r["in_flight"]]
        barrier = self.root / "barrier"
        barrier.touch()
        keys = set()
        for _ in range(self.config.cap):
            key, body = self._job("barrier", str(self.config.cap), str(barrier))
            await self._submit(key, body)
            keys.add(key)
        out += [f"burst: {line}" for line in await self.settle(keys)]
        rows = await fetch(self.dsn, "SELECT key, state FROM jobs")
        out += [
            f"burst: {r['key']} {r['state']} (not all {self.config.cap} ran at once)"
            for r in rows
            if r["key"] in keys and r["state"] != "succeeded"
        ]
        return out

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        stop, sampling = asyncio.Event(), asyncio.Event()
        peaks, over_cap = self.figures.sampled_peak, self.figures.over_cap_samples
        sampler = asyncio.create_task(sample_in_flight(self.dsn, peaks, over_cap, sampling))
        tasks = [asyncio.create_task(self.load(stop)), asyncio.create_task(self.chaos(stop))]

        async def long_enough() -> None:
            await asyncio.sleep(self.config.seconds)  # the run's length: load shaping, not a wait for an event
            await self.rounds_done.wait()

        ender = asyncio.create_task(long_enough())
        await asyncio.wait([ender, *tasks], return_when=asyncio.FIRST_COMPLETED)  # or a task failed
        stop.set()
        ender.cancel()
        await asyncio.gather(*tasks)
        loaded = time.monotonic()
        stuck = await self.settle(set(self.figures.submitted))
        settled = time.monotonic()
        orphans_left = orphans(JOB, self.exec_log)
        leaked = await self.burst()
        sampling.set()
        await sampler
        await self._restart_crashed()

        jobs = await fetch(self.dsn, "SELECT id, key, pool, state, attempt, max_attempts, reason, exit_code FROM jobs")
        transitions = await fetch(self.dsn, history.READ_SQL)
        pools = await fetch(self.dsn, "SELECT name, max_concurrent FROM pools")
        executions = chaos_check.parse_log(self.exec_log.read_text().splitlines())
        violations = chaos_check.check(
            submitted=self.figures.submitted,
            jobs=jobs,
            transitions=transitions,
            executions=executions,
            caps={p["name"]: p["max_concurrent"] for p in pools},
        )
        violations["final_exactly_once"] += stuck
        violations["cap_never_exceeded"] += self.figures.over_cap_samples
        violations["no_slot_leaked"] = leaked
        violations["no_process_left"] = orphans_left
        violations["no_process_crashed"] = self.figures.crashed
        self.violated = any(violations.values())
        states = Counter(j["state"] for j in jobs)
        return {
            "seed": self.config.seed,
            "seconds_of_chaos": round(loaded - started, 1),
            "seconds_to_settle": round(settled - loaded, 1),
            "jobs_submitted": len(self.figures.submitted),
            "jobs_admitted": len(jobs),
            "jobs_finished": sum(n for s, n in states.items() if s in chaos_check.FINAL),
            "jobs_by_state": dict(states),
            "not_succeeded": dict(
                Counter(
                    f"{j['state']}: {j['reason']} (exit {j['exit_code']})" for j in jobs if j["state"] != "succeeded"
                )
            ),
            "executions": len(executions),
            "retried_jobs": sum(1 for j in jobs if j["attempt"] > 1),
            "kills": {kind: self.figures.kills[kind] for kind in KINDS},
            "in_flight_peak_sampled": self.figures.sampled_peak,
            "in_flight_peak_logged": {
                p["name"]: chaos_check.peak_overlap((r.first_ns, r.last_ns) for r in executions if r.pool == p["name"])
                for p in pools
            },
            "cap": self.config.cap,
            "violations": {name: len(found) for name, found in violations.items()},
            "violation_details": {name: found[:20] for name, found in violations.items() if found},
        }


@contextlib.asynccontextmanager
async def chaos_system(config: Config) -> AsyncIterator[Chaos]:
    """Servers and processes of one chaos run, in a directory of its own (outside any test's tmp
    root: concurrent pytest sessions chmod and prune theirs)."""
    root = Path(tempfile.mkdtemp(prefix="orch-chaos-"))
    chaos = Chaos(root, config)
    keep = True  # the logs of a failed run are its evidence
    try:
        await chaos.start()
        yield chaos
        keep = config.keep or chaos.violated
    finally:
        await chaos.close()
        if keep:
            print(f"chaos: logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


async def main(config: Config) -> dict[str, Any]:
    async with chaos_system(config) as chaos:
        results = await chaos.run()
    report("chaos", results)
    return results
