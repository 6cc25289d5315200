"""Bodies of the HTTP API that are not events: what a take answers, runners as the API shows them.

The same models validate requests and render responses, and `/openapi.json` is generated from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from schemas.base import Model
from schemas.jobs import JobView


class RunnerView(Model):
    """A registered runner: what it offers and its registration metadata (hostname, ...)."""

    id: str
    pool: str
    labels: list[str]
    slots: int
    taints: list[str]
    state: str = Field(description="active | draining | suspect | lost")
    metadata: dict[str, Any]
    created_at: datetime
    last_seen_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> RunnerView:
        return cls.model_validate({name: row[name] for name in cls.model_fields})


class Taken(Model):
    """`POST /v1/jobs/{id}/take` once the job holds a runner: the job and the runner it holds."""

    job: JobView
    runner: RunnerView


class Constraint(Model):
    """One thing holding a queued job back, and the numbers behind it."""

    reason: Literal["no_leader", "paused", "capacity_unknown", "no_free_runner", "at_capacity", "backoff"]
    message: str
    numbers: dict[str, int | float | str | None] = Field(default_factory=dict)


class BlockedBy(Model):
    """Why a queued job is not running yet (`GET /v1/jobs/{id}` while it waits)."""

    reason: str = Field(
        description="the first constraint's reason; with none, `queued_behind` (jobs go first) or `dispatching`"
    )
    message: str
    constraints: list[Constraint] = Field(description="everything holding it back, most fundamental first")
    position: int = Field(description="queued jobs competing for the same slots that go before it (0: next)")
    competing: int = Field(description="queued jobs competing for the same slots, this one included")
    drained_last_minute: int = Field(description="jobs of its pool that ended in the last minute")
    estimated_wait_s: float | None = Field(
        description="from the recent drain rate; null when it depends on an operator or an outage, or nothing drained"
    )


class JobDetail(JobView):
    """`GET /v1/jobs/{id}`: the job, and while it waits why (`blocked_by`)."""

    blocked_by: BlockedBy | None = None
