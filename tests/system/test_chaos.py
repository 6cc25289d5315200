"""The chaos suite (issue 11): every service process, NATS and Postgres killed and restarted
under load, then every guarantee checked (tests/system/chaos: run.py, check.py); and the
checker itself, shown to catch each kind of violation."""

from __future__ import annotations

import uuid

import pytest

from tests.system.chaos import check as chaos_check
from tests.system.chaos.check import Execution
from tests.system.chaos.run import KINDS, POOL, Config, chaos_system

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CONFIG = Config(seconds=25, rounds=1, seed=11, rate=2.5)


async def test_no_guarantee_breaks_under_chaos() -> None:
    async with chaos_system(CONFIG) as chaos:
        results = await chaos.run()
    print(f"\nchaos: {results}")
    assert results["violations"] == dict.fromkeys(results["violations"], 0), results["violation_details"]
    assert len(results["violations"]) == 7
    assert all(results["kills"][kind] >= 1 for kind in KINDS), results["kills"]
    assert 0 < results["jobs_submitted"] == results["jobs_admitted"] == results["jobs_finished"]
    assert results["not_succeeded"] == {}  # no fault of the system ever fails a job
    # The cap bound: the final burst filled it, and nothing ever went past it.
    assert results["in_flight_peak_logged"][POOL] == CONFIG.cap
    assert results["in_flight_peak_sampled"][POOL] == CONFIG.cap


def _job(state: str = "succeeded", attempt: int = 1) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "key": f"k-{uuid.uuid4()}",
        "pool": POOL,
        "state": state,
        "attempt": attempt,
        "max_attempts": 3,
    }


def _history(job: dict[str, object], *states: tuple[str, int, str | None]) -> list[dict[str, object]]:
    old: str | None = None
    out = []
    for seq, (new, attempt, runner) in enumerate(states):
        out.append(
            {
                "seq": seq,
                "job_id": job["id"],
                "pool": POOL,
                "old_state": old,
                "new_state": new,
                "attempt": attempt,
                "runner_id": runner,
            }
        )
        old = new
    return out


def _run(job: dict[str, object], runner: str, attempt: int, first: int, last: int) -> Execution:
    return Execution(str(job["id"]), runner, attempt, pid=first, pool=POOL, first_ns=first, last_ns=last, ended=True)


def test_the_checker_catches_every_kind_of_violation() -> None:
    clean = _job()
    twice = _job(attempt=2)  # requeued after attempt 1, whose process went on running
    stuck = _job(state="running")
    history = [
        *_history(clean, ("queued", 0, None), ("assigned", 0, "r1"), ("running", 1, "r1"), ("succeeded", 1, "r1")),
        *_history(
            twice,
            ("queued", 0, None),
            ("running", 1, "r1"),
            ("queued", 1, None),
            ("running", 2, "r2"),
            ("succeeded", 2, "r2"),
            ("failed", 2, "r2"),
        ),
        *_history(stuck, ("queued", 0, None), ("running", 1, "r3")),
    ]
    runs = [
        _run(clean, "r1", 1, 0, 10),
        _run(twice, "r1", 1, 0, 50),
        _run(twice, "r2", 2, 20, 30),
        _run(twice, "r3", 2, 5, 45),  # the same attempt again, on a runner it never started on
    ]
    found = chaos_check.check(
        submitted={clean["key"], twice["key"], stuck["key"], "never-admitted"},  # type: ignore[arg-type]
        jobs=[clean, twice, stuck],
        transitions=history,
        executions=runs,
        caps={POOL: 2},
    )
    assert len(found["final_exactly_once"]) == 4  # lost, stuck (and so never final), finished twice
    assert len(found["never_on_two_runners_at_once"]) == 2
    assert len(found["attempts_counted_once"]) == 2  # attempt 2 twice; once where it never started
    assert len(found["cap_never_exceeded"]) == 2  # three commands at once, three jobs in flight at once
    clean_only = chaos_check.check(
        submitted={clean["key"]},  # type: ignore[arg-type]
        jobs=[clean],
        transitions=history[:4],
        executions=runs[:1],
        caps={POOL: 1},
    )
    assert not any(clean_only.values()), clean_only
