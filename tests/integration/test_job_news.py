"""The events Postgres composes for each job transition (job_news(), in the migration that made it)
are the models of schemas/events.py field for field: every kind, driven through the real edges,
validates against its model, carries no field the model lacks and lacks none it has, and its
outbox row carries the event's own id (its Nats-Msg-Id) and the subject it is announced on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.bus import Subjects
from orchestrator.bus.topics import JobNews
from orchestrator.store import End, Handoff, Start, Store
from schemas.base import Envelope
from schemas.events import (
    JobAdmitted,
    JobAssigned,
    JobCancelRequested,
    JobExpired,
    JobFinished,
    JobRequeued,
    JobStarted,
)
from schemas.jobs import JobState
from tests import factories

KINDS = (JobAdmitted, JobAssigned, JobStarted, JobFinished, JobRequeued, JobExpired, JobCancelRequested)
MODELS: dict[str, type[Envelope]] = {m.__name__: m for m in KINDS}
# The topic of each kind of news (relative, as the outbox stores it), which declares its model.
NEWS = {topic.model: topic for topic in Subjects.declared().values() if isinstance(topic, JobNews)}


async def outbox_rows(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        return [dict(r) for r in await conn.fetch("SELECT id, subject, body, durable FROM outbox ORDER BY seq")]


async def test_every_kind_of_job_news_is_its_model_field_for_field(store: Store) -> None:
    await factories.pool(store)
    await factories.runner(store, "r1", slots=4)
    a, b, c = await factories.queue(store, 3, payload={"command": ["true"]}, timeout_s=30)
    (abandoned,) = await factories.queue(store, 1, abandon_after_s=5)
    claimed = {x["id"]: x for x in (await store.transitions.claim("default", 4)).assignments}
    assert set(claimed) == {a, b, c, abandoned}
    # a: acknowledged, started, finished.  b: started with the ack folded in, then cancelled while
    # running (a notice to its runner).  c: handed back (requeued).  abandoned: expired.
    await store.transitions.acknowledge([Handoff(a, "r1", claimed[a]["assigned_at"])])
    starts = [Start(j, "r1", claimed[j]["attempt"] + 1) for j in (a, b)]
    assert len(await store.transitions.start_many(starts)) == 2
    assert len(await store.transitions.finish_many([End(a, "r1", starts[0].attempt, JobState.failed, 3, "boom")])) == 1
    assert (await store.transitions.cancel(b)).outcome == "requested"
    assert len(await store.transitions.unassign("r1", [c])) == 1
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert [j.id for j in await store.transitions.expire_abandoned(later)] == [abandoned]

    rows = await outbox_rows(store)
    kinds = set()
    for row in rows:
        body = json.loads(row["body"])
        model = MODELS[body["type"]]
        event = model.model_validate_json(row["body"])  # extra="forbid": no field the model lacks
        assert set(body) == set(model.model_fields), body["type"]  # and none it has left out
        assert event.id == row["id"]  # the row's id is the event's: its Nats-Msg-Id
        if isinstance(event, JobCancelRequested):
            assert (row["subject"], row["durable"]) == (Subjects.cancel.at("r1").relative, False)
        else:
            assert (row["subject"], row["durable"]) == (NEWS[model].at("default").relative, True)
        kinds.add(body["type"])
    assert kinds == set(MODELS)
    assert len({row["id"] for row in rows}) == len(rows)  # one id per event, even within a batch

    news = [(json.loads(r["body"])["type"], json.loads(r["body"]).get("job_id")) for r in rows]
    by_job = {j: [t for t, jid in news if jid == str(j)] for j in (a, b, c, abandoned)}
    assert by_job[a] == ["JobAdmitted", "JobAssigned", "JobStarted", "JobFinished"]
    assert by_job[b] == ["JobAdmitted", "JobAssigned", "JobStarted", "JobCancelRequested"]
    assert by_job[c] == ["JobAdmitted", "JobRequeued"]
    assert by_job[abandoned] == ["JobAdmitted", "JobExpired", "JobFinished", "JobCancelRequested"]
    finished = JobFinished.model_validate_json(next(r["body"] for r in rows if b'"JobFinished"' in r["body"]))
    assert (finished.state, finished.exit_code, finished.reason, finished.attempt) == ("failed", 3, "boom", 1)
    requeued = JobRequeued.model_validate_json(next(r["body"] for r in rows if b'"JobRequeued"' in r["body"]))
    assert (requeued.runner_id, requeued.reason) == ("r1", "handoff_failed")  # the runner it left
