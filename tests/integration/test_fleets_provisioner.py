"""A provisioner's reconcile alone, with workers that never start (seed 001): a worker that never
registers is stopped after the start timeout on the provisioner's clock, a delayed job is demand
only once due (a timer says when), and jobs a concurrency key or a rate limit holds back are no
demand. The fleets running real workers: test_fleets_provisioned.py."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.bus import Bus
from orchestrator.provisioning import ProvisionerContext, WorkerRequest
from orchestrator.settings import ProvisionerSettings, Settings
from orchestrator.store import Store
from services.provisioner import Provisioning
from tests import factories
from tests.support import eventually


class ManualClock:
    """A clock the test moves: both readings are the same number."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


class NeverRegisters:
    """A provisioner whose workers never start: spawned and stopped are only noted."""

    def __init__(self, ctx: ProvisionerContext) -> None:
        self.spawned: list[str] = []
        self.stopped: list[str] = []

    async def spawn(self, request: WorkerRequest) -> str:
        self.spawned.append(request.runner_id)
        return request.runner_id

    async def count_live(self) -> int:
        return len(self.spawned) - len(self.stopped)

    async def stop(self, worker: str) -> None:
        self.stopped.append(worker)

    async def close(self) -> None:
        pass


async def test_a_worker_that_never_registers_is_stopped_after_the_start_timeout(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A worker's start is timed on the provisioner's clock: moved past `start_timeout_s`, the
    next reconcile stops the worker (no waiting out the timeout)."""
    await factories.pool(store, "p", labels=["linux"], provisioner="silent", max_workers=1)
    await factories.queue(store, 1, pool="p")
    clock = ManualClock()
    made: list[NeverRegisters] = []

    def silent(ctx: ProvisionerContext) -> NeverRegisters:
        made.append(NeverRegisters(ctx))
        return made[-1]

    provisioning = Provisioning(
        ProvisionerSettings(start_timeout_s=30),
        settings.timings,
        store,
        bus,
        {"silent": silent},
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
        clock=clock,
    )
    try:
        await provisioning.reconcile("p")
        [fleet] = made
        [worker] = fleet.spawned
        clock.now += 29
        await provisioning.reconcile("p")
        assert (fleet.spawned, fleet.stopped) == ([worker], [])  # still starting: not stopped, not replaced
        clock.now += 2
        await provisioning.reconcile("p")
        assert fleet.stopped == [worker]
    finally:
        await provisioning.stop()


async def test_a_delayed_job_is_demand_only_once_due_and_a_timer_says_when(
    settings: Settings, store: Store, bus: Bus
) -> None:
    """A provisioned pool spawns no worker for a job that is not due yet (delayed), and spawns one
    when it falls due: woken by a timer set from the demand, not by the sweep (set far off)."""
    await factories.pool(store, "p", labels=["linux"], provisioner="silent", max_workers=5)
    [job_id] = await factories.queue(store, 1, pool="p", delay_s=1.0)
    made: list[NeverRegisters] = []

    def silent(ctx: ProvisionerContext) -> NeverRegisters:
        made.append(NeverRegisters(ctx))
        return made[-1]

    provisioning = Provisioning(
        ProvisionerSettings(),
        settings.timings.model_copy(update={"sweep_interval_s": 600.0}),
        store,
        bus,
        {"silent": silent},
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
    )
    await provisioning.start()
    try:
        await provisioning.reconcile("p")
        [fleet] = made
        assert fleet.spawned == []  # queued, but not demand before its time

        async def spawned() -> bool:
            return len(fleet.spawned) == 1

        await eventually(spawned, timeout=5, what="a worker for the job once due")
        row = await store.job_get(job_id)
        assert row is not None and row.run_at is not None
        assert datetime.now(UTC) >= row.run_at
    finally:
        await provisioning.stop()


async def test_jobs_a_key_or_a_rate_limit_holds_back_are_no_demand(store: Store) -> None:
    """A provisioned pool's demand counts a lane under a concurrency key or a rate limit only as
    far as it has room now: no worker for a deploy its key would hold back, and the rate limit's
    next start is when to look again."""
    await factories.pool(store, "p", provisioner="local", max_workers=10)
    await factories.queue(store, 2, pool="p")
    await factories.queue(store, 5, pool="p", concurrency_key="deploy")  # one at a time
    await store.rate_limit_put("api", 1, 60.0, 1)
    await factories.queue(store, 3, pool="p", rate_limit_key="api")  # one now, the next in a minute
    demand = await store.pool_fleet_demand("p", 100)
    assert demand is not None and (demand["queued"], demand["due_in_s"]) == (2 + 1 + 1, None)
    await factories.runner(store, "w1", "p", slots=3)
    assert len((await store.transitions.claim("p", 10)).assignments) == 3  # one of each lane
    demand = await store.pool_fleet_demand("p", 100)
    assert demand is not None and demand["queued"] == 1  # the unkeyed one: the key is full, the minute spent
    assert demand["due_in_s"] is not None and 59 < demand["due_in_s"] <= 60
