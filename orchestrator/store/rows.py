"""Typed rows: what the store hands back, frozen, instead of `dict[str, Any]`.

`Job` is a job row as the transitions return it; `from_record` takes the columns a query
returned (a query may return fewer: those left out are None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    pool: str
    state: str
    attempt: int = 0
    key: str | None = None
    labels: list[str] | None = None
    plan: str | None = None
    tenant: str | None = None
    priority: int = 0
    payload: dict[str, Any] | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    abandon_after_s: float | None = None
    tolerations: list[str] | None = None
    runner_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    trace_context: dict[str, str] | None = None
    created_at: datetime | None = None
    assigned_at: datetime | None = None
    acked_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    taken_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    shape_id: int | None = None
    # Not columns: what the transition changed, from RETURNING old.* (PostgreSQL 18).
    previous_runner_id: str | None = None
    acked_now: bool = False

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Job:
        return cls(**{name: record[name] for name in _JOB_FIELDS if name in record})

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __getitem__(self, name: str) -> Any:  # read like the mapping rows the views accept
        return getattr(self, name)


_JOB_FIELDS = tuple(f.name for f in fields(Job))
