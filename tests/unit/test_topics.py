"""Subjects are typed topics (issue 18): each subject names its model once, in `Subjects`, so no
subject can be read as two models in two places, and the bus refuses an event of another model
before it leaves. Pure: no servers."""

from __future__ import annotations

from itertools import combinations

import pytest

from orchestrator.bus import Bus, Subjects
from orchestrator.bus.topics import JobNews, RequestTopic
from schemas.events import JobsQueued, RunnerHeartbeat, SlotAvailable

# The public contract (namespace `orch`): these strings do not change.
CONTRACT = {
    "submit": "orch.v1.jobs.submit",
    "submit_request": "orch.v1.jobs.submit.req",
    "job_admitted": "orch.v1.jobs.admitted.*",
    "job_rejected": "orch.v1.jobs.rejected.*",
    "job_assigned": "orch.v1.jobs.assigned.*",
    "job_started": "orch.v1.jobs.started.*",
    "job_requeued": "orch.v1.jobs.requeued.*",
    "job_finished": "orch.v1.jobs.finished.*",
    "job_expired": "orch.v1.jobs.expired.*",
    "assign": "orch.v1.runners.*.assign",
    "cancel": "orch.v1.runners.*.cancel",
    "runner_register": "orch.v1.runners.register",
    "runner_heartbeat": "orch.v1.runners.heartbeat",
    "runner_start": "orch.v1.runners.start",
    "runner_finish": "orch.v1.runners.finish",
    "runner_drain": "orch.v1.runners.drain",
    "runner_stopped": "orch.v1.runners.stopped",
    "runner_taints_changed": "orch.v1.runners.taints",
    "jobs_queued": "orch.v1.wakes.queued.*",
    "slot_available": "orch.v1.slots.available.*",
    "capacity_unknown": "orch.v1.capacity.unknown.*",
    "pool_updated": "orch.v1.pools.updated.*",
    "pool_leader_changed": "orch.v1.pools.leader.*",
    "schedules_changed": "orch.v1.schedules.changed",
    "leader_elected": "orch.v1.leader.elected.*",
    "leader_lost": "orch.v1.leader.lost.*",
}


def overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (`*`: one token; `>`: the rest, one or more)."""
    x, y = a.split("."), b.split(".")
    for p, q in zip(x, y, strict=False):
        if ">" in (p, q):
            return True
        if p != q and "*" not in (p, q):
            return False
    return len(x) == len(y)


def test_overlap_is_nats_matching() -> None:
    assert overlap("a.*.c", "a.b.c") and overlap("a.*", "a.*") and overlap("a.>", "a.b.c")
    assert not overlap("a.*", "a.b.c") and not overlap("a.b", "a.c") and not overlap("a.>", "a")


def test_every_subject_is_its_topics_one_declaration() -> None:
    assert {name: topic.subject for name, topic in Subjects().topics().items()} == CONTRACT
    declared = Subjects.declared()
    for namespace in ("orch", "t-1"):
        subjects = Subjects(namespace)
        for name, topic in subjects.topics().items():
            assert topic == declared[name].under(f"{namespace}.v1"), name
            assert topic.subject == f"{namespace}.v1.{declared[name].relative}"


def test_no_two_topics_read_one_subject_as_different_models() -> None:
    clashes = [
        f"{a} ({ta.model.__name__}) and {b} ({tb.model.__name__})"
        for (a, ta), (b, tb) in combinations(Subjects().topics().items(), 2)
        if overlap(ta.subject, tb.subject) and ta.model is not tb.model
    ]
    assert clashes == []


def test_the_job_events_stream_captures_the_job_news_and_nothing_else() -> None:
    subjects = Subjects()
    captured = [topic.any().subject for topic in subjects.job_events]
    news = {name for name, topic in subjects.topics().items() if isinstance(topic, JobNews)}
    assert len(captured) == len(news) == 7
    others = [t.subject for name, t in subjects.topics().items() if name not in news]
    assert [(c, o) for c in captured for o in others if overlap(c, o)] == []  # never jobs.submit(.req)


def test_a_topic_takes_its_parameters_in_order() -> None:
    subjects = Subjects()
    assert subjects.assign.at("r1").subject == "orch.v1.runners.r1.assign"
    assert subjects.slot_available.any() == subjects.slot_available
    assert Subjects.job_rejected.at("p").relative == "jobs.rejected.p"  # an outbox row's subject
    with pytest.raises(TypeError, match="takes 1 parameters, not 2"):
        subjects.slot_available.at("p", "q")
    with pytest.raises(TypeError, match="takes 0 parameters"):
        subjects.runner_heartbeat.at("x")
    assert isinstance(subjects.runner_heartbeat, RequestTopic)


async def test_publishing_another_model_is_refused_at_the_call() -> None:
    bus = Bus("nats://unused", Subjects())  # never connected: the topic refuses before the bus is used
    slot = bus.subjects.slot_available
    wrong: object = JobsQueued(pool="p", n=1)
    with pytest.raises(TypeError, match="carries SlotAvailable, not JobsQueued"):
        await bus.publish(slot.at("p"), wrong)  # type: ignore[misc]
    with pytest.raises(TypeError, match="carries SlotAvailable, not JobsQueued"):
        await bus.publish_many([(slot.at("p"), SlotAvailable(pool="p", free=1)), (slot.at("p"), wrong)])  # type: ignore[misc]
    with pytest.raises(TypeError, match="is a pattern"):
        await bus.publish(slot.any(), SlotAvailable(pool="p", free=1))
    with pytest.raises(TypeError, match="carries RunnerHeartbeat, not SlotAvailable"):
        await bus.request(bus.subjects.runner_heartbeat, SlotAvailable(pool="p", free=1), 1)  # type: ignore[misc]
    assert slot.at("p").encode(SlotAvailable(pool="p", free=1))  # its own model goes
    assert bus.subjects.runner_heartbeat.decode(RunnerHeartbeat(runner_id="r", pool="p").model_dump_json().encode())
    with pytest.raises(TypeError, match="in no namespace"):
        Subjects.slot_available.at("p").encode(SlotAvailable(pool="p", free=1))  # the declaration, not the bus's
