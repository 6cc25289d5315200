"""Schedules (issue 23): a job spec submitted on a cron, in a time zone. The body of `PUT
/v1/schedules/{name}` and what the API shows of a schedule.

Whether `cron` parses is checked by the API with the cron library (orchestrator/cron.py: this
package imports only pydantic), a 422 naming the field like any other refusal here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StringConstraints, ValidatorFunctionWrapHandler, WrapValidator, field_validator

from schemas.base import Body, Model
from schemas.jobs import JobSpec, JobState, Name
from schemas.payload import STORED
from schemas.storable import NO_NUL

CronText = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL)]
ZoneName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")]
Overlap = Literal["skip", "allow", "cancel_previous"]
CatchUp = Literal["none", "latest", "all"]


class ScheduleSpec(Body):
    """`PUT /v1/schedules/{name}`: create or replace. Omitted fields take these defaults."""

    cron: CronText = Field(
        description="5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; "
        "cronsim's syntax (Debian cron's, with L, W and #)"
    )
    timezone: ZoneName = Field(default="UTC", description="the IANA time zone the cron is read in")
    job: JobSpec = Field(description="the job each fire submits; its key is the schedule's and the fire time's")
    overlap: Overlap = Field(
        default="skip",
        description="while a job this schedule fired is still queued, assigned or running: skip the fire, "
        "allow it, or cancel_previous (cancel those jobs, then fire)",
    )
    catch_up: CatchUp = Field(
        default="latest",
        description="fire times missed while nothing could fire them: none, the latest once, or all "
        "(at most the 100 most recent)",
    )
    paused: bool = Field(default=False, description="nothing fires; unpaused, it resumes from then (no catch-up)")

    @field_validator("job")
    @classmethod
    def _fired_spec(cls, job: JobSpec) -> JobSpec:
        # Each fire's key is derived from the schedule and the fire time: that is what makes a
        # fire idempotent. A fixed run_at would be one moment for every fire.
        if job.key is not None:
            raise ValueError("a scheduled job has no key of its own: each fire's is schedule:<name>:<fire time>")
        if job.run_at is not None:
            raise ValueError("a scheduled job cannot have a run_at (use delay_s to start it after each fire)")
        return job

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # stdlib; cheap after the first

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value


class LastJob(Model):
    id: UUID
    state: JobState | None = Field(description="null once the job is gone (pruned with its pool or by retention)")


def _as_stored(value: Any, handler: ValidatorFunctionWrapHandler) -> JobSpec:
    """A schedule's job as it was stored: a rule added since (payload.env's) refuses it at its
    next fire, with the reason in `last_skip_reason`, not here, where it must be seen to be fixed."""
    if isinstance(value, dict):
        return JobSpec.model_validate(value, context=STORED)
    return handler(value)  # type: ignore[no-any-return]


class ScheduleView(Model):
    """A schedule as `GET /v1/schedules/{name}` shows it: its spec, when it fires next, and what it did last."""

    name: Name
    cron: str
    timezone: str
    job: Annotated[JobSpec, WrapValidator(_as_stored)]
    overlap: Overlap
    catch_up: CatchUp
    paused: bool
    created_at: datetime
    updated_at: datetime
    next_fire_at: datetime | None = Field(description="the next fire time (null while paused)")
    last_fire_at: datetime | None = Field(description="the scheduled time of the last fire")
    last_job: LastJob | None = Field(description="the job the last fire submitted")
    last_skip_at: datetime | None = Field(description="the last fire time that submitted nothing")
    last_skip_reason: str | None = Field(
        description="why: overlap (a previous job was live), missed (catch_up), or the admission's refusal "
        "(unsatisfiable, overloaded, ...) with its message"
    )

    @classmethod
    def from_row(cls, row: Any) -> ScheduleView:
        last_job = None
        if row["last_job_id"] is not None:
            last_job = LastJob(id=row["last_job_id"], state=row["last_job_state"])
        fields = {name: row[name] for name in cls.model_fields if name not in ("job", "last_job", "next_fire_at")}
        return cls.model_validate(
            {
                **fields,
                "job": row["job"],
                "last_job": last_job,
                "next_fire_at": None if row["paused"] else row["next_fire_at"],
            }
        )


class ScheduleList(Model):
    schedules: list[ScheduleView]


class ScheduleDeleted(Model):
    """`DELETE /v1/schedules/{name}`: it fires no more; jobs it already submitted are left as they are."""

    name: Name
    deleted: bool
