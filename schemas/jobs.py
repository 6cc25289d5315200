"""The job spec producers send, and the job as the system reports it.

The spec is the same JSON through every door (HTTP body, JetStream `orch.v1.jobs.submit`,
core request `orch.v1.jobs.submit.req`), so a producer in any language needs nothing else.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import ConfigDict, Field, StringConstraints, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from schemas.base import Body, Integer, Model
from schemas.storable import NO_NUL, JsonObject, StorableJsonSchema, storable_json

# Pool names and labels become NATS subject tokens and CLI arguments: keep them to a safe alphabet.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=\-]{0,127}$")]
# Postgres text cannot hold NUL (\u0000): refused here, naming the field (schemas/storable.py).
Key = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]
# NUL is refused for the whole payload at once (storable_json); this says so in the documents.
_Text = Annotated[str, Field(json_schema_extra={"pattern": NO_NUL})]


def _command(value: Any, handler: ValidatorFunctionWrapHandler) -> list[str]:
    try:
        return handler(value)
    except ValidationError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise PydanticCustomError(
            "command",
            'must be a non-empty list of strings, the program and its arguments (e.g. ["echo", "hi"]), not {shown}',
            {"shown": shown},
        ) from None


class JobPayload(TypedDict, total=False):
    """A job's payload: opaque JSON for its runner. The bundled runner reads these three fields;
    any other field is the job's own. A payload without `command` is a reservation (seed 003)."""

    __pydantic_config__ = ConfigDict(extra="allow", strict=True)
    command: Annotated[list[_Text], Field(min_length=1), WrapValidator(_command)]
    env: JsonObject
    cwd: Annotated[_Text, Field(min_length=1)]


class JobState(StrEnum):
    queued = "queued"
    assigned = "assigned"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.timed_out, JobState.cancelled, JobState.expired}
)


class JobSpec(Body):
    pool: Name
    labels: list[Label] = Field(default_factory=list, max_length=64)
    plan: Name | None = None
    tenant: Name | None = None
    priority: Integer = Field(default=0, ge=-1_000_000, le=1_000_000)
    key: Key | None = None
    payload: Annotated[JobPayload, storable_json, StorableJsonSchema] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    max_attempts: Integer = Field(default=3, ge=1, le=100)
    abandon_after_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    # Taints this job tolerates: a tainted runner takes only jobs tolerating all its taints (seed 002).
    tolerations: list[Label] = Field(default_factory=list, max_length=64)

    def canonical(self) -> dict[str, Any]:
        """The spec as compared for idempotency: same key + same canonical spec = same job."""
        data = self.model_dump(mode="json", exclude={"key"})
        data["labels"] = sorted(set(data["labels"]))
        data["tolerations"] = sorted(set(data["tolerations"]))
        return data


class JobView(Model):
    id: UUID
    key: str
    state: JobState
    pool: str
    labels: list[str]
    plan: str | None
    tenant: str | None
    priority: int
    payload: dict[str, Any]
    timeout_s: float | None
    max_attempts: int
    abandon_after_s: float | None
    tolerations: list[str]
    attempt: int
    runner_id: str | None
    exit_code: int | None
    reason: str | None
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobView:
        """From a stored job row (a mapping with at least these fields)."""
        return cls.model_validate({name: row[name] for name in cls.model_fields})
