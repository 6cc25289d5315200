"""Retries users expect (issue 20): a job's `retry` policy says which ends of an attempt start
another (`lost` by default; `failed`, `timed_out` on request), after an exponential backoff with
jitter, bounded by `max_attempts`; `GET /v1/jobs/{id}` shows every attempt. The whole system in
this process, the bundled runner running real commands, on real NATS and Postgres.

The dispatcher's safety sweep is set far beyond every test's deadline here: a retried job runs
again because dispatch woke when its backoff ran out, not because a sweep happened by.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from orchestrator.bus import Bus
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests.support import call, database_rows, eventually, submit

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}
# Counts its runs in a file; fails (exit 3) until run `argv[2]` times, then succeeds. With
# `argv[3]` = "hang", a failing run sleeps instead (its timeout ends it).
COUNTING = """
import pathlib, sys, time
runs = pathlib.Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
if n < int(sys.argv[2]):
    if sys.argv[3:] == ["hang"]:
        time.sleep(60)
    sys.exit(3)
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.sweep_interval_s = 600.0  # see the module note: only a timer can wake dispatch in time
    return settings


def counting(tmp_path: Path, succeed_at: int, *extra: str) -> list[str]:
    return [sys.executable, "-c", COUNTING, str(tmp_path / "runs"), str(succeed_at), *extra]


async def ended(http: aiohttp.ClientSession, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status, job = await call(http, "GET", f"/v1/jobs/{job_id}")
        assert status == 200, job
        return job if job["state"] in FINAL else None

    return await eventually(probe, timeout=timeout, what=f"job {job_id} to end")


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@contextlib.asynccontextmanager
async def following(bus: Bus) -> AsyncIterator[Any]:
    """A producer's durable pull consumer on every job event, as the README shows."""
    stream, durable = bus.subjects.job_events_stream, "retry-follower"
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL)
    await bus.js.add_consumer(stream, config)
    yield await bus.js.pull_subscribe_bind(durable, stream)


async def test_a_failing_command_is_retried_after_its_backoff_until_it_succeeds(
    system_http: aiohttp.ClientSession, bus: Bus, store: Store, tmp_path: Path
) -> None:
    retry = {"on": ["failed"], "backoff_s": 0.5, "max_backoff_s": 5, "jitter": 0.2}
    async with following(bus) as sub:
        job = await submit(system_http, max_attempts=3, retry=retry, payload={"command": counting(tmp_path, 3)})
        done = await ended(system_http, job["id"])
        assert (done["state"], done["attempt"], done["exit_code"]) == ("succeeded", 3, 0)
        assert done["retry"] == retry
        attempts = done["attempts"]
        assert [(a["attempt"], a["outcome"], a["exit_code"]) for a in attempts] == [
            (1, "failed", 3),
            (2, "failed", 3),
            (3, "succeeded", 0),
        ]
        runner = done["runner_id"]
        assert all(a["runner_id"] == runner for a in attempts)
        # The backoff, from the recorded times: 0.5 s then 1 s, less at most 20 % of jitter.
        for before, after, backoff in ((attempts[0], attempts[1], 0.5), (attempts[1], attempts[2], 1.0)):
            assert at(before["started_at"]) <= at(before["ended_at"])
            assert (at(after["started_at"]) - at(before["ended_at"])).total_seconds() >= backoff * 0.8
        assert at(attempts[2]["ended_at"]) == at(done["finished_at"])

        # What a producer following the stream hears of it: requeued (naming the outcome) and
        # handed out again after each failure, and one `finished`, at the end.
        await eventually(lambda: outbox_empty(store), what="the outbox to be relayed")
        heard = []
        while (await sub.consumer_info()).num_pending:
            for msg in await sub.fetch(100, timeout=5):
                event = json.loads(msg.data)
                if event.get("job_id") == job["id"]:
                    heard.append((event["type"], event.get("reason") or event.get("state")))
                await msg.ack()
    again = [("JobAssigned", None), ("JobStarted", None)]
    assert heard == [
        ("JobAdmitted", None),
        *again,
        ("JobRequeued", "failed"),
        *again,
        ("JobRequeued", "failed"),
        *again,
        ("JobFinished", "succeeded"),
    ]


async def outbox_empty(store: Store) -> bool:
    return await store.outbox_depth() == 0


async def test_by_default_a_failed_command_is_not_retried(system_http: aiohttp.ClientSession, tmp_path: Path) -> None:
    job = await submit(system_http, payload={"command": counting(tmp_path, 2)})
    done = await ended(system_http, job["id"])
    assert (done["state"], done["attempt"], done["exit_code"]) == ("failed", 1, 3)
    assert done["retry"]["on"] == ["lost"]  # the default: only a lost runner's attempt is retried
    assert [(a["attempt"], a["outcome"]) for a in done["attempts"]] == [(1, "failed")]
    assert (tmp_path / "runs").read_text() == "1"


async def test_a_timed_out_attempt_is_retried_when_asked(system_http: aiohttp.ClientSession, tmp_path: Path) -> None:
    retry = {"on": ["timed_out"], "backoff_s": 0.1}
    spec = {"timeout_s": 1, "max_attempts": 2, "retry": retry, "payload": {"command": counting(tmp_path, 2, "hang")}}
    job = await submit(system_http, **spec)
    done = await ended(system_http, job["id"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)
    assert [a["outcome"] for a in done["attempts"]] == ["timed_out", "succeeded"]


async def test_max_attempts_bounds_the_retries(system_http: aiohttp.ClientSession, tmp_path: Path) -> None:
    spec = {"max_attempts": 2, "retry": {"on": ["failed"], "backoff_s": 0.1}}
    job = await submit(system_http, **spec, payload={"command": counting(tmp_path, 10)})
    done = await ended(system_http, job["id"])
    assert (done["state"], done["attempt"], done["exit_code"]) == ("failed", 2, 3)
    assert [a["outcome"] for a in done["attempts"]] == ["failed", "failed"]
    assert (tmp_path / "runs").read_text() == "2"


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"on": ["succeeded"]}, "retry.on.0"),
        ({"on": "failed"}, "retry.on"),
        ({"backoff_s": -1}, "retry.backoff_s"),
        ({"backoff_s": 10, "max_backoff_s": 5}, "retry.max_backoff_s"),
        ({"jitter": 1.5}, "retry.jitter"),
        ({"tries": 3}, "retry.tries"),
        ("always", "retry"),
    ],
)
async def test_an_invalid_policy_is_refused_naming_its_field_and_changes_nothing(
    http: aiohttp.ClientSession, store: Store, retry: Any, field: str
) -> None:
    before = await database_rows(store)
    status, body = await call(http, "POST", "/v1/jobs", json={"pool": "default", "retry": retry})
    assert status == 422, body
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid", field)
    assert field in body["error"]["message"]
    assert await database_rows(store) == before
