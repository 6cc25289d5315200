"""Pools: the configuration operators declare (file, HTTP, CLI), and the one rule for whether a
job could ever run in a pool.

The rule lives here, beside the model it reads, so admission (judging a new job) and a pool
change (re-checking the jobs already queued) apply the very same test and give the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.base import Body, Integer, Model, whole_number
from schemas.jobs import Label, Name

# Stored as Postgres `integer`: keep values inside it so a typo is a 422, not a database error.
_INT32 = {"ge": -(2**31), "le": 2**31 - 1}
# The most dispatch shards a deployment may have (ORCH_DISPATCH_SHARDS): each is a lease every
# dispatch instance contends for.
MAX_DISPATCH_SHARDS = 256
# A shard's number. Its bounds come before the validator, so JSON Schema has them inside the `| None`.
ShardNumber = Annotated[Annotated[int, Field(ge=0, le=MAX_DISPATCH_SHARDS - 1)], BeforeValidator(whole_number)]
# The validation context key of the number of shards a `shard` must be below (`PoolConfig.placed`).
DISPATCH_SHARDS = "dispatch_shards"
# A provisioner's name: a registered one (`local`), an entry point, or `package.module:factory`.
ProvisionerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,255}$")]


class PoolConfig(Body):
    """A pool's configuration; the body of `PUT /v1/pools/{name}`. Omitted fields take these defaults."""

    max_concurrent: Integer = Field(
        default=20, description="jobs assigned or running at once; negative = unlimited", **_INT32
    )
    max_active: Integer = Field(default=1024, description="queued + assigned + running; negative = unlimited", **_INT32)
    labels: list[Label] = Field(default_factory=list, max_length=256, description="what the pool can offer")
    allowed_plans: list[Name] = Field(default_factory=list, max_length=256, description="none = any plan")
    mode: Literal["shared", "leader"] = "shared"
    paused: bool = Field(default=False, description="jobs are admitted and wait; nothing is dispatched")
    provisioner: ProvisionerName | None = Field(
        default=None, description="starts a one-shot worker per queued job (orchestrator/provisioning.py); none = off"
    )
    max_workers: Integer = Field(
        default=0,
        description="live provisioned workers at most, counted from the provisioner; 0 = no cap",
        le=_INT32["le"],
        json_schema_extra={"minimum": 0},  # refused below by `_fleet_cap`, which says why
    )
    reservation_timeout_s: float = Field(
        default=3600,
        gt=0,
        le=31_536_000,
        description="timeout_s of a reservation (a job without payload.command) submitted without one",
    )
    shard: ShardNumber | None = Field(
        default=None,
        description="the dispatch shard of the pool's jobs, below ORCH_DISPATCH_SHARDS; none = by a hash of its name",
    )
    max_starts_per_s: Annotated[float, Field(gt=0, le=100_000)] | None = Field(
        default=None,
        description="jobs started per second at most, spread evenly (one per 1/max_starts_per_s s); none = no cap",
    )

    @field_validator("max_workers")
    @classmethod
    def _fleet_cap(cls, value: int) -> int:
        # Unlike the other caps, negative does not mean unlimited (0 does): refuse it, by name.
        if value < 0:
            raise PydanticCustomError(
                "max_workers", "must be 0 (no cap) or a positive number of workers, got {value}", {"value": value}
            )
        return value

    @field_validator("shard")
    @classmethod
    def _within_shards(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Only where the number of shards is known (`placed`): the model alone cannot tell.
        shards = (info.context or {}).get(DISPATCH_SHARDS)
        if value is not None and shards is not None and value >= shards:
            raise PydanticCustomError(
                "shard",
                "must be below the number of dispatch shards, {shards} (ORCH_DISPATCH_SHARDS), got {value}",
                {"shards": shards, "value": value},
            )
        return value

    def placed(self, shards: int) -> PoolConfig:
        """This configuration, checked against `shards` dispatch shards: a ValidationError naming
        `shard` when it names one that does not exist."""
        return type(self).model_validate(self.model_dump(), context={DISPATCH_SHARDS: shards})

    def unrunnable(self, pool: str, labels: Iterable[str], plan: str | None) -> tuple[str, str] | None:
        """Why a job needing `labels` under `plan` can never run here, as (field, message); None if it can."""
        missing = sorted(set(labels) - set(self.labels))
        if missing:
            return "labels", f"pool {pool!r} cannot offer labels {missing} (it offers {sorted(self.labels)})"
        if self.allowed_plans and plan not in self.allowed_plans:
            return "plan", f"plan {plan!r} may not use pool {pool!r} (allowed: {sorted(self.allowed_plans)})"
        if self.max_concurrent == 0:
            return "pool", f"pool {pool!r} has max_concurrent = 0: nothing in it can ever run"
        return None

    @classmethod
    def from_row(cls, row: Any) -> PoolConfig:
        return cls.model_validate({name: row[name] for name in cls.model_fields})


class PoolView(PoolConfig):
    name: Name
    # Where its jobs are dispatched from now: `shard` when given, else by the hash of its name
    # ("all" while there is one shard).
    dispatch_shard: str = "all"
    # Leader mode: the runner elected to take the pool's jobs (None: no healthy untainted runner).
    leader_runner_id: str | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> PoolView:
        return cls.model_validate({name: row[name] for name in cls.model_fields})


class PoolsFile(Model):
    """The file named by `ORCH_POOLS_FILE` (JSON or TOML): `{"pools": {"<name>": {<PoolConfig>}}}`.
    Each pool is applied like a `PUT`: what the file omits takes its default."""

    pools: dict[Name, PoolConfig]
