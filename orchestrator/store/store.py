"""The store: an asyncpg pool and the queue's transactions. Only this package knows asyncpg.

Every state transition is one transaction; callers publish the matching event after it commits.
Rows come back as plain dicts. Connection failures surface as `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.errors import InvalidInput, NotFound, StoreError, StoreUnavailable
from orchestrator.redact import redact_url
from orchestrator.store import migrate
from orchestrator.store.queries import Q

# What "Postgres cannot be reached right now" looks like: the network, a closed connection,
# SQLSTATE class 08 (connection exception) and 57 (operator intervention: shutdown, terminate).
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    # A connection killed mid-query can surface as "another operation is in progress".
    asyncpg.exceptions.InternalClientError,
)


@dataclass(frozen=True)
class NewJob:
    id: UUID
    key: str
    spec: dict[str, Any]
    pool: str
    labels: list[str]
    plan: str | None
    tenant: str | None
    priority: int
    payload: dict[str, Any]
    timeout_s: float | None
    max_attempts: int
    abandon_after_s: float | None
    token_hash: bytes | None
    trace_context: dict[str, str]
    tolerations: list[str] = field(default_factory=list)  # sorted, distinct


_NEW_JOB_FIELDS = [f.name for f in fields(NewJob)]


@dataclass(frozen=True)
class Rejection:
    """A refusal of the JetStream door, kept where its producer can look (the `rejections` table)."""

    reason: str
    message: str
    field: str | None = None
    pool: str | None = None
    key: str | None = None
    stream_seq: int | None = None
    body: str | None = None


_REJECTION_FIELDS = [f.name for f in fields(Rejection)]


def _storable(value: Any) -> Any:
    """Postgres text cannot hold NUL; a rejected message may well contain one."""
    return value.replace("\x00", "\\u0000") if isinstance(value, str) else value


ShapeKey = tuple[str, tuple[str, ...], str, tuple[str, ...]]


def shape_key(pool: str, labels: Sequence[str], tenant: str | None, tolerations: Sequence[str] = ()) -> ShapeKey:
    """What a job needs, as its shape: pool, sorted distinct labels, tenant ('' for none), and
    the sorted distinct taints it tolerates."""
    return (pool, tuple(sorted(set(labels))), tenant or "", tuple(sorted(set(tolerations))))


class AdmissionTx:
    """What an admission decision reads and writes, inside the batch's transaction."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        pools: dict[str, dict[str, Any]],
        existing: dict[str, Any],
        shapes: dict[ShapeKey, int],
    ) -> None:
        self._conn = conn
        self.pools = pools
        self.existing = existing
        self._shapes = shapes
        self.new_shapes: dict[ShapeKey, int] = {}  # created in this transaction: cached once it commits

    async def active(self, pools: Sequence[str]) -> dict[str, int]:
        """Queued + assigned + running per pool (exact: the pools are locked)."""
        rows = await self._conn.fetch(Q["pool_active_many"], list(pools))
        return {name: 0 for name in pools} | {r["pool"]: r["active"] for r in rows}

    async def drained_last_minute(self, pool: str, now: datetime | None = None) -> int:
        return int(await self._conn.fetchval(Q["pool_drained_last_minute"], pool, now))

    async def insert(self, jobs: Sequence[NewJob]) -> list[dict[str, Any]]:
        """Insert `jobs` in one statement; returns the rows inserted (a key taken meanwhile is skipped)."""
        if not jobs:
            return []
        columns = [[getattr(job, name) for job in jobs] for name in _NEW_JOB_FIELDS]
        for ragged in ("labels", "tolerations"):  # see job_insert_many
            columns[_NEW_JOB_FIELDS.index(ragged)] = [json.dumps(getattr(job, ragged)) for job in jobs]
        columns.append([await self.shape_id(job) for job in jobs])
        by_key = {job.key: job for job in jobs}
        rows = [dict(r) for r in await self._conn.fetch(Q["job_insert_many"], *columns)]
        for row in rows:  # the job rows in full, without decoding back what was just encoded
            job = by_key[row["key"]]
            row.update(spec=job.spec, payload=job.payload, trace_context=job.trace_context)
        return rows

    async def shape_id(self, job: NewJob) -> int:
        key = shape_key(job.pool, job.labels, job.tenant, job.tolerations)
        shape_id = self._shapes.get(key) or self.new_shapes.get(key)
        if shape_id is None:
            # In this transaction: the pool's admission lock already serializes its shape creation.
            args = (key[0], list(key[1]), key[2], list(key[3]))
            shape_id = await self._conn.fetchval(Q["job_shape_insert"], *args) or await self._conn.fetchval(
                Q["job_shape_get"], *args
            )
            self.new_shapes[key] = shape_id
        return shape_id

    async def jobs_by_key(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {r["key"]: dict(r) for r in await self._conn.fetch(Q["job_list_by_keys"], list(keys))}

    async def record(self, rejections: Sequence[Rejection]) -> None:
        if rejections:
            columns = [[_storable(getattr(r, name)) for r in rejections] for name in _REJECTION_FIELDS]
            await self._conn.execute(Q["rejection_insert_many"], *columns)


class PoolChangeTx:
    """What a pool change reads and writes, inside its transaction."""

    def __init__(self, conn: asyncpg.Connection, name: str, current: dict[str, Any] | None) -> None:
        self._conn = conn
        self.name = name
        self.current = current

    async def upsert(self, config: dict[str, Any]) -> dict[str, Any]:
        row = await self._conn.fetchrow(
            Q["pool_upsert"],
            self.name,
            config["max_concurrent"],
            config["max_active"],
            list(config["labels"]),
            list(config["allowed_plans"]),
            config["mode"],
            config["paused"],
            config["provisioner"],
            config["max_workers"],
        )
        return dict(row)

    async def queued_shapes(self) -> list[tuple[list[str], str | None]]:
        return [(list(r["labels"]), r["plan"]) for r in await self._conn.fetch(Q["job_queued_shapes"], self.name)]

    async def fail_queued(self, labels: Sequence[str], plan: str | None, reason: str) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(Q["job_fail_queued_shape"], self.name, list(labels), plan, reason)
        return [dict(r) for r in rows]


class Fence(NamedTuple):
    """A dispatch leader's term: its shard, its epoch (the lease revision), and who it is."""

    shard: str
    epoch: int
    holder: str


@dataclass(frozen=True)
class ClaimStep:
    """Why a dispatch step stopped, and what it claimed. `status` is one of
    dispatched | no_job | no_runner | at_capacity | paused | unknown_pool | fenced
    (a newer leader's epoch is stored: nothing was claimed)."""

    status: str
    assignments: list[dict[str, Any]] = field(default_factory=list)
    # In-flight jobs of the pool once the step committed (None when not counted: unlimited pools).
    in_flight: int | None = None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Store:
    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 10, idle_in_transaction_s: float | None = None
    ) -> None:
        self.dsn = dsn
        self._min_size, self._max_size = min_size, max_size
        # Postgres ends our session if it idles inside a transaction this long (a paused process
        # must not keep the locks a successor needs).
        self._server_settings = (
            {"idle_in_transaction_session_timeout": str(max(1, round(idle_in_transaction_s * 1000)))}
            if idle_in_transaction_s
            else None
        )
        self._pool: asyncpg.Pool | None = None
        # Shapes are never deleted or changed, so their ids can be remembered for good.
        self._shapes: dict[ShapeKey, int] = {}

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                init=_init_connection,
                server_settings=self._server_settings,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to Postgres at {redact_url(self.dsn)}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StoreUnavailable("the store is not connected")
        try:
            conn = await self._pool.acquire()
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:  # any failure to connect at all
            raise StoreUnavailable(f"Postgres is unreachable: {exc}") from exc
        try:
            yield conn
        except (asyncpg.exceptions.DataError, asyncpg.exceptions._base.DataError) as exc:
            # Server-side SQLSTATE class 22, and the client-side encoding error (an InterfaceError,
            # which must not read as "unreachable": a redelivered poison message would loop).
            raise InvalidInput(f"Postgres cannot store a value: {exc}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"Postgres is unreachable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"Postgres refused a query: {exc.__class__.__name__}: {exc}") from exc
        finally:
            await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._conn() as conn, conn.transaction():
            yield conn

    async def migrate(self) -> list[int]:
        async with self._conn() as conn:
            return await migrate.apply(conn)

    # --- pools -------------------------------------------------------------------------------

    async def pool_get(self, name: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["pool_get"], name)
        return dict(row) if row else None

    async def pool_list(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_list"])]

    async def pool_create_if_absent(self, name: str, labels: Sequence[str]) -> None:
        async with self._conn() as conn:
            await conn.execute(Q["pool_create_if_absent"], name, list(labels))

    async def pool_free(self, name: str) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(Q["pool_free"], name) or 0)

    async def pools_with_queued(self) -> list[str]:
        async with self._conn() as conn:
            return [r["name"] for r in await conn.fetch(Q["pool_list_with_queued"])]

    async def pool_elect_leader(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Elect leader-mode pools' leaders (`pool`, or all); the changes as {pool, previous, leader}."""
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_elect_leader"], pool)]

    async def pools_provisioned(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_list_provisioned"])]

    async def pool_fleet_demand(self, pool: str, max_queued: int) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["pool_fleet_demand"], pool, max_queued)
        return dict(row) if row else None

    # --- admission and pool changes -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admission(self, pools: Iterable[str], keys: Iterable[str]) -> AsyncIterator[AdmissionTx]:
        """One admission transaction for a batch: the named pools locked against other admissions
        and pool changes (in name order, so two batches never deadlock), their configuration and
        the jobs already holding any of `keys` read under those locks."""
        async with self._tx() as conn:
            names = sorted(set(pools))
            for name in names:
                await conn.execute(Q["pool_admission_lock"], name)
            configs = {r["name"]: dict(r) for r in await conn.fetch(Q["pool_get_many"], names)}
            existing = {r["key"]: dict(r) for r in await conn.fetch(Q["job_list_by_keys"], sorted(set(keys)))}
            tx = AdmissionTx(conn, configs, existing, self._shapes)
            yield tx
        self._shapes.update(tx.new_shapes)  # committed: safe to remember

    @contextlib.asynccontextmanager
    async def pool_change(self, name: str) -> AsyncIterator[PoolChangeTx]:
        """One pool-change transaction: the pool locked against admissions (its admission lock)
        and against dispatch (its row), and its current row (None for a new pool)."""
        async with self._tx() as conn:
            await conn.execute(Q["pool_admission_lock"], name)
            current = await conn.fetchrow(Q["pool_lock_for_change"], name)
            yield PoolChangeTx(conn, name, dict(current) if current else None)

    async def rejection_list(self, *, reason: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["rejection_list"], reason, limit)]

    # --- dispatch ----------------------------------------------------------------------------

    async def job_claim_step(self, pool: str, limit: int, fence: Fence | None = None) -> ClaimStep:
        """One dispatch step for `pool`: claim up to `limit` jobs for runners with free slots,
        never past the pool's `max_concurrent`, in one transaction.

        With a `fence`, the same transaction first checks the shard's stored epoch: a newer one
        means this leader was deposed, and the step claims nothing (`fenced`)."""
        if fence is None:
            async with self._tx() as conn:
                return await self._claim(conn, pool, limit, None)
        for _ in range(2):
            async with self._tx() as conn:
                stored = await conn.fetchval(Q["dispatch_epoch_hold"], fence.shard)
                if stored == fence.epoch:
                    return await self._claim(conn, pool, limit, fence.epoch)
            if stored is not None and stored > fence.epoch:
                return ClaimStep("fenced")
            # Our term is not recorded yet (the leader records it on election; that write failed).
            # Record it in its own transaction: upgrading the shared lock here could deadlock with
            # this leader's steps for other pools. Then check again.
            if not await self.dispatch_epoch_advance(fence):
                return ClaimStep("fenced")
        return ClaimStep("fenced")

    async def dispatch_epoch_advance(self, fence: Fence) -> bool:
        """Record a leader's term (only ever forward); False when a newer epoch is stored."""
        async with self._conn() as conn:
            return await conn.fetchrow(Q["dispatch_epoch_advance"], *fence) is not None

    async def dispatch_epoch_get(self, shard: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["dispatch_epoch_get"], shard)
        return dict(row) if row else None

    async def _claim(self, conn: asyncpg.Connection, pool: str, limit: int, epoch: int | None) -> ClaimStep:
        """The claim itself, inside the caller's transaction (and, with a fence, its epoch lock)."""
        cfg = await conn.fetchrow(Q["pool_lock_for_claim"], pool)
        if cfg is None:
            return ClaimStep("unknown_pool")
        if cfg["paused"]:
            return ClaimStep("paused")
        budget = limit
        if cfg["max_concurrent"] >= 0:
            in_flight = await conn.fetchval(Q["pool_in_flight"], pool)
            budget = min(budget, cfg["max_concurrent"] - in_flight)
            if budget <= 0:
                return ClaimStep("at_capacity")
        runners = await conn.fetch(Q["runner_free_slots"], pool)
        if not runners:
            return ClaimStep("no_runner")
        # Runners with the same labels and taints can take the same jobs: claim once per such set.
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[Any]]] = {}
        for r in runners:
            groups.setdefault((tuple(sorted(r["labels"])), tuple(sorted(r["taints"]))), []).append([r["id"], r["free"]])
        assignments: list[dict[str, Any]] = []
        for (labels, taints), members in groups.items():
            if budget <= 0:
                break
            want = min(budget, sum(free for _, free in members))
            claimed = await conn.fetch(Q["job_claim"], pool, list(labels), want, epoch, list(taints))
            for row in claimed:
                member = max(members, key=lambda m: m[1])  # spread over the freest runners
                member[1] -= 1
                assignments.append({**dict(row), "runner_id": member[0]})
            budget -= len(claimed)
        if not assignments:
            return ClaimStep("no_job")
        await conn.execute(Q["job_shape_served"], list({a["shape_id"] for a in assignments}))
        await conn.execute(Q["job_set_runner"], [a["id"] for a in assignments], [a["runner_id"] for a in assignments])
        in_flight_after = None if cfg["max_concurrent"] < 0 else in_flight + len(assignments)
        return ClaimStep("dispatched", assignments, in_flight_after)

    async def job_requeue_unstarted(self, after_s: float, now: datetime | None = None) -> list[dict[str, Any]]:
        """Requeue assignments not started within `after_s`; returns them (id, pool)."""
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["job_requeue_unstarted"], after_s, now)]

    async def job_unassign(self, job_id: UUID, runner_id: str) -> str | None:
        async with self._conn() as conn:
            return await conn.fetchval(Q["job_unassign"], job_id, runner_id)

    # --- runner reports ----------------------------------------------------------------------

    async def job_start_many(self, starts: Sequence[tuple[UUID, str, int]]) -> dict[UUID, str]:
        """Grant (job id, runner id, attempt) permissions to start; the granted ids and their pools."""
        ids, runners, attempts = zip(*starts, strict=True) if starts else ((), (), ())
        async with self._conn() as conn:
            rows = await conn.fetch(Q["job_start_many"], list(ids), list(runners), list(attempts))
        return {r["id"]: r["pool"] for r in rows}

    async def job_finish_many(
        self, ends: Sequence[tuple[UUID, str, int, str, int | None, str | None]]
    ) -> dict[UUID, str]:
        """Record (job id, runner id, attempt, state, exit code, reason) ends; the recorded ids and pools."""
        columns = [list(c) for c in zip(*ends, strict=True)] if ends else [[] for _ in range(6)]
        async with self._conn() as conn:
            rows = await conn.fetch(Q["job_finish_many"], *columns)
        return {r["id"]: r["pool"] for r in rows}

    async def runner_register(
        self,
        runner_id: str,
        pool: str,
        labels: Sequence[str],
        slots: int,
        taints: Sequence[str],
        metadata: dict[str, Any],
        running: Sequence[UUID],
    ) -> list[dict[str, Any]]:
        """Upsert the runner; release what the store holds against it that it no longer runs."""
        async with self._tx() as conn:
            try:
                await conn.fetchrow(Q["runner_upsert"], runner_id, pool, list(labels), slots, list(taints), metadata)
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(f"pool {pool!r} does not exist") from None
            released = await conn.fetch(Q["job_release_from_runners"], [runner_id], list(running))
        return [dict(r) for r in released]

    async def runner_touch(self, runner_id: str) -> dict[str, Any] | None:
        """Record a heartbeat; the runner's state before it and its pool, or None if unknown/lost."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["runner_touch"], runner_id)
        return dict(row) if row else None

    async def runner_mark_suspect(self, runner_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q["runner_mark_suspect"], runner_id)

    async def runner_mark_lost(
        self, ttl_s: float, now: datetime | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Mark silent runners lost and release their jobs; returns the lost runners (id, pool)
        and the released jobs."""
        async with self._tx() as conn:
            lost = await conn.fetch(Q["runner_mark_lost"], ttl_s, now)
            if not lost:
                return [], []
            released = await conn.fetch(Q["job_release_from_runners"], [r["id"] for r in lost], [])
        return [dict(r) for r in lost], [dict(r) for r in released]

    async def runner_set_taints(self, runner_id: str, taints: Sequence[str]) -> dict[str, Any] | None:
        """Set the runner's taints (the exact set); {id, pool, taints}, or None if it is unknown."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["runner_set_taints"], runner_id, list(taints))
        return dict(row) if row else None

    async def runners_known(self, runner_ids: Sequence[str]) -> set[str]:
        """Which of `runner_ids` have registered."""
        async with self._conn() as conn:
            return {r["id"] for r in await conn.fetch(Q["runner_list_known"], list(runner_ids))}

    # --- reads and operator actions ----------------------------------------------------------

    async def job_get(self, job_id: UUID) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["job_get"], job_id)
        return dict(row) if row else None

    async def job_list(
        self, *, pool: str | None, state: str | None, key: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["job_list"], pool, state, key, limit)]

    async def job_count(self, pool: str) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(Q["job_count_by_pool"], pool))

    async def job_cancel_queued(self, job_id: UUID) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["job_cancel_queued"], job_id)
        return dict(row) if row else None

    async def runner_list(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["runner_list"])]

    async def metrics_snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every pool's queue state, and runners counted by pool and state (metrics, dashboard)."""
        async with self._conn() as conn:
            pools = await conn.fetch(Q["metrics_pools"])
            runners = await conn.fetch(Q["metrics_runners"])
        return [dict(r) for r in pools], [dict(r) for r in runners]

    async def runner_get(self, runner_id: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["runner_get"], runner_id)
        return dict(row) if row else None

    # --- the take protocol and what holds a job back ---------------------------------------

    async def job_poll(self, job_id: UUID, wait_s: float = 0.0, taking: str | None = None) -> dict[str, Any] | None:
        """A take client polls: heard from now (and until the end of a `wait_s` long poll); with
        `taking` (a runner id) it takes that runner. The job, or None if it is no longer live (or
        no longer held by `taking`)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["job_poll"], job_id, wait_s, taking)
        return dict(row) if row else None

    async def job_expire_abandoned(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Expire take-style jobs whose client stopped polling; returns them (id, pool, runner_id, attempt)."""
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["job_expire_abandoned"], now)]

    async def job_list_servo_live(self, unique_id: str) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["job_list_servo_live"], unique_id)]

    async def job_waiting(self, job: dict[str, Any]) -> dict[str, Any]:
        """The numbers behind a queued job's wait, read together: its pool's configuration, jobs in
        flight, the runners it could use, its position among the jobs competing for the same slots,
        its retry backoff left, and how many jobs the pool finished in the last minute."""
        async with self._tx() as conn:
            pool = await conn.fetchrow(Q["pool_get"], job["pool"])
            in_flight = await conn.fetchval(Q["pool_in_flight"], job["pool"])
            runners = await conn.fetchrow(Q["runner_capacity_for_labels"], job["pool"], list(job["labels"]))
            position = await conn.fetchrow(Q["job_queue_position"], job["id"])
            drained = await conn.fetchval(Q["pool_drained_last_minute"], job["pool"], None)
        return {
            "pool": dict(pool) if pool else None,
            "in_flight": int(in_flight),
            **{k: int(v) for k, v in runners.items()},
            "competing": int(position["competing"]),
            "ahead": int(position["ahead"]),
            "backoff_s": position["backoff_s"] or 0.0,
            "drained_last_minute": int(drained),
        }

    # --- operator and client actions ---------------------------------------------------------

    async def runner_drain(self, runner_id: str) -> dict[str, Any] | None:
        """The runner takes nothing more (an operator's drain, a runner stopping, a one-shot worker
        that took its job); its row, or None if it is unknown or lost."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["runner_drain"], runner_id)
        return dict(row) if row else None

    async def job_finish_held(
        self, job_id: UUID, state: str, exit_code: int | None, reason: str | None
    ) -> dict[str, Any] | None:
        """End a job a runner holds (assigned or running) as its client says; None if it is not held."""
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["job_finish_held"], job_id, state, exit_code, reason)
        return dict(row) if row else None

    async def pool_depth_list(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_depth_list"])]
