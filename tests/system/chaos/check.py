"""The chaos run's invariant checker: the database and the jobs' execution log, after the fact.

Inputs: the jobs table, every state transition (recorded by the trigger of
`tests/history.py`, which the chaos run installs), the execution log of `job.py`, and each pool's cap. Each
invariant yields a list of violations, human-readable; a correct run has none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests import history

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}


@dataclass
class Execution:
    """One run of a job's command (one process), from its log lines."""

    job_id: str
    runner: str
    attempt: int
    pid: int
    pool: str
    first_ns: int
    last_ns: int
    ended: bool = False


def parse_log(lines: Iterable[str]) -> list[Execution]:
    runs: dict[tuple[str, int], Execution] = {}
    for line in lines:
        t, event, job_id, runner, attempt, pid, pool = line.split()
        key = (job_id, int(pid))
        run = runs.get(key)
        if run is None:
            run = runs[key] = Execution(job_id, runner, int(attempt), int(pid), pool, int(t), int(t))
        run.first_ns, run.last_ns = min(run.first_ns, int(t)), max(run.last_ns, int(t))
        run.ended = run.ended or event == "end"
    return list(runs.values())


def peak_overlap(intervals: Iterable[tuple[int, int]]) -> int:
    """The most intervals that share an instant (an end before a start at the same instant)."""
    intervals = list(intervals)
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    peak = n = 0
    for _, d in edges:
        n += d
        peak = max(peak, n)
    return peak


def check(
    *,
    submitted: set[str],
    jobs: list[dict[str, Any]],
    transitions: list[dict[str, Any]],
    executions: list[Execution],
    caps: dict[str, int],
) -> dict[str, list[str]]:
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tr in sorted(transitions, key=lambda tr: tr["seq"]):
        by_job[str(tr["job_id"])].append(tr)
    runs: dict[str, list[Execution]] = defaultdict(list)
    for run in executions:
        runs[run.job_id].append(run)
    return {
        "final_exactly_once": _final_exactly_once(submitted, jobs, by_job),
        "never_on_two_runners_at_once": _never_twice_at_once(runs),
        "attempts_counted_once": _attempts_counted_once(jobs, by_job, runs),
        "cap_never_exceeded": _cap_never_exceeded(transitions, executions, caps),
    }


def _final_exactly_once(
    submitted: set[str], jobs: list[dict[str, Any]], by_job: dict[str, list[dict[str, Any]]]
) -> list[str]:
    out = [f"lost: {key} was submitted and never admitted" for key in submitted - {j["key"] for j in jobs}]
    for job in jobs:
        if job["state"] not in FINAL:
            out.append(f"stuck: {job['id']} is {job['state']}")
        finals = [tr["new_state"] for tr in by_job[str(job["id"])] if tr["new_state"] in FINAL]
        if len(finals) != 1:
            out.append(f"{job['id']} reached a final state {len(finals)} times: {finals}")
    return out


def _never_twice_at_once(runs: dict[str, list[Execution]]) -> list[str]:
    out = []
    for job_id, executions in runs.items():
        ordered = sorted(executions, key=lambda r: r.first_ns)
        latest = ordered[0]  # of those started so far, the one that stopped last
        for run in ordered[1:]:
            if run.first_ns <= latest.last_ns:
                out.append(
                    f"{job_id}: attempt {run.attempt} on {run.runner} started "
                    f"{(latest.last_ns - run.first_ns) / 1e6:.0f} ms before attempt {latest.attempt} "
                    f"on {latest.runner} (pid {latest.pid}) stopped"
                )
            latest = max(latest, run, key=lambda r: r.last_ns)
    return out


def _attempts_counted_once(
    jobs: list[dict[str, Any]], by_job: dict[str, list[dict[str, Any]]], runs: dict[str, list[Execution]]
) -> list[str]:
    out = []
    for job in jobs:
        job_id = str(job["id"])
        started = [(tr["attempt"], tr["runner_id"]) for tr in by_job[job_id] if tr["new_state"] == "running"]
        if [a for a, _ in started] != list(range(1, job["attempt"] + 1)):
            out.append(
                f"{job_id}: attempts started {[a for a, _ in started]}, but its attempt count is {job['attempt']}"
            )
        if job["attempt"] > job["max_attempts"]:
            out.append(f"{job_id}: attempt {job['attempt']} of max {job['max_attempts']}")
        attempts = [run.attempt for run in runs.get(job_id, [])]
        if len(attempts) != len(set(attempts)):
            out.append(f"{job_id}: an attempt executed more than once: {sorted(attempts)}")
        for run in runs.get(job_id, []):
            if (run.attempt, run.runner) not in started:
                out.append(f"{job_id}: attempt {run.attempt} ran on {run.runner} without being started there")
        if job["state"] == "succeeded" and not any(
            run.ended and run.attempt == job["attempt"] for run in runs.get(job_id, [])
        ):
            out.append(f"{job_id}: succeeded in attempt {job['attempt']}, which never ran to its end")
    return out


def _cap_never_exceeded(
    transitions: list[dict[str, Any]], executions: list[Execution], caps: dict[str, int]
) -> list[str]:
    out = []
    # From the execution log: commands running at once.
    for pool, cap in caps.items():
        peak = peak_overlap((r.first_ns, r.last_ns) for r in executions if r.pool == pool)
        if 0 <= cap < peak:
            out.append(f"{pool}: {peak} commands ran at once (execution log), cap {cap}")
    # From the database's history: jobs assigned or running at once.
    for pool, peak in history.in_flight_peaks(transitions).items():
        cap = caps.get(pool, -1)
        if 0 <= cap < peak:
            out.append(f"{pool}: {peak} jobs in flight at once (transition history), cap {cap}")
    return out
