"""The NATS-side timeouts issue 22 added, each met by a server slower than it: a nats-server of the
test's own, paused (SIGSTOP) longer than the timeout, then resumed (SIGCONT). A JetStream publish
is tried again with the same `Nats-Msg-Id` until its deadline (stored once), then gives up; a
stream's creation at start-up is tried again too; a lease operation gives up within half a TTL;
the api asks admission again only when that is safe; an intake fetch or a batch of events given
up on leaves the next one to its own answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from orchestrator.bus import Bus, Subjects
from orchestrator.bus.elections import ATTEMPT_S
from orchestrator.bus.lease import Lease
from orchestrator.embedded import EmbeddedNats
from orchestrator.errors import BusUnavailable, NoAnswer
from schemas.events import AdmissionResult, ErrorDetail, JobFinished, JobSubmitted
from schemas.ids import uuid7
from schemas.jobs import JobSpec, JobState
from services.api import admitting, take
from services.api.admitting import admit
from services.api.take import Waiters
from tests import support


@pytest.fixture
async def own_bus(own_nats: EmbeddedNats) -> AsyncIterator[Bus]:
    bus = Bus(own_nats.url, Subjects("slow"), name="test-slow")
    await bus.connect()
    yield bus
    await bus.close()


def paused(server: EmbeddedNats) -> contextlib.AbstractContextManager[None]:
    assert server.pid is not None and server.port is not None
    return support.paused(server.pid, server.port)


async def _paused_for(server: EmbeddedNats, seconds: float) -> None:
    with paused(server):
        await asyncio.sleep(seconds)  # the pause itself: the slow side of the test


async def test_a_submit_outlasts_a_server_slower_than_nats_default_timeout_and_is_stored_once(
    own_nats: EmbeddedNats, own_bus: Bus
) -> None:
    await own_bus.ensure_intake_stream()
    pause = asyncio.create_task(_paused_for(own_nats, 6.0))  # past nats-py's 5 s and 3 attempts
    await asyncio.sleep(0.1)
    began = time.monotonic()
    await own_bus.submit(b'{"pool": "p"}', "once")
    assert time.monotonic() - began >= 5.0  # it waited the pause out
    await pause
    info = await own_bus.js.stream_info(own_bus.subjects.intake_stream)
    assert info.state.messages == 1  # every attempt had the same Nats-Msg-Id


async def test_a_submit_gives_up_at_its_deadline(own_nats: EmbeddedNats, own_bus: Bus) -> None:
    await own_bus.ensure_intake_stream()
    with paused(own_nats):
        began = time.monotonic()
        with pytest.raises(BusUnavailable, match="JetStream did not answer within 2 s"):
            await own_bus.submit(b'{"pool": "p"}', "late", within_s=2.0)
        assert time.monotonic() - began < 2 + ATTEMPT_S


async def test_creating_a_stream_outlasts_a_server_slower_than_one_attempt(
    own_nats: EmbeddedNats, own_bus: Bus
) -> None:
    """At start-up, as a cluster still electing its meta leader would be."""
    pause = asyncio.create_task(_paused_for(own_nats, 6.0))  # past an attempt (nats-py's 5 s)
    await asyncio.sleep(0.1)
    await own_bus.ensure_intake_stream()
    await pause
    info = await own_bus.js.stream_info(own_bus.subjects.intake_stream)
    assert info.config.num_replicas == 1


async def test_a_lease_operation_gives_up_within_half_a_ttl(own_nats: EmbeddedNats, own_bus: Bus) -> None:
    lease = Lease(own_bus, "all", "a", ttl_s=4)
    await lease.open()
    try:
        assert await lease.acquire() is not None
        with paused(own_nats):
            began = time.monotonic()
            with pytest.raises(BusUnavailable):
                await lease.renew()
            waited = time.monotonic() - began
        assert 2 <= waited < 4  # half the TTL, not nats-py's 5 s: past the lease itself
        assert await lease.renew()  # the server is back, and the lease is still ours
    finally:
        await lease.close()


async def test_a_wait_for_job_news_goes_on_without_it_when_the_server_is_slower_than_the_follow_timeout(
    own_nats: EmbeddedNats, own_bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    waiters, job = Waiters(own_bus), uuid7()
    with paused(own_nats), caplog.at_level(logging.WARNING, logger=take.__name__):
        began = time.monotonic()
        async with waiters.watch(job):
            waited = time.monotonic() - began
    # Not held until the server came back: the long poll goes on, ending at its own deadline.
    said = [r.getMessage() for r in caplog.records]  # why it went on: shown if it went on too early
    assert take.FOLLOW_TIMEOUT_S <= waited < take.FOLLOW_TIMEOUT_S + 1.5, (waited, said)
    assert any("cannot follow job news" in message for message in said)
    async with waiters.watch(job) as news:  # the server answers again: a wait hears its news
        finished = JobFinished(job_id=job, pool="p", runner_id=None, state=JobState.succeeded, attempt=1)
        await own_bus.publish(own_bus.subjects.job_finished.at("p"), finished)
        async with asyncio.timeout(10):
            heard = await news.get()
    assert heard is not None and heard.job_id == job


async def test_an_intake_fetch_after_one_that_timed_out_on_a_paused_server_returns_each_job_as_it_comes(
    own_nats: EmbeddedNats, own_bus: Bus
) -> None:
    """A fetch that gave up while the server slept leaves its pull request on the server; the
    server's end of it (408) comes later, during the next fetch. That end is not the next fetch's,
    and no job may wait for the next one to come (it waited 50 ms after an idle spell, or the
    fetch's whole timeout when no next one came)."""
    await own_bus.ensure_intake_stream()
    intake = await own_bus.intake_subscription("slow-fetch")
    stream = own_bus.subjects.intake_stream
    waiting = lambda: _pull_waiting(own_bus, stream, "slow-fetch")  # noqa: E731
    gave_up = asyncio.create_task(intake.fetch(10, timeout=0.5))
    await support.eventually(waiting, what="the first fetch to wait on the server")
    with paused(own_nats):  # longer than the fetch's timeout: its request expires while paused
        assert await gave_up == []
        sent = own_bus.nc.stats["out_msgs"]
        fetching = asyncio.create_task(intake.fetch(10, timeout=60))
        await support.eventually(lambda: _true(own_bus.nc.stats["out_msgs"] > sent), what="the next fetch to ask")
    for i in range(3):
        await support.eventually(waiting, what="a fetch to wait on the server")
        await own_bus.submit(b'{"pool": "p"}', f"job{i}")
        got = await asyncio.wait_for(fetching, 20)  # not held for a next job, nor for 60 s
        assert [m.headers["Nats-Msg-Id"] for m in got] == [f"job{i}"]  # type: ignore[index]
        fetching = asyncio.create_task(intake.fetch(10, timeout=60))
    fetching.cancel()


async def test_a_stored_batch_given_up_on_a_paused_server_leaves_the_next_to_its_own_answers(
    own_nats: EmbeddedNats, own_bus: Bus
) -> None:
    """The relay gives a batch of events PUBLISH_ACK_TIMEOUT_S; here the server sleeps past the
    batch's caller's 0.5 s. The acks of that batch come once it wakes, while the next batch waits
    for an answer that never comes (its subject has a core subscriber that does not reply, and no
    stream): they are not the next batch's, which must not end."""
    await own_bus.ensure_job_events_stream(3600)
    subject, unanswered = own_bus.subjects.job_admitted.at("p").subject, own_bus.subjects.absolute("unanswered")
    listener = await own_bus.nc.subscribe(unanswered)
    await own_bus.flush()

    async def waits_for_nothing() -> None:
        async with asyncio.timeout(2), own_bus.stored_batch() as stored:
            await stored.publish(unanswered, b"{}", {})

    with paused(own_nats):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), own_bus.stored_batch() as stored:
                for i in range(3):
                    await stored.publish(subject, b"{}", {"Nats-Msg-Id": f"late-{i}"})
        next_batch = asyncio.create_task(waits_for_nothing())
        await asyncio.sleep(0.1)  # it has published (into the client's buffer)
    with pytest.raises(TimeoutError):
        await next_batch
    await listener.unsubscribe()
    async with asyncio.timeout(20), own_bus.stored_batch() as stored:
        await stored.publish(subject, b"{}", {"Nats-Msg-Id": "next"})
    assert [e["msg_id"] for e in await support.stream_events(own_bus)] == ["late-0", "late-1", "late-2", "next"]


