"""Flow control outside the claim (`queries/flow.sql`): rate limits as operators set them, the
pools where a concurrency key's jobs wait, and what holds a queued job back. The claim itself,
which enforces both, is migration 0016's `claim_step` (as 0017 to 0022 left it); admission's side is `AdmissionTx`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q


@dataclass(frozen=True)
class RateLimit:
    """A rate limit: at most `max_starts` starts per `period_s`, spread evenly, `burst` at once;
    how many may start now, and when the next may (None: now)."""

    key: str
    max_starts: int
    period_s: float
    burst: int
    starts_left: int
    next_start_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created: bool = False  # by the put that returned it


@dataclass(frozen=True)
class FlowWait:
    """What holds a queued job back by flow control. Its concurrency key (None: none), the key's
    limit (the least of its live jobs'), how many of its jobs are assigned or running and which
    (the first 10); its rate-limit key, how many starts it allows now and when the next is; its
    pool's max_starts_per_s and next start (None: a start is allowed now)."""

    concurrency_key: str | None
    key_limit: int | None
    key_held: int
    key_holders: list[UUID]
    rate_limit_key: str | None
    rate_room: int | None
    rate_next_at: datetime | None
    max_starts_per_s: float | None
    pool_next_at: datetime | None

    @property
    def key_full(self) -> bool:
        return self.concurrency_key is not None and self.key_held >= (self.key_limit or 1)

    @property
    def rate_empty(self) -> bool:
        return self.rate_room == 0


def _rate_limit(row: object, created: bool = False) -> RateLimit:
    r = dict(row)  # type: ignore[call-overload]
    if r["starts_left"] > 0:
        r["next_start_at"] = None  # one may start now
    r.pop("created", None)
    return RateLimit(**r, created=created)


class FlowRows(Connected):
    async def rate_limit_put(self, key: str, max_starts: int, period_s: float, burst: int) -> RateLimit:
        """Create or change a rate limit (a change keeps the starts made, see the query)."""
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["rate_limit_put"], key, max_starts, period_s, burst)
        return _rate_limit(row, created=row["created"])

    async def rate_limit_get(self, key: str) -> RateLimit | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["rate_limit_get"], key)
        return _rate_limit(row) if row else None

    async def rate_limit_list(self) -> list[RateLimit]:
        async with self.connection() as conn:
            return [_rate_limit(row) for row in await conn.fetch(Q["rate_limit_list"])]

    async def rate_limit_delete(self, key: str) -> RateLimit | None:
        """Lift a rate limit: the limit as it stood, None when none was set."""
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["rate_limit_delete"], key)
        return _rate_limit(row) if row else None

    async def rate_limit_key_pools(self, key: str) -> list[str]:
        """The pools where jobs naming rate limit `key` wait."""
        async with self.connection() as conn:
            return [r["pool"] for r in await conn.fetch(Q["rate_limit_key_pools"], key)]

    async def concurrency_key_pools(self, keys: Sequence[str]) -> list[str]:
        """The pools where jobs of these concurrency keys wait."""
        async with self.connection() as conn:
            return [r["pool"] for r in await conn.fetch(Q["concurrency_key_pools"], list(keys))]

    async def job_flow_waiting(self, job_id: UUID) -> FlowWait | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["job_flow_waiting"], job_id)
        return FlowWait(**dict(row)) if row else None
