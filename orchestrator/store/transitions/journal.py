"""One log line per job transition, for operators: the job, its pool, its runner and what became
of it (admitted, assigned, started, finished with its state and exit code, requeued with why,
cancelled, expired), written once the transition committed, from the rows the edge returned
(no query of its own).

At INFO by default; `ORCH_LOG_TRANSITIONS=debug` lowers them for high rates: a line costs some
40 us of CPU (Python's logging and the JSON formatter; a job's life is four lines or more), a
level not logged one check per edge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from orchestrator import telemetry

Level = Literal["info", "debug"]

# What a job in this state has just done (the verb of its line), for the edges whose jobs end up
# in different states (a release requeues one job and fails another).
_VERB = {
    "queued": "requeued",
    "assigned": "assigned",
    "running": "started",
    "cancelled": "cancelled",
    "expired": "expired",
}

_log = telemetry.get_logger("transitions")


class Journal:
    def __init__(self, level: Level = "info") -> None:
        self.level = logging.DEBUG if level == "debug" else logging.INFO

    def record(self, jobs: Sequence[Mapping[str, Any]], *, verb: str | None = None, why: str | None = None) -> None:
        """A line per job of a committed edge: `verb` what they did (default: what their new state
        says), `why` they were requeued."""
        if not jobs or not _log.isEnabledFor(self.level):
            return
        for job in jobs:
            self._line(job, verb or _VERB.get(job["state"], "finished"), why)

    def _line(self, job: Mapping[str, Any], verb: str, why: str | None) -> None:
        state = job["state"]
        runner = job.get("previous_runner_id") or job.get("runner_id")
        fields: dict[str, Any] = {"pool": job["pool"], "runner": runner}
        if verb in ("assigned", "started"):
            # While assigned, `attempt` counts the attempts made; the assignment is the next one.
            fields["attempt"] = job.get("attempt", 0) + (state == "assigned")
        elif verb == "requeued":
            fields["why"] = why or job.get("reason")  # a retried end says its outcome there
        elif verb in ("finished", "cancelled", "expired"):
            fields.update(state=state, exit_code=job.get("exit_code"), reason=job.get("reason"))
        shown = " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
        job_id = str(job["id"])
        extra = {"job_id": job_id, "pool": job["pool"], "runner_id": runner, "action": verb}
        _log.log(self.level, "job %s %s: %s", job_id, verb, shown, extra=extra)
