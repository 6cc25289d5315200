"""Schedules (issue 23): `PUT/GET/DELETE /v1/schedules/{name}`, `GET /v1/schedules`, and the
scheduler that fires them, on real NATS and Postgres. The API and admission run as a front
(jobs stay queued: no dispatcher); the scheduler under test reads an injected clock, so a test
moves time instead of waiting for it, and asks for a round (`tick`) where the timer would.
One test keeps the real clock and the timer: a schedule fires on time with no sweep."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator import failpoints
from orchestrator.bus import Bus
from orchestrator.settings import SchedulerSettings, Settings
from orchestrator.store import Store
from schemas.schedules import ScheduleList
from services.admission.scheduler import Scheduler, fire_key
from tests import factories
from tests.support import call, database_rows, eventually


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock(time.time())


@pytest.fixture
async def scheduler(
    settings: Settings, front: Runtime, store: Store, bus: Bus, clock: ManualClock
) -> AsyncIterator[Scheduler]:
    await factories.pool(store, "p", labels=["linux"])
    timings = settings.timings.model_copy(update={"sweep_interval_s": 600.0})
    s = Scheduler(SchedulerSettings(on_time_s=10), timings, store, bus, clock=clock)
    await s.start()
    yield s
    await s.stop()


def job(**spec: Any) -> dict[str, Any]:
    return {"pool": "p", "payload": {"command": ["true"]}, **spec}


async def put(http: aiohttp.ClientSession, name: str, **body: Any) -> dict[str, Any]:
    status, answer = await call(http, "PUT", f"/v1/schedules/{name}", json={"job": job(), **body})
    assert status in (200, 201), answer
    return answer


async def fired(store: Store, name: str) -> list[Any]:
    """The jobs schedule `name` fired, oldest fire first (their keys say the fire time)."""
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT * FROM jobs WHERE key LIKE $1 ORDER BY key", f"schedule:{name}:%")
    return [dict(r) for r in rows]


def minute(clock: ManualClock, n: int = 0) -> datetime:
    """The start of the minute `n` minutes after the clock's."""
    now = datetime.fromtimestamp(clock.now, UTC).replace(second=0, microsecond=0)
    return now + timedelta(minutes=n)


async def test_bad_schedules_are_refused_naming_the_field_and_change_nothing(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store
) -> None:
    before = await database_rows(store)
    for body, field in (
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),  # February 30th: never fires
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "* * * * *", "overlap": "queue"}, "overlap"),
        ({"cron": "* * * * *", "catch_up": "some"}, "catch_up"),
        ({"cron": "* * * * *", "job": job(pool="nowhere")}, "job.pool"),
        ({"cron": "* * * * *", "job": job(labels=["gpu"])}, "job.labels"),
        ({"cron": "* * * * *", "job": job(key="mine")}, "job"),
        ({"cron": "* * * * *", "job": job(run_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())}, "job"),
        ({"cron": "* * * * *", "job": {"pool": "p", "priority": "high"}}, "job.priority"),
        ({"cron": "* * * * *", "job": job(payload={"command": ["env"], "env": {"A": 1}})}, "job.payload.env"),
        ({"cron": "* * * * *", "colour": "red"}, "colour"),
    ):
        status, answer = await call(http, "PUT", "/v1/schedules/s", json={"job": job(), **body})
        assert status == 422 and answer["error"]["field"] == field, (body, answer)
    assert (await call(http, "PUT", "/v1/schedules/bad name!", json={"cron": "* * * * *", "job": job()}))[0] == 422
    assert (await call(http, "GET", "/v1/schedules/s"))[0] == 404
    assert (await call(http, "DELETE", "/v1/schedules/s"))[0] == 404
    assert await database_rows(store) == before


async def test_a_schedule_fires_once_per_tick_from_its_last_time_not_from_now(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    created = await put(http, "tick", cron="* * * * *", overlap="allow")
    assert created["next_fire_at"] is not None and created["last_job"] is None
    first = minute(clock, 1)
    assert datetime.fromisoformat(created["next_fire_at"]) == first
    await scheduler.tick()
    assert await fired(store, "tick") == []  # not due yet
    assert scheduler.armed_for == first.timestamp()  # the timer waits for it

    # Due: fired once, however many rounds look at it.
    clock.now = first.timestamp() + 0.5
    for _ in range(3):
        await scheduler.tick()
    [one] = await fired(store, "tick")
    assert one["key"] == fire_key("tick", first) == f"schedule:tick:{first:%Y-%m-%dT%H:%M:%SZ}"
    assert one["state"] == "queued"
    _status, view = await call(http, "GET", "/v1/schedules/tick")
    assert datetime.fromisoformat(view["last_fire_at"]) == first
    assert view["last_job"] == {"id": str(one["id"]), "state": "queued"}
    assert datetime.fromisoformat(view["next_fire_at"]) == minute(clock, 1)
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="fired") == 1

    # A round 20 s late into the next minute (on time) fires that minute's time, not "now".
    clock.now = minute(clock, 1).timestamp() + 20
    await scheduler.tick()
    assert [j["key"] for j in await fired(store, "tick")] == [fire_key("tick", t) for t in (first, minute(clock, 0))]


