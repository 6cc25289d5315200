"""Schedules (`queries/schedules.sql`, migration 0013): their rows, and the transaction in which
the scheduler fires one.

A fire is one transaction: the admission's (the pool's admission lock, its configuration and the
fired job's key read under it: `Transitions.admission`), the shard's fencing epoch checked (held
shared, as the claim holds it), the schedule's row locked, its live jobs read; the caller decides
and inserts the job with the admission's own rules, then `advance` moves the schedule's
position, compare-and-set. If anything fails, or the position was moved or the schedule changed
meanwhile, nothing of it commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.errors import OrchestratorError
from orchestrator.store.connected import Connected
from orchestrator.store.queries import Q
from orchestrator.store.transitions import AdmissionTx, Fence


class ScheduleChanged(OrchestratorError):
    """A fire lost its race: another leader handled the time, or the schedule was changed or
    deleted. Nothing of it committed; read the schedule again."""

    code = "conflict"


class Fenced(OrchestratorError):
    """A newer dispatch leader's term is stored: this process may not fire."""

    code = "fenced"


@dataclass(frozen=True)
class Position:
    """Where a PUT leaves a schedule: every fire time up to `handled_through` handled, the next
    one `next_fire_at` (None: never again)."""

    handled_through: datetime
    next_fire_at: datetime | None


class Firing:
    """One fire's transaction: the admission's, the schedule's row (`schedule`, locked) and the
    jobs it fired that are live (`live`)."""

    def __init__(self, tx: AdmissionTx, schedule: dict[str, Any], live: list[dict[str, Any]]) -> None:
        self.admission = tx
        self.schedule = schedule
        self.live = live

    @property
    def _conn(self) -> asyncpg.Connection:
        return self.admission._conn  # the store's own transaction, shared within the store package

    async def advance(
        self,
        through: datetime,
        next_fire_at: datetime | None,
        *,
        job_id: UUID | None = None,
        skip_reason: str | None = None,
    ) -> None:
        """Every fire time up to `through` handled: fired as `job_id`, or skipped for `skip_reason`."""
        s = self.schedule
        fired = (through, job_id) if job_id is not None else (None, None)
        skipped = (through, skip_reason) if skip_reason is not None else (None, None)
        position = (s["name"], s["version"], s["handled_through"])
        moved = await self._conn.fetchval(Q["schedule_advance"], *position, through, next_fire_at, *fired, *skipped)
        if moved is None:
            raise ScheduleChanged(f"schedule {s['name']!r} was handled or changed meanwhile")
        if job_id is not None:
            await self._conn.execute(Q["schedule_job_insert"], s["name"], through, job_id)
        await self._conn.execute(Q["schedule_forget_ended"], s["name"])


class ScheduleRows(Connected):
    async def schedule_get(self, name: str) -> dict[str, Any] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["schedule_get"], name)
        return dict(row) if row else None

    async def schedule_list(self) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["schedule_list"])]

    async def schedule_put(
        self, name: str, fields: dict[str, Any], position: Callable[[dict[str, Any] | None], Position]
    ) -> bool:
        """Create or replace schedule `name` with `fields` (cron, timezone, job, pool, overlap,
        catch_up, paused); `position(current row or None)` says where it stands after. True when
        it was created."""
        async with self.transaction() as conn:
            current = await conn.fetchrow(Q["schedule_lock"], name)
            at = position(dict(current) if current else None)
            f = fields
            return bool(
                await conn.fetchval(
                    Q["schedule_upsert"], name, f["cron"], f["timezone"], f["job"], f["pool"], f["overlap"],
                    f["catch_up"], f["paused"], at.handled_through, at.next_fire_at,
                )
            )  # fmt: skip

    async def schedule_live_job_list(self, name: str) -> list[dict[str, Any]]:
        """The jobs schedule `name` fired that are still queued, assigned or running."""
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["schedule_live_jobs"], name)]

    async def schedule_delete(self, name: str) -> bool:
        async with self.connection() as conn:
            return await conn.fetchval(Q["schedule_delete"], name) is not None

    async def schedules_due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return [dict(r) for r in await conn.fetch(Q["schedule_list_due"], now, limit)]

    async def schedule_next_fire(self) -> datetime | None:
        async with self.connection() as conn:
            return await conn.fetchval(Q["schedule_next_fire"])

    @contextlib.asynccontextmanager
    async def schedule_firing(self, name: str, pool: str, key: str, fence: Fence | None) -> AsyncIterator[Firing]:
        """One fire of schedule `name`, whose job goes to `pool` under `key` (see the module
        note). Fenced when `fence` is not the shard's newest term; ScheduleChanged when the
        schedule is gone."""
        async with self.transitions.admission([pool], [key]) as tx:  # type: ignore[attr-defined]
            conn = tx._conn
            if fence is not None and await conn.fetchval(Q["dispatch_epoch_check"], fence.shard) != fence.epoch:
                raise Fenced(f"a newer dispatch leader than epoch {fence.epoch} is stored")
            schedule = await conn.fetchrow(Q["schedule_lock"], name)
            if schedule is None:
                raise ScheduleChanged(f"schedule {name!r} is gone")
            live = [dict(r) for r in await conn.fetch(Q["schedule_live_jobs"], name)]
            yield Firing(tx, dict(schedule), live)
