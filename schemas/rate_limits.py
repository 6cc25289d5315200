"""Rate limits: how many jobs under one key may start per period (`PUT /v1/rate-limits/{key}`).

A job names its rate limit with `rate_limit_key`; the claim that starts it counts against it, in
Postgres and in its transaction, so the limit holds with any number of dispatchers. Starts are
spread evenly (GCRA): one every `period_s / limit` seconds, with up to `burst` at once after a
quiet spell. With `burst` 1 (the default), no window of `period_s` ever holds more than `limit`
starts; with a larger burst, at most `limit + burst - 1`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.base import Body, Model, whole_number

# Starts per period at most: an int32 in Postgres, and far past anything a claim could make.
Starts = Annotated[Annotated[int, Field(ge=1, le=1_000_000)], BeforeValidator(whole_number)]


class RateLimitConfig(Body):
    """The body of `PUT /v1/rate-limits/{key}`."""

    limit: Starts = Field(description="starts per period_s at most")
    period_s: float = Field(gt=0, le=31_536_000, description="the period, in seconds (at most a year)")
    burst: Starts = Field(default=1, description="starts at once after a quiet spell, at most limit; 1 = evenly spread")

    @field_validator("burst")
    @classmethod
    def _within_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = info.data.get("limit")  # absent when it was invalid itself
        if limit is not None and value > limit:
            raise PydanticCustomError(
                "burst", "must not exceed limit ({limit}): got {value}", {"limit": limit, "value": value}
            )
        return value


class RateLimitView(RateLimitConfig):
    """A rate limit as stored, and where it stands now."""

    key: str
    starts_left: int = Field(description="jobs of the key that may start now")
    next_start_at: datetime | None = Field(description="when the next start is allowed; null: now")
    created_at: datetime
    updated_at: datetime


class RateLimitList(Model):
    """`GET /v1/rate-limits`: every rate limit, by key."""

    rate_limits: list[RateLimitView]


class RateLimitDeleted(Model):
    """`DELETE /v1/rate-limits/{key}`: the limit is lifted. Jobs already admitted that name it start
    without it from then on; new ones naming it are refused (422) until it is set again."""

    key: str
    deleted: bool
    rate_limit: RateLimitView = Field(description="the limit as it stood when deleted")
