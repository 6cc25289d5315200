"""Every endpoint the client calls, described once: its method, path, query and body, and the
model of its answer. The client sends them (`Client.send`); the CLI also prints an answer as the
API sent it (`Client.send_json`, for `--json`) and parses it with the same call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote
from uuid import UUID

from pydantic import BaseModel

from schemas.api import (
    JobCreated,
    JobDetail,
    JobList,
    LeaderView,
    PoolChanged,
    PoolDeleted,
    PoolList,
    RunnerList,
    Stats,
)
from schemas.jobs import JobSpec, JobView
from schemas.pools import PoolConfig, PoolView
from schemas.rate_limits import RateLimitConfig, RateLimitDeleted, RateLimitList, RateLimitView
from schemas.schedules import ScheduleDeleted, ScheduleList, ScheduleSpec, ScheduleView

A = TypeVar("A", bound=BaseModel)
JobId = UUID | str


@dataclass(frozen=True)
class Call(Generic[A]):
    method: str
    path: str
    answer: type[A]
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-able

    def parse(self, raw: Any) -> A:
        # Fields this client does not know (a newer server's) are ignored, not an error; not
        # strict: an answer's timestamps are JSON strings (a body model is strict for clients).
        return self.answer.model_validate(raw, extra="ignore", strict=False)


def _segment(value: JobId) -> str:
    return quote(str(value), safe="")


def _given(**params: object) -> dict[str, str]:
    return {name: str(value) for name, value in params.items() if value is not None}


def submit(spec: JobSpec) -> Call[JobCreated]:
    # Only what the caller set: the server fills in the defaults, as for any other producer.
    return Call("POST", "/v1/jobs", JobCreated, body=spec.model_dump(mode="json", exclude_unset=True))


def get_job(job_id: JobId) -> Call[JobDetail]:
    return Call("GET", f"/v1/jobs/{_segment(job_id)}", JobDetail)


def list_jobs(
    *, pool: str | None = None, state: str | None = None, key: str | None = None, limit: int | None = None
) -> Call[JobList]:
    return Call("GET", "/v1/jobs", JobList, _given(pool=pool, state=state, key=key, limit=limit))


def logs_path(job_id: JobId) -> str:
    """`GET` it for the job's output (text, streamed: not a JSON call)."""
    return f"/v1/jobs/{_segment(job_id)}/logs"


def cancel_job(job_id: JobId) -> Call[JobView]:
    return Call("DELETE", f"/v1/jobs/{_segment(job_id)}", JobView)


def list_pools() -> Call[PoolList]:
    return Call("GET", "/v1/pools", PoolList)


def get_pool(name: str) -> Call[PoolView]:
    return Call("GET", f"/v1/pools/{_segment(name)}", PoolView)


def put_pool(name: str, config: PoolConfig | Mapping[str, Any]) -> Call[PoolChanged]:
    """A mapping is sent as given: what it omits takes its default, and the API names a bad field."""
    body = config.model_dump(mode="json") if isinstance(config, PoolConfig) else dict(config)
    return Call("PUT", f"/v1/pools/{_segment(name)}", PoolChanged, body=body)


def patch_pool(name: str, fields: Mapping[str, Any]) -> Call[PoolChanged]:
    return Call("PATCH", f"/v1/pools/{_segment(name)}", PoolChanged, body=dict(fields))


def delete_pool(name: str) -> Call[PoolDeleted]:
    return Call("DELETE", f"/v1/pools/{_segment(name)}", PoolDeleted)


def list_runners(*, limit: int | None = None, after: str | None = None) -> Call[RunnerList]:
    """A page of runners in id order; `after`: the `next` of the page before."""
    return Call("GET", "/v1/runners", RunnerList, _given(limit=limit, after=after))


def get_leader() -> Call[LeaderView]:
    return Call("GET", "/v1/leader", LeaderView)


def get_stats() -> Call[Stats]:
    return Call("GET", "/v1/stats", Stats)


def list_schedules() -> Call[ScheduleList]:
    return Call("GET", "/v1/schedules", ScheduleList)


def get_schedule(name: str) -> Call[ScheduleView]:
    return Call("GET", f"/v1/schedules/{_segment(name)}", ScheduleView)


def put_schedule(name: str, spec: ScheduleSpec) -> Call[ScheduleView]:
    # Only what the caller set, as for a job: the server fills in the defaults.
    return Call(
        "PUT", f"/v1/schedules/{_segment(name)}", ScheduleView, body=spec.model_dump(mode="json", exclude_unset=True)
    )


def delete_schedule(name: str) -> Call[ScheduleDeleted]:
    return Call("DELETE", f"/v1/schedules/{_segment(name)}", ScheduleDeleted)


def list_rate_limits() -> Call[RateLimitList]:
    return Call("GET", "/v1/rate-limits", RateLimitList)


def get_rate_limit(key: str) -> Call[RateLimitView]:
    return Call("GET", f"/v1/rate-limits/{_segment(key)}", RateLimitView)


def put_rate_limit(key: str, config: RateLimitConfig) -> Call[RateLimitView]:
    return Call("PUT", f"/v1/rate-limits/{_segment(key)}", RateLimitView, body=config.model_dump(mode="json"))


def delete_rate_limit(key: str) -> Call[RateLimitDeleted]:
    return Call("DELETE", f"/v1/rate-limits/{_segment(key)}", RateLimitDeleted)
