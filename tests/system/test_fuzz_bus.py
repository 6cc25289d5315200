"""Guarantee 8 at the NATS doors: every subject a service serves, fed bad messages by hypothesis
against the whole system (real NATS, real Postgres). A request the model refuses is answered
with an error that says what was wrong; a request it accepts is answered too (never left to time
out); no table changes; and afterwards the system still runs a job end to end. The JetStream
intake, which has nobody to answer, records each refusal in `rejections` (GET /v1/rejections):
that row, the documented answer, is the only change it makes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.runtime import Runtime
from orchestrator.bus import Bus, RequestTopic, Subjects, Topic
from orchestrator.bus.bus import BATCH_HEADER
from orchestrator.store import Store
from schemas import events as ev
from services.runner import Runner
from tests.fuzz import FUZZ, bodies, count, every_field_spoiled, refuses
from tests.support import database_rows, eventually, submit

GHOST_JOB = "01a20789-382f-70f4-875f-e0c05fdb8cac"
NOWHERE = "nowhere"  # no such pool: even a valid message changes nothing


@dataclass(frozen=True)
class Door:
    name: str
    topic: Topic[Any]  # as declared (relative): its model, and a request's reply
    base: dict[str, Any]
    at: Callable[[Runtime], tuple[str, ...]] = lambda system: ()  # the topic's parameters
    only_refused: bool = False  # valid messages would act (the runner would take a job): send bad ones only

    @property
    def model(self) -> type[BaseModel]:
        return self.topic.model

    @property
    def reply(self) -> type[BaseModel] | None:  # None: news, nobody answers
        return self.topic.reply if isinstance(self.topic, RequestTopic) else None

    def subject(self, system: Runtime) -> str:
        assert system.bus is not None
        return self.topic.under(system.bus.subjects.root).at(*self.at(system)).subject


def _runner(system: Runtime) -> tuple[str]:
    runner = system.services["runner"]
    assert isinstance(runner, Runner)
    return (runner.runner_id,)


def _nowhere(system: Runtime) -> tuple[str]:
    return (NOWHERE,)


S = Subjects
job = {"job_id": GHOST_JOB, "pool": NOWHERE, "runner_id": "ghost", "attempt": 1}
REQUESTS = [
    Door("admission request", S.submit_request, {"pool": NOWHERE}),
    Door("runner register", S.runner_register,
         {"runner_id": "ghost", "pool": NOWHERE, "slots": 1, "metadata": {"host": "h"}}),
    Door("runner heartbeat", S.runner_heartbeat, {"runner_id": "ghost", "pool": NOWHERE, "running": [GHOST_JOB]}),
    Door("runner start", S.runner_start, job),
    Door("runner finish", S.runner_finish, {**job, "state": "failed", "exit_code": 1, "reason": "r"}),
    Door("runner drain", S.runner_drain, {"runner_id": "ghost", "pool": NOWHERE}),
    Door("runner stopped", S.runner_stopped, {"runner_id": "ghost", "pool": NOWHERE,
         "killed": [{"job_id": GHOST_JOB, "attempt": 1}]}),
    Door("runner assign", S.assign, {**job, "payload": {"command": ["true"]}, "timeout_s": 1}, _runner,
         only_refused=True),
]  # fmt: skip
NEWS = [
    Door("runner taints", S.runner_taints_changed, {"runner_id": "ghost", "pool": NOWHERE, "taints": []}),
    Door("pool updated", S.pool_updated, {"pool": NOWHERE, "config": {}}, _nowhere),
    Door("job admitted", S.job_admitted, {"job_id": GHOST_JOB, "key": "k", "pool": NOWHERE, "priority": 0}, _nowhere),
    Door("jobs queued", S.jobs_queued, {"pool": NOWHERE, "n": 1}, _nowhere),
    Door("slot available", S.slot_available, {"pool": NOWHERE, "free": 1}, _nowhere),
    Door("capacity unknown", S.capacity_unknown, {"pool": NOWHERE, "reason": "r"}, _nowhere),
    Door("job finished news", S.job_finished, {**job, "state": "failed"}, _nowhere),
    Door("runner cancel", S.cancel, {"job_id": GHOST_JOB, "pool": NOWHERE, "runner_id": None}, _runner),
]  # fmt: skip


def _answer(door: Door, data: bytes, batch: bool) -> BaseModel | list[BaseModel]:
    """The reply as the door's reply model: one, or (a batch that parsed) one per request."""
    assert door.reply is not None
    if batch:
        try:
            return TypeAdapter(list[door.reply]).validate_json(data)  # type: ignore[name-defined]
        except ValidationError:
            pass  # the batch itself did not parse: one error reply for all of it
    return door.reply.model_validate_json(data)


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def _error(answer: BaseModel) -> Any:
    return answer.error  # type: ignore[attr-defined]


