"""The envelope every event shares: `type`, `v`, `id`, `at`.

Models are frozen and reject unknown fields on input: a producer's typo is an error that names
the field, never a silently ignored option. A breaking change is a new `v`, published beside the
old one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from schemas.ids import uuid7


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Envelope(Model):
    """Fields every event carries. Subclasses pin `type` with a Literal default."""

    type: str
    v: int = 1
    id: UUID = Field(default_factory=uuid7)
    at: datetime = Field(default_factory=utcnow)
