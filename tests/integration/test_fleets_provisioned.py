"""Provisioned workers under a fleet cap (seed 001), on real NATS and Postgres: the bundled `local`
provisioner never has more than `max_workers` one-shot worker processes alive and every job
finishes; a provisioner that cannot count spawns nothing, the jobs wait and run once counting
recovers; pull runners and provisioned workers of a pool share its one `max_concurrent`; a
negative cap or an unknown provisioner is refused at start-up with a clear error; a new leader's
provisioner counts the workers its predecessor started. A provisioner alone, its workers never
starting (start timeout, demand): test_fleets_provisioner.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.local_provisioner import WORKER_NAME, LocalProvisioner
from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError, StoreError
from orchestrator.provisioning import ProvisionerContext, WorkerRequest
from orchestrator.settings import Settings
from orchestrator.store import Store
from schemas.events import JobAssigned
from schemas.jobs import JobSpec, JobState
from services.provisioner import Provisioning
from services.runner import Execute, Outcome, Runner
from tests import factories
from tests.support import Listener, agent, eventually, in_flight_peak, record_history


async def count(store: Store, sql: str, *args: object) -> int:
    async with store.connection() as conn:
        return await conn.fetchval(sql, *args)


async def all_succeeded(store: Store, pool: str, n: int) -> bool:
    return await count(store, "SELECT count(*) FROM jobs WHERE pool = $1 AND state = 'succeeded'", pool) == n


def worker_processes() -> int:
    """Live local workers among this process's descendants (they are the fork server's children),
    from the kernel's process table, not from the provisioner: processes named `orch-worker`. A
    worker starting its job's command forks a child of the same name for a moment: not a worker."""
    alive, parents = 0, [("self", "")]
    while parents:
        parent, parent_name = parents.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").glob("*/children"))
        except OSError:  # the process is gone by the time it is read
            continue
        for children in tasks:
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    with contextlib.suppress(OSError):
                        name, state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
                        name = name.split("(", 1)[1]
                        parents.append((pid, name))
                        alive += name == WORKER_NAME != parent_name and state.split()[0] != "Z"
    return alive


class CountedLocal(LocalProvisioner):
    """The bundled `local` provisioner, noting the most workers its own count ever saw: read right
    after each spawn, the only moment the count grows."""

    def __init__(self, ctx: ProvisionerContext) -> None:
        super().__init__(ctx)
        self.peak = 0

    async def spawn(self, request: WorkerRequest) -> str:
        handle = await super().spawn(request)
        self.peak = max(self.peak, await self.count_live())
        return handle


class InProcessFleet:
    """A test provisioner: one-shot runners in this process (no process start per job), a count
    that can be broken, and the runners' execute hook."""

    def __init__(self, ctx: ProvisionerContext, settings: Settings, bus: Bus, execute: Execute | None) -> None:
        self.ctx, self.settings, self.bus, self.execute = ctx, settings, bus, execute
        self.broken = False
        self.spawned: list[str] = []
        self.live: dict[str, Runner] = {}
        self._exits: set[asyncio.Task[None]] = set()

    async def spawn(self, request: WorkerRequest) -> str:
        worker = agent(
            self.settings,
            self.bus,
            runner_id=request.runner_id,
            pool=request.pool,
            labels=request.labels,
            slots=1,
            once=True,
            execute=self.execute,
        )
        self.live[request.runner_id] = worker
        await worker.start()
        self.spawned.append(request.runner_id)
        task = asyncio.create_task(self._exit_when_done(worker))
        self._exits.add(task)
        task.add_done_callback(self._exits.discard)
        return request.runner_id

    async def _exit_when_done(self, worker: Runner) -> None:
        await worker.finished.wait()
        await self.stop(worker.runner_id)
        self.ctx.worker_exited(worker.runner_id)

    async def count_live(self) -> int:
        if self.broken:
            raise RuntimeError("ListTasks failed: throttled")
        return len(self.live)

    async def stop(self, worker: str) -> None:
        runner = self.live.pop(worker, None)
        if runner is not None:
            await runner.stop()

    async def close(self) -> None:
        for task in list(self._exits):
            task.cancel()
        await asyncio.gather(*(self.stop(worker) for worker in list(self.live)))