async def _pull_waiting(bus: Bus, stream: str, durable: str) -> bool:
    return (await bus.js.consumer_info(stream, durable)).num_waiting > 0


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def quick_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    """The api's admission deadline and attempt, shortened so a test waits them out quickly."""
    monkeypatch.setattr(admitting, "ADMISSION_TIMEOUT_S", 2.0)
    monkeypatch.setattr(admitting, "ATTEMPT_S", 0.5)


async def test_the_api_asks_admission_again_only_when_a_repeat_is_the_same_job(
    own_bus: Bus, quick_admission: None
) -> None:
    """An admission that answers only the second time it is asked (the first was lost to a
    reconnect): a keyed request is asked again and answered; a keyless one is asked once."""
    heard: list[str | None] = []

    async def answer_the_second(event: JobSubmitted) -> AdmissionResult | None:
        heard.append(event.key)
        if heard.count(event.key) < 2:
            return None  # no reply: lost
        return AdmissionResult(outcome="rejected", error=ErrorDetail(code="unsatisfiable", message="no pool p"))

    sub = await own_bus.subscribe(own_bus.subjects.submit_request, answer_the_second)
    await own_bus.flush()
    try:
        result = await admit(own_bus, JobSpec(pool="p", key="k1"))
        assert result.outcome == "rejected" and heard == ["k1", "k1"]
        heard.clear()
        with pytest.raises(NoAnswer):
            await admit(own_bus, JobSpec(pool="p"))
        assert heard == [None]  # asked once: it may have been admitted
    finally:
        await sub.unsubscribe()
