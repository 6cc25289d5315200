"""A schedule across a dispatch leader's death (issue 23): two dispatch instances as separate
OS processes (`orchestrator serve dispatch`, which fires schedules under the dispatch lease);
admission and the api in this process. A schedule fires every second; the leader is killed
(kill -9: its lease is not released, the standby waits out the TTL). Every fire time from the
first to the last has exactly one job, none missing (`catch_up: all` fires the seconds nobody
led through, once the standby leads), none twice."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests import factories
from tests.support import Listener, call, eventually, process_env

pytestmark = pytest.mark.slow


def fire_time(key: str) -> datetime:
    return datetime.fromisoformat(key.split(":", 2)[2])  # schedule:<name>:<fire time>


async def fired(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT key, claim_epoch, created_at FROM jobs WHERE key LIKE 'schedule:tick:%'")
    return sorted((dict(r) for r in rows), key=lambda r: r["key"])


async def test_a_schedule_fires_every_time_exactly_once_across_a_leader_kill(
    settings: Settings, tmp_path: Path
) -> None:
    front = Runtime(settings, ["admission", "api"], migrate=True)
    await front.start()
    assert front.store is not None and front.bus is not None
    store = front.store
    await factories.pool(store, "p", max_active=-1)
    env = process_env(settings, ORCH_SWEEP_INTERVAL_S="0.5", ORCH_DB_IDLE_IN_TRANSACTION_S="1", ORCH_STOP_TIMEOUT_S="2")
    procs = {f"d{i}": ServiceProcess(f"d{i}", ["dispatch"], env, tmp_path / "logs") for i in range(2)}
    try:
        async with (
            aiohttp.ClientSession(base_url=front.http_url) as http,
            Listener(front.bus, front.bus.subjects.leader_elected.any()) as elected,
        ):
            for proc in procs.values():
                proc.start()
            await asyncio.gather(*(proc.ready() for proc in procs.values()))
            first = await elected.wait(timeout=30)
            body = {"cron": "* * * * * *", "overlap": "allow", "catch_up": "all", "job": {"pool": "p"}}
            status, answer = await call(http, "PUT", "/v1/schedules/tick", json=body)
            assert status == 201, answer

            async def at_least(n: int) -> bool:
                return len(await fired(store)) >= n

            await eventually(lambda: at_least(3), timeout=15, what="the first leader's fires")
            procs[first.holder].signal(signal.SIGKILL)
            second = await elected.wait(lambda e: e.holder != first.holder, timeout=30)
            assert second.epoch > first.epoch
            killed_at = datetime.now(tz=fire_time((await fired(store))[-1]["key"]).tzinfo)
            # Three seconds after the new leader's first fire, stop the schedule.
            await eventually(
                lambda: _fired_after(store, killed_at + timedelta(seconds=3)), timeout=30, what="the new leader's fires"
            )
            assert (await call(http, "DELETE", "/v1/schedules/tick"))[0] == 200
        jobs = await fired(store)
        times = [fire_time(j["key"]) for j in jobs]
        span = int((times[-1] - times[0]).total_seconds())
        # Every second from the first fire to the last, each once (keys are unique: a second fire
        # of a time would have been the same job, so a gap is what could go wrong).
        assert times == [times[0] + timedelta(seconds=i) for i in range(span + 1)], times
        assert any(t > killed_at for t in times) and any(t < killed_at for t in times)
    finally:
        await asyncio.gather(*(proc.close() for proc in procs.values()))
        await front.stop()


async def _fired_after(store: Store, at: datetime) -> bool:
    return any(fire_time(j["key"]) >= at for j in await fired(store))