@pytest.mark.parametrize(
    ("catch_up", "fired_minutes", "missed"),
    [("none", [], 5), ("latest", [5], 4), ("all", [1, 2, 3, 4, 5], 0)],
)
async def test_catch_up_after_downtime(
    http: aiohttp.ClientSession,
    scheduler: Scheduler,
    store: Store,
    clock: ManualClock,
    catch_up: str,
    fired_minutes: list[int],
    missed: int,
) -> None:
    """Nothing fired for five minutes (the scheduler was down); the round after is 30 s late
    into the fifth: past `on_time_s`, so `none` fires nothing."""
    await put(http, "cron", cron="* * * * *", overlap="allow", catch_up=catch_up)
    start = minute(clock)
    clock.now = (start + timedelta(minutes=5, seconds=30)).timestamp()
    await scheduler.tick()
    keys = [j["key"] for j in await fired(store, "cron")]
    assert keys == [fire_key("cron", start + timedelta(minutes=m)) for m in fired_minutes]
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="missed") == missed
    _status, view = await call(http, "GET", "/v1/schedules/cron")
    assert datetime.fromisoformat(view["next_fire_at"]) == start + timedelta(minutes=6)  # resumes after
    if catch_up == "none":
        assert view["last_skip_reason"] == "missed" and view["last_job"] is None


async def test_catch_up_all_fires_at_most_the_hundred_latest(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    await put(http, "many", cron="* * * * * *", overlap="allow", catch_up="all")  # every second
    clock.now += 150.5
    await scheduler.tick()
    jobs = await fired(store, "many")
    assert len(jobs) == 100
    newest = datetime.fromtimestamp(int(clock.now), UTC)
    assert jobs[-1]["key"] == fire_key("many", newest)
    assert jobs[0]["key"] == fire_key("many", newest - timedelta(seconds=99))
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="missed") >= 49


async def test_overlap_skip_allow_and_cancel_previous(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    await put(http, "o", cron="* * * * *")  # overlap: skip (the default)
    for _n in (1, 2):
        clock.now = minute(clock, 1).timestamp()
        await scheduler.tick()
    [only] = await fired(store, "o")  # the second time found the first job still queued
    _status, view = await call(http, "GET", "/v1/schedules/o")
    assert view["last_skip_reason"].startswith(f"overlap: job {only['id']}")
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="overlap") == 1

    await put(http, "o", cron="* * * * *", overlap="allow")  # the same cron: its position is kept
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    jobs = await fired(store, "o")
    assert len(jobs) == 2 and all(j["state"] == "queued" for j in jobs)

    await put(http, "o", cron="* * * * *", overlap="cancel_previous")
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    jobs = await fired(store, "o")
    assert [j["state"] for j in jobs] == ["cancelled", "cancelled", "queued"]

    # Once the previous job has ended, `skip` fires again.
    await put(http, "o", cron="* * * * *", overlap="skip")
    await store.transitions.cancel(jobs[-1]["id"])
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    assert len(await fired(store, "o")) == 4


