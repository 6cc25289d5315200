"""Typed rows: what the store hands back, frozen, instead of `dict[str, Any]`.

`Job` is a job row, `Runner` a runner row; `from_record` takes the columns a query returned (a
query may return fewer: those left out take their defaults). Rows also read like mappings
(`row["state"]`, `row.get(...)`, `"busy" in row`), which the views built from rows rely on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Self
from uuid import UUID


class Row:
    """A typed row made from a query's record, read like a mapping too."""

    __slots__ = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        # By the record's columns (a hot edge returns a handful), not the row type's thirty-odd fields.
        names = _field_names(cls)
        return cls(**{name: value for name, value in record.items() if name in names})

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and hasattr(self, name)


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class Job(Row):
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
    spec: dict[str, Any] | None = None
    not_before: datetime | None = None
    token_hash: bytes | None = None
    claim_epoch: int | None = None
    last_polled_at: datetime | None = None
    unheld_seq: int | None = None
    shape_id: int | None = None
    retry: dict[str, Any] | None = None  # the retry policy (schemas.jobs.RetryPolicy, as JSON; None: the default)
    attempts: list[dict[str, Any]] | None = None  # every attempt ended (schemas.jobs.Attempt, as JSON)
    run_at: datetime | None = None  # a delayed job: when it was first due
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    on_conflict: str | None = None
    rate_limit_key: str | None = None
    # Not columns: what the transition changed, from RETURNING old.* (PostgreSQL 18).
    previous_runner_id: str | None = None
    acked_now: bool = False


@dataclass(frozen=True, slots=True)
class Runner(Row):
    id: str
    pool: str
    state: str
    labels: list[str] = field(default_factory=list)
    slots: int = 0
    taints: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    last_seen_at: datetime | None = None
    heartbeat_seq: int = 0
    busy: int | None = None  # not a column: jobs assigned or running on it (listings)
