"""The envelope every event shares: `type`, `v`, `id`, `at`.

Models are frozen and reject unknown fields on input: a producer's typo is an error that names
the field, never a silently ignored option. A breaking change is a new `v`, published beside the
old one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.ids import uuid7
from schemas.storable import Int32


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Body(Model):
    """What a client sends (a job spec, a pool, taints): its JSON types taken as declared, so its
    JSON Schema is exactly what is accepted. `"5"` is not an integer, nor `true` a number; an
    integer field is an `Integer`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def whole_number(value: Any) -> Any:
    """5.0 as 5 (JSON Schema's integer); anything else as it is, for the type to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema has it: `5.0` is one (strict pydantic would refuse it), `5.5` is not.
Integer = Annotated[int, BeforeValidator(whole_number)]
# One that Postgres's `integer` holds. Its bounds come before the validator: after it, pydantic
# cannot say them in JSON Schema inside a `| None` (they would read `ge`/`le`, which no client knows).
Integer32 = Annotated[Int32, BeforeValidator(whole_number)]


class Envelope(Model):
    """Fields every event carries. Subclasses pin `type` with a Literal default."""

    type: str
    v: int = 1
    id: UUID = Field(default_factory=uuid7)
    at: datetime = Field(default_factory=utcnow)
