"""The edges a runner's life drives: its registration and heartbeats, reconciled with what
Postgres has it holding (releasing what it let go, naming what it must stop), and the sweep that
declares silent runners lost and releases their jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.errors import NotFound
from orchestrator.store.queries import Q
from orchestrator.store.rows import Job
from orchestrator.store.transitions import news
from orchestrator.store.transitions.args import Heartbeat, Reconciled, RunnerSpec, Stop
from orchestrator.store.transitions.edges import Edges


class RunnerEdges(Edges):
    """A runner's registration, heartbeats and loss (see the module note)."""

    async def register_runner(self, runner: RunnerSpec, held: Sequence[UUID]) -> Reconciled:
        """Upsert the runner, and release what Postgres holds against it that it does not hold
        (edges assigned -> queued, running -> queued | failed | cancelled): it restarted. What it
        holds that is not its own any more is named, to be stopped. Idempotent: registered
        again, the same runner holding the same jobs has nothing more to release."""

        async def register(conn: asyncpg.Connection) -> tuple[list[Job], list[Stop]]:
            try:
                await conn.fetchrow(
                    Q["runner_upsert"],
                    runner.runner_id,
                    runner.pool,
                    list(runner.labels),
                    runner.slots,
                    list(runner.taints),
                    runner.metadata,
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(f"pool {runner.pool!r} does not exist") from None
            args = ([runner.runner_id], list(held), None, None, None)
            released = await news.apply(conn, "job_release_from_runners", args)
            return released, await _stop_orders(conn, runner.runner_id, held)

        released, stop = await self._transact(register, idempotent=True)
        news.committed()
        self._journal.record(released, why="runner_restarted")
        return Reconciled(runner.pool, None, released, stop)

    async def runner_stopped(self, runner_id: str, killed: Sequence[tuple[UUID, int]]) -> list[Job]:
        """The runner stopped, killing these attempts (job id, attempt): those still running on it
        are released (edge running -> queued | failed | cancelled, as on a loss). Idempotent, and
        safe however late: an attempt released, ended or replaced by a newer one is not matched."""
        if not killed:
            return []
        args = ([runner_id], [], None, [job_id for job_id, _ in killed], [attempt for _, attempt in killed])
        return await self._edge("job_release_from_runners", args, why="runner_stopped", idempotent=True)

    async def heartbeat(self, beat: Heartbeat) -> Reconciled | None:
        """A runner's heartbeat, reconciled with Postgres in one transaction (None: the runner is
        unknown or was declared lost). Jobs Postgres has it holding that it does not list are
        marked; those a heartbeat composed after an answered one still does not list are released
        (the runner let them go: requeued, failed or cancelled as on a loss). A late heartbeat
        (not newer than one already seen) only counts as a sign of life: so one run again after
        its COMMIT changes nothing more (idempotent)."""
        held = list(beat.held)

        async def reconcile(conn: asyncpg.Connection) -> Reconciled | None:
            before = await conn.fetchrow(Q["runner_touch"], beat.runner_id, beat.seq)
            if before is None:
                return None
            released: list[Job] = []
            if beat.seq > before["heartbeat_seq"]:
                if beat.acked_seq:
                    args = ([beat.runner_id], held, beat.acked_seq, None, None)
                    released = await news.apply(conn, "job_release_from_runners", args)
                await conn.execute(Q["job_mark_unheld"], beat.runner_id, held, beat.seq)
            stop = await _stop_orders(conn, beat.runner_id, held)
            return Reconciled(before["pool"], before["state"], released, stop)

        found = await self._transact(reconcile, idempotent=True)
        if found is not None and found.released:
            news.committed()
            self._journal.record(found.released, why="runner_let_go")
        return found

    async def mark_runners_lost(
        self, ttl_s: float, now: datetime | None = None
    ) -> tuple[list[dict[str, Any]], list[Job]]:
        """Runners silent for `ttl_s` are lost, and their jobs released (as above); returns the
        lost runners (id, pool) and the released jobs. A sweep, idempotent: run again, it finds
        those runners lost already."""

        async def release(conn: asyncpg.Connection) -> tuple[list[dict[str, Any]], list[Job]]:
            lost = [dict(r) for r in await conn.fetch(Q["runner_mark_lost"], ttl_s, now)]
            if not lost:
                return [], []
            args = ([r["id"] for r in lost], [], None, None, None)
            return lost, await news.apply(conn, "job_release_from_runners", args)

        lost, released = await self._transact(release, idempotent=True)
        if lost:
            news.committed()
            self._journal.record(released, why="runner_lost")
        return lost, released


async def _stop_orders(conn: asyncpg.Connection, runner_id: str, held: Sequence[UUID]) -> list[Stop]:
    if not held:
        return []
    stops = []
    for r in await conn.fetch(Q["job_stop_orders"], runner_id, list(held)):
        mine = r["runner_id"] == runner_id and r["state"] in ("assigned", "running")
        if r["state"] is None:
            stops.append(Stop(r["id"], "not_yours", f"no job {r['id']}"))
        elif mine and r["cancel_pending"]:
            stops.append(Stop(r["id"], "cancel_requested", f"job {r['id']} was cancelled"))
        else:
            held_by = f" on {r['runner_id']}" if r["runner_id"] and r["runner_id"] != runner_id else ""
            stops.append(Stop(r["id"], "not_yours", f"job {r['id']} is {r['state']}{held_by}"))
    return stops