class Fleets:
    """Capacity, admission, dispatch and the provisioner in this process, with the test
    provisioners `counted-local` and `in-process` (each instance kept in `made`)."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings, self.bus = settings, bus
        self.made: list[Any] = []
        self.execute: Execute | None = None  # for in-process workers made from now on
        self.broken = False  # likewise: their count fails until set otherwise
        self.runtime = Runtime(
            settings,
            ["capacity", "admission", "dispatch", "provisioner"],
            migrate=True,
            provisioners={"counted-local": self._local, "in-process": self._in_process},
        )

    def _local(self, ctx: ProvisionerContext) -> CountedLocal:
        self.made.append(CountedLocal(ctx))
        return self.made[-1]

    def _in_process(self, ctx: ProvisionerContext) -> InProcessFleet:
        fleet = InProcessFleet(ctx, self.settings, self.bus, self.execute)
        fleet.broken = self.broken
        self.made.append(fleet)
        return fleet

    def service(self, name: str) -> Any:
        return self.runtime.services[name]

    async def admit(self, pool: str, n: int) -> list[Any]:
        return [
            (await self.service("admission").admit(JobSpec(pool=pool, payload={"command": ["true"]}))).job.id
            for _ in range(n)
        ]


@pytest.fixture
async def fleets(settings: Settings, bus: Bus) -> AsyncIterator[Fleets]:
    kit = Fleets(settings, bus)
    await kit.runtime.start()
    yield kit
    await kit.runtime.stop()


async def test_local_fleet_never_exceeds_its_cap_and_every_job_finishes(fleets: Fleets, store: Store) -> None:
    pool = "fleet"
    await factories.pool(store, pool, labels=["linux"], provisioner="counted-local", max_workers=2)
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, worker_processes())  # a few small reads of /proc: no thread needed
            await asyncio.sleep(0.005)  # a sampling rate, not a wait: leave the workers some CPU

    sampler = asyncio.create_task(sample())
    try:
        await fleets.admit(pool, 10)
        await eventually(lambda: all_succeeded(store, pool, 10), timeout=60, what="10 jobs on provisioned workers")
    finally:
        done.set()
        await sampler
    [fleet] = fleets.made
    assert fleet.peak == 2  # the provisioner's own count: the cap was reached, never passed
    assert 1 <= peak <= 2, peak  # and the process table agrees
    # One worker per job, each a runner that took exactly one.
    assert await count(store, "SELECT count(DISTINCT runner_id) FROM jobs WHERE pool = $1", pool) == 10
    assert fleets.runtime.metrics.count("orchestrator_fleet_reconciles", pool=pool, outcome="spawned") == 10


async def test_a_failed_count_spawns_nothing_and_jobs_run_once_counting_recovers(
    fleets: Fleets, store: Store, bus: Bus
) -> None:
    fleets.broken = True
    await factories.pool(store, "p", labels=["linux"], provisioner="in-process", max_workers=3)
    async with Listener(bus, bus.subjects.capacity_unknown.at("p")) as unknown:
        ids = await fleets.admit("p", 4)
        assert "ListTasks failed" in (await unknown.wait()).reason
    [fleet] = fleets.made
    assert fleet.spawned == []  # never blind past the cap
    assert await count(store, "SELECT count(*) FROM jobs WHERE pool = 'p' AND state = 'queued'") == 4
    assert fleets.runtime.metrics.count("orchestrator_fleet_reconciles", pool="p", outcome="capacity_unknown") >= 1

    fleet.broken = False  # the next sweep counts, and spawns
    await eventually(lambda: all_succeeded(store, "p", 4), timeout=20, what="the jobs to run once counting recovers")
    assert len(fleet.spawned) == 4
    assert {(await store.job_get(i))["runner_id"] for i in ids} == set(fleet.spawned)  # type: ignore[index]


async def test_pull_runners_and_provisioned_workers_share_one_max_concurrent(
    fleets: Fleets, store: Store, bus: Bus, settings: Settings
) -> None:
    """No fleet cap (`max_workers` 0) and a pull runner with 2 slots under `max_concurrent` 3:
    while every job is held, one worker is spawned for the one job the cap still allows, and
    neither dispatch nor the provisioner goes past it."""
    await record_history(store)
    gate = asyncio.Event()

    async def held(event: JobAssigned) -> Outcome:
        await gate.wait()
        return JobState.succeeded, 0, None

    fleets.execute = held
    await factories.pool(store, "p", labels=["linux"], max_concurrent=3, provisioner="in-process")
    pull = agent(settings, bus, runner_id="pull", pool="p", labels=["linux"], slots=2, execute=held)
    await pull.start()
    try:
        await fleets.admit("p", 6)

        async def three_running() -> bool:
            return await count(store, "SELECT count(*) FROM jobs WHERE pool = 'p' AND state = 'running'") == 3

        await eventually(three_running, timeout=15, what="the pull runner's 2 jobs and a worker's 1 to run")
        [fleet] = fleets.made
        assert len(fleet.spawned) == 1
        assert await fleets.service("dispatch").step("p") == "at_capacity"
        await fleets.service("provisioner").reconcile("p")  # no room under max_concurrent: no worker
        assert len(fleet.spawned) == 1
        assert await count(store, "SELECT count(*) FROM jobs WHERE pool = 'p' AND state = 'queued'") == 3

        gate.set()
        await eventually(lambda: all_succeeded(store, "p", 6), timeout=15, what="all 6 jobs to finish")
    finally:
        await pull.stop()
    runners = {r["runner_id"] for r in (await store.job_list(pool="p", state=None, key=None, limit=10))}
    assert "pull" in runners and fleet.spawned[0] in runners
    assert await in_flight_peak(store, "p") == 3  # from every transition: reached, never passed


async def test_a_negative_cap_is_refused_at_start_up_naming_the_field(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    settings.pools_file = tmp_path / "pools.toml"
    settings.pools_file.write_text('[pools.fleet]\nprovisioner = "local"\nmax_workers = -1\n')
    with pytest.raises(ConfigurationError, match=r"pools\.fleet\.max_workers: must be 0 \(no cap\) or a positive.*-1"):
        await Runtime(settings, ["provisioner"]).start()
    assert await store.pool_get("fleet") is None
    with pytest.raises(StoreError, match="pools_max_workers_check"):  # nor can anything else store one
        await factories.pool(store, "fleet", max_workers=-1)


async def test_an_unknown_provisioner_is_refused_at_start_up(settings: Settings, store: Store) -> None:
    await factories.pool(store, "p", provisioner="nowhere", max_workers=2)
    runtime = Runtime(settings, ["provisioner"])
    with pytest.raises(ConfigurationError, match="pool 'p': provisioner 'nowhere' is not known"):
        await runtime.start()


async def test_a_new_leaders_provisioner_counts_the_workers_its_predecessor_started(
    fleets: Fleets, store: Store, settings: Settings, bus: Bus
) -> None:
    """A handover: the workers the old leader's provisioner started are not the new one's to
    count, yet they hold the fleet cap. The new leader spawns nothing past `max_workers`."""
    gate = asyncio.Event()

    async def held(event: JobAssigned) -> Outcome:
        await gate.wait()
        return JobState.succeeded, 0, None

    fleets.execute = held
    await factories.pool(store, "p", labels=["linux"], provisioner="in-process", max_workers=2)
    await fleets.admit("p", 4)

    async def two_running() -> bool:
        return await count(store, "SELECT count(*) FROM jobs WHERE pool = 'p' AND state = 'running'") == 2

    await eventually(two_running, timeout=15, what="two workers to run a job each")
    successor = Provisioning(
        settings.provisioner,
        settings.timings,
        store,
        bus,
        {"in-process": fleets._in_process},
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
    )
    try:
        await successor.reconcile("p")  # as a new leader's first reconcile, in another process
        old, new = fleets.made
        assert (len(old.spawned), new.spawned) == (2, [])
    finally:
        gate.set()
        await successor.stop()
    await eventually(lambda: all_succeeded(store, "p", 4), timeout=20, what="all 4 jobs to finish")