async def test_paused_deleted_and_changed_schedules(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    await put(http, "p1", cron="* * * * *", overlap="allow", paused=True)
    status, listed = await call(http, "GET", "/v1/schedules")
    assert [s["name"] for s in listed["schedules"]] == ["p1"] and listed["schedules"][0]["next_fire_at"] is None
    clock.now = minute(clock, 3).timestamp()
    await scheduler.tick()
    assert await fired(store, "p1") == []
    # Unpaused, it resumes from now (the clock the API reads): what fell due while it was paused
    # never fires; the first time after the unpause does.
    clock.now = time.time()
    unpaused = datetime.now(UTC)
    view = await put(http, "p1", cron="* * * * *", overlap="allow")
    assert datetime.fromisoformat(view["next_fire_at"]) > unpaused
    await scheduler.tick()
    assert await fired(store, "p1") == []
    clock.now = datetime.fromisoformat(view["next_fire_at"]).timestamp()
    await scheduler.tick()
    assert [j["key"] for j in await fired(store, "p1")] == [fire_key("p1", minute(clock))]

    status, deleted = await call(http, "DELETE", "/v1/schedules/p1")
    assert (status, deleted) == (200, {"name": "p1", "deleted": True})
    clock.now = minute(clock, 3).timestamp()
    await scheduler.tick()
    assert len(await fired(store, "p1")) == 1 and scheduler.armed_for is None  # no fire since; the job stays


async def test_a_fire_the_pool_refuses_is_recorded_and_the_schedule_goes_on(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    await factories.pool(store, "p", labels=["linux"], max_active=0)  # every job shed
    await put(http, "shed", cron="* * * * *")
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    assert await fired(store, "shed") == []
    _status, view = await call(http, "GET", "/v1/schedules/shed")
    assert view["last_skip_reason"].startswith("overloaded: ")
    assert datetime.fromisoformat(view["next_fire_at"]) == minute(clock, 1)
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="rejected") == 1


async def test_a_schedule_stored_before_env_was_checked_is_refused_at_its_fire_with_the_reason(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    """Every fire validates the schedule's job again. One stored before `payload.env` was checked
    (its env set in the table, as the API took it then) is refused at its next fire with the
    reason recorded, and its schedule goes on, as do the other schedules of the round. It is
    still shown as stored (GET and the list, read by the client's models too), so it can be
    seen and fixed by a PUT."""
    await put(http, "legacy", cron="* * * * *")
    await put(http, "fine", cron="* * * * *", overlap="allow")
    async with store.connection() as conn:
        sql = "UPDATE schedules SET job = jsonb_set(job, '{payload,env}', $1) WHERE name = 'legacy'"
        await conn.execute(sql, {"A": 1, "B=C": "x"})
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    assert await fired(store, "legacy") == []
    assert len(await fired(store, "fine")) == 1
    assert scheduler.metrics.count("orchestrator_schedule_fires", outcome="rejected") == 1
    status, view = await call(http, "GET", "/v1/schedules/legacy")
    assert status == 200, view
    assert view["last_skip_reason"].startswith("invalid: payload.env: 'A' is 1: a value is a string"), view
    assert view["job"]["payload"]["env"] == {"A": 1, "B=C": "x"}  # as stored
    assert datetime.fromisoformat(view["next_fire_at"]) == minute(clock, 1)
    status, listed = await call(http, "GET", "/v1/schedules")
    assert status == 200, listed
    shown = {s.name: s.job.payload.get("env") for s in ScheduleList.model_validate(listed).schedules}
    assert shown == {"legacy": {"A": 1, "B=C": "x"}, "fine": None}

    await put(http, "legacy", cron="* * * * *", job=job(payload={"command": ["env"], "env": {"A": "1"}}))
    clock.now = minute(clock, 1).timestamp()
    await scheduler.tick()
    [legacy] = await fired(store, "legacy")
    assert legacy["spec"]["payload"]["env"] == {"A": "1"}
    assert len(await fired(store, "fine")) == 2


async def test_the_timer_fires_on_time_and_is_set_again_when_a_schedule_changes(
    settings: Settings, front: Runtime, http: aiohttp.ClientSession, store: Store, bus: Bus
) -> None:
    """The real clock, no sweep: the scheduler starts with nothing to wait for, a PUT wakes it
    (`SchedulesChanged`), and each second's time fires within a second of it."""
    await factories.pool(store, "p", labels=["linux"])
    timings = settings.timings.model_copy(update={"sweep_interval_s": 600.0})
    scheduler = Scheduler(SchedulerSettings(), timings, store, bus)
    await scheduler.start()
    try:
        assert scheduler.armed_for is None
        await put(http, "every", cron="* * * * * *", overlap="allow")

        async def three() -> list[Any] | None:
            jobs = await fired(store, "every")
            return jobs if len(jobs) >= 3 else None

        jobs = await eventually(three, timeout=10, what="three fires")
        for j in jobs:
            due = datetime.fromisoformat(j["key"].split(":", 2)[2])  # schedule:<name>:<fire time>
            assert 0 <= (j["created_at"] - due).total_seconds() < 1.0, (j["key"], j["created_at"])
        seconds = [j["key"] for j in jobs]
        assert len(set(seconds)) == len(seconds)
    finally:
        await scheduler.stop()


async def test_a_fire_that_fails_unexpectedly_costs_one_round_not_the_scheduler(
    http: aiohttp.ClientSession, scheduler: Scheduler, store: Store, clock: ManualClock
) -> None:
    """A defect in schedules' fires (the failpoint `scheduler.fire` raising) is logged, and the
    next round comes a sweep later (the failed fires are still due: not at once, 1,000 rounds a
    second); once the defect is gone, they fire. Before, the error ended the scheduler's loop: no
    schedule fired again until a restart."""
    await put(http, "a", cron="* * * * *")
    await put(http, "b", cron="* * * * *")
    failpoints.enable("scheduler.fire", "raise")
    try:
        clock.now = minute(clock, 1).timestamp() + 0.5
        scheduler.wake()  # the loop's round, as the timer or a schedule's change wakes it

        async def failed_then_a_sweep_wait() -> bool:
            waits = scheduler.armed_for is not None and scheduler.armed_for >= clock.now + 600
            return waits and not await fired(store, "a") and not await fired(store, "b")

        await eventually(failed_then_a_sweep_wait, what="the failed round to wait a sweep for the next")
    finally:
        failpoints.disable("scheduler.fire")
    scheduler.wake()  # the sweep's round

    async def both_fired() -> bool:
        return len(await fired(store, "a")) == len(await fired(store, "b")) == 1

    await eventually(both_fired, what="the failed fires to happen in the next round")