async def _still_runs_a_job(system: Runtime, store: Store) -> None:
    async with aiohttp.ClientSession(base_url=system.http_url) as http:
        created = await submit(http, payload={"command": ["true"]})

    async def succeeded() -> bool:
        row = await store.job_get(created["id"])
        return row is not None and row["state"] == "succeeded"

    await eventually(succeeded, what="a job submitted after the fuzz to succeed")


@pytest.mark.parametrize("door", REQUESTS, ids=[d.name for d in REQUESTS])
@FUZZ
@given(data=st.data())
@example(data=None)  # every field of the door spoiled with every NASTY value, once each
async def test_bad_requests_get_an_error_reply_and_change_nothing(
    system: Runtime, bus: Bus, store: Store, door: Door, data: st.DataObject | None
) -> None:
    if data is None:
        for body in every_field_spoiled(door.base, list(door.model.model_fields)):
            if refuses(door.model, body) or not door.only_refused:
                await _request(system, bus, store, door, body, batch=False)
        return
    body = data.draw(bodies(door.base, list(door.model.model_fields)), label="body")
    # A batch of one (header Orch-Batch, a JSON array): only JSON can be put in an array intact.
    batch = data.draw(st.booleans(), label="as a batch") and _is_json(body)
    assume(refuses(door.model, body) or not door.only_refused)
    await _request(system, bus, store, door, body, batch=batch)


async def _request(system: Runtime, bus: Bus, store: Store, door: Door, body: bytes, *, batch: bool) -> None:
    refused = refuses(door.model, body)
    count(f"bus request {door.name}")
    before = await database_rows(store)
    headers = {BATCH_HEADER: "1"} if batch else None
    msg = await bus.nc.request(door.subject(system), b"[" + body + b"]" if batch else body, timeout=5, headers=headers)
    answer = _answer(door, msg.data, batch)
    answers = answer if isinstance(answer, list) else [answer]
    assert len(answers) == 1, msg.data
    if refused:
        error = _error(answers[0])
        assert error is not None and error.code in ("malformed", "invalid") and error.message, msg.data
    assert await database_rows(store) == before, body[:200]


@pytest.fixture
async def settles(system: Runtime, store: Store) -> AsyncIterator[None]:
    """After the news fuzz: nothing it heard changed a table, and a job still runs end to end."""
    before = await database_rows(store)
    yield
    await _still_runs_a_job(system, store)
    after = await database_rows(store)
    assert len(after.pop("jobs")) == 1, "only the job submitted after the fuzz"
    after.pop("job_shapes")
    assert after == {table: rows for table, rows in before.items() if table not in ("jobs", "job_shapes")}


@pytest.mark.parametrize("door", NEWS, ids=[d.name for d in NEWS])
@FUZZ
@given(data=st.data())
@example(data=None)
async def test_bad_news_is_ignored_and_the_system_still_runs(
    system: Runtime, bus: Bus, settles: None, door: Door, data: st.DataObject | None
) -> None:
    if data is None:
        cases = every_field_spoiled(door.base, list(door.model.model_fields))
    else:
        cases = [data.draw(bodies(door.base, list(door.model.model_fields)), label="body")]
    for body in cases:
        count(f"bus news {door.name}")
        await bus.nc.publish(door.subject(system), body)
    await bus.flush()


INTAKE_SPEC = {"pool": NOWHERE, "payload": {"command": ["true"]}}


async def _rejection(store: Store, seq: int) -> dict[str, Any] | None:
    async with store.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM rejections WHERE stream_seq = $1", seq)
    return dict(row) if row else None


@FUZZ
@given(data=st.data())
@example(data=None)
async def test_bad_intake_messages_are_recorded_as_rejections_and_nothing_else(
    front: Runtime, bus: Bus, store: Store, data: st.DataObject | None
) -> None:
    fields = list(ev.JobSubmitted.model_fields)
    if data is None:
        cases = every_field_spoiled(INTAKE_SPEC, fields)
    else:
        cases = [data.draw(bodies(INTAKE_SPEC, fields), label="body")]
    for body in cases:
        count("bus intake (JetStream)")
        before = await database_rows(store)
        ack = await bus.js.publish(bus.subjects.submit.subject, body, headers={"Nats-Msg-Id": str(uuid4())})
        row = await eventually(lambda seq=ack.seq: _rejection(store, seq), what=f"the rejection of message {ack.seq}")
        assert row["reason"] in ("malformed", "invalid", "unsatisfiable"), row
        assert row["message"], row
        after = await database_rows(store)
        assert len(after["rejections"]) == len(before["rejections"]) + 1
        assert {t: r for t, r in after.items() if t != "rejections"} == {
            t: r for t, r in before.items() if t != "rejections"
        }
