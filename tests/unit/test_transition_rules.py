"""Why a transition is refused (orchestrator/store/transitions), decided from the row alone: the
transitions against Postgres are tests/integration/test_transitions.py."""

from __future__ import annotations

from uuid import uuid4

from orchestrator.store import End, Job, Start
from orchestrator.store.transitions import refusal
from schemas.jobs import JobState


def test_a_refused_report_says_whether_it_is_a_duplicate_or_stale() -> None:
    job_id = uuid4()
    running = Job(id=job_id, pool="p", state="running", attempt=2, runner_id="r1")
    assert refusal("start", Start(job_id, "r1", 2), running)[0] == "duplicate"
    assert refusal("start", Start(job_id, "r2", 2), running) == (
        "stale",
        f"job {job_id} attempt 2 is not r2's to start: it is running, attempt 2 on r1",
    )
    ended = Job(id=job_id, pool="p", state="succeeded", attempt=2, runner_id="r1")
    assert refusal("finish", End(job_id, "r1", 2, JobState.succeeded), ended)[0] == "duplicate"
    assert refusal("finish", End(job_id, "r1", 1, JobState.succeeded), ended)[0] == "stale"  # an older attempt
    assert refusal("finish", End(job_id, "r1", 1, JobState.succeeded), None) == ("stale", f"no job {job_id}")
