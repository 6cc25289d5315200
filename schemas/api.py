"""Bodies of the HTTP API that are not events: what a take answers, runners as the API shows them.

The same models validate requests and render responses, and `/openapi.json` is generated from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
