"""Runners and Postgres agree (issue 16), decided in Postgres: a heartbeat reconciles what its
runner holds with what the rows say, a running job past its timeout is ended by the server, and
a cancel of a running job is a row its runner is told about until it confirms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from orchestrator.store import End, Heartbeat, Start, Store
from schemas.jobs import JobState
from tests import factories


async def running(store: Store, runner_id: str = "r1", n: int = 1, **job: object) -> list[UUID]:
    """`n` jobs running on `runner_id` (a fresh pool and runner)."""
    await factories.pool(store)
    await factories.runner(store, runner_id, slots=n)
    await factories.queue(store, n, **job)
    claimed = (await store.transitions.claim("default", n)).assignments
    starts = [Start(a["id"], runner_id, a["attempt"] + 1) for a in claimed]
    return [job.id for job in await store.transitions.start_many(starts)]


async def state_of(store: Store, job_id: UUID) -> str:
    job = await store.job_get(job_id)
    assert job is not None
    return job["state"]


async def test_a_job_its_runner_let_go_is_released_once_an_answered_heartbeat_is_followed_by_another(
    store: Store,
) -> None:
    """A single heartbeat without the job proves nothing (it may have been composed before the
    runner took it): the job is marked. Only a heartbeat composed after the marking one was
    answered, and still without it, releases it."""
    (job_id,) = await running(store)
    first = await store.transitions.heartbeat(Heartbeat("r1", [], seq=100, acked_seq=99))
    assert first is not None and first.released == []
    # Composed before the reply to 100 arrived (it acknowledges only 99): nothing yet.
    assert (await store.transitions.heartbeat(Heartbeat("r1", [], seq=101, acked_seq=99))).released == []  # type: ignore[union-attr]
    assert await state_of(store, job_id) == "running"
    # A late heartbeat (older than one seen) reconciles nothing, whatever it acknowledges.
    assert (await store.transitions.heartbeat(Heartbeat("r1", [], seq=50, acked_seq=100))).released == []  # type: ignore[union-attr]
    released = await store.transitions.heartbeat(Heartbeat("r1", [], seq=102, acked_seq=100))
    assert released is not None and [job.id for job in released.released] == [job_id]
    job = await store.job_get(job_id)
    assert job is not None and (job["state"], job["runner_id"], job["attempt"]) == ("queued", None, 1)


async def test_a_job_listed_again_loses_its_mark_and_is_kept(store: Store) -> None:
    (job_id,) = await running(store)
    await store.transitions.heartbeat(Heartbeat("r1", [], seq=10, acked_seq=9))
    await store.transitions.heartbeat(Heartbeat("r1", [job_id], seq=11, acked_seq=10))  # it had it after all
    found = await store.transitions.heartbeat(Heartbeat("r1", [], seq=12, acked_seq=11))  # marks it again
    assert found is not None and found.released == []
    assert await state_of(store, job_id) == "running"


async def test_a_stopped_runners_notice_releases_only_the_attempts_it_killed_however_late(store: Store) -> None:
    """The notice names attempts (job, attempt): one that ended meanwhile, one the job never had,
    and, once the runner restarted and took a job again, the older attempt of it, are left alone."""
    killed, other, reported = await running(store, n=3)
    await store.transitions.finish_many([End(reported, "r1", 1, JobState.succeeded, 0)])  # its report came first
    released = await store.transitions.runner_stopped("r1", [(killed, 1), (other, 2), (reported, 1)])
    assert [job.id for job in released] == [killed]
    assert [await state_of(store, j) for j in (killed, other, reported)] == ["queued", "running", "succeeded"]
    assert await store.transitions.runner_stopped("r1", [(killed, 1)]) == []  # told again: nothing more
    # Its backoff over, the job goes to the same runner id again (restarted) as attempt 2: the
    # old notice, arriving only now, does not touch it.
    async with store.connection() as conn:
        await conn.execute("UPDATE jobs SET not_before = NULL WHERE id = $1", killed)
    [again] = (await store.transitions.claim("default", 1)).assignments
    assert again["id"] == killed and await store.transitions.start_many([Start(killed, "r1", 2)])
    assert await store.transitions.runner_stopped("r1", [(killed, 1)]) == []
    job = await store.job_get(killed)
    assert job is not None and (job["state"], job["attempt"]) == ("running", 2)


async def test_a_released_job_without_attempts_left_fails_and_a_cancelled_one_ends_cancelled(store: Store) -> None:
    last, cancelled = await running(store, n=2, max_attempts=1)
    await store.transitions.cancel(cancelled)
    await store.transitions.heartbeat(Heartbeat("r1", [], seq=1, acked_seq=0))
    found = await store.transitions.heartbeat(Heartbeat("r1", [], seq=2, acked_seq=1))
    assert found is not None
    assert {job.id: (job.state, job.reason) for job in found.released} == {
        last: ("failed", "runner_lost"),
        cancelled: ("cancelled", "cancelled"),
    }


async def test_the_reply_names_what_the_runner_must_stop(store: Store) -> None:
    mine, cancelled, ended = await running(store, n=3)
    await store.transitions.cancel(cancelled)
    await store.transitions.finish_held(ended, JobState.succeeded, 0, "finished by its client")
    stranger = uuid4()
    found = await store.transitions.heartbeat(Heartbeat("r1", [mine, cancelled, ended, stranger], seq=1))
    assert found is not None
    assert {(s.job_id, s.why) for s in found.stop} == {
        (cancelled, "cancel_requested"),
        (ended, "not_yours"),
        (stranger, "not_yours"),
    }
    # A cancel stays pending until the runner reports the end, which confirms it.
    again = await store.transitions.heartbeat(Heartbeat("r1", [mine, cancelled], seq=2))
    assert again is not None and [s.job_id for s in again.stop] == [cancelled]
    await store.transitions.finish_many([End(cancelled, "r1", 1, JobState.cancelled)])
    confirmed = await store.transitions.heartbeat(Heartbeat("r1", [mine], seq=3))
    assert confirmed is not None and confirmed.stop == []


async def test_the_server_ends_a_job_running_past_its_timeout_and_its_runner_is_told(store: Store) -> None:
    (job_id,) = await running(store, timeout_s=30)
    now = datetime.now(UTC)
    assert await store.transitions.time_out(10, now=now + timedelta(seconds=39)) == []  # within the margin
    (ended,) = await store.transitions.time_out(10, now=now + timedelta(seconds=41))
    assert (ended.id, ended.state) == (job_id, "timed_out")
    found = await store.transitions.heartbeat(Heartbeat("r1", [job_id], seq=1))
    assert found is not None and [(s.job_id, s.why) for s in found.stop] == [(job_id, "not_yours")]
    # The runner's own report, arriving later, is a duplicate of the recorded end: nothing changes.
    assert await store.transitions.finish_many([End(job_id, "r1", 1, JobState.timed_out)]) == []
