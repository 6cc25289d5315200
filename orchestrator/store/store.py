"""The store: an asyncpg pool, the reads, and the transactions that are not job transitions.
Only this package knows asyncpg.

Every change of a job's state is in the `transitions` package (`store.transitions`), which writes its
news to the outbox in the same transaction; the relay's side of the outbox is here. Connection
failures surface as `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.errors import InvalidInput, StoreError, StoreUnavailable
from orchestrator.redact import redact_url
from orchestrator.store import migrate
from orchestrator.store.queries import Q
from orchestrator.store.transitions import Transitions

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


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: UUID
    subject: str  # relative to the namespace
    body: bytes
    durable: bool


class OutboxBatch:
    """The oldest outbox rows, read under the relay lock, deleted once published."""

    def __init__(self, conn: asyncpg.Connection, rows: list[OutboxRow]) -> None:
        self._conn = conn
        self.rows = rows

    async def delete(self) -> None:
        await self._conn.execute(Q["outbox_delete"], [r.seq for r in self.rows])


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
        self.transitions = Transitions(self)

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
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction, for this package's modules (the transitions)."""
        async with self._conn() as conn, conn.transaction():
            yield conn

    # --- the outbox relay's side --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def outbox_batch(self, limit: int) -> AsyncIterator[OutboxBatch | None]:
        """Up to `limit` of the oldest outbox rows in one transaction, holding the relay lock (one
        relay at a time, whatever the number of processes); None when another relay holds it.
        Rows the caller deletes are gone once the block commits; on an error nothing is."""
        async with self.transaction() as conn:
            if not await conn.fetchval(Q["outbox_relay_lock"]):
                yield None
                return
            rows = [OutboxRow(**r) for r in await conn.fetch(Q["outbox_head"], limit)]
            yield OutboxBatch(conn, rows)

    async def outbox_depth(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval(Q["outbox_depth"]))

    async def listen(self, channel: str, callback: Callable[[], None]) -> Callable[[], Any]:
        """Call `callback` on every NOTIFY on `channel`, on a connection of its own (a pooled one
        would UNLISTEN on release); returns the coroutine function that closes it. A hint only:
        the listener may miss notifications while reconnecting, so its user also polls."""
        try:
            conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings)
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot listen on Postgres: {exc}") from exc
        await conn.add_listener(channel, lambda *_: callback())

        async def close() -> None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

        close.is_alive = lambda: not conn.is_closed()  # type: ignore[attr-defined]
        return close

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

    async def rejection_list(self, *, reason: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["rejection_list"], reason, limit)]

    # --- provisioned workers (the fleet cap) ----------------------------------------------------

    async def worker_reserve(
        self, pool: str, runner_id: str, spawned_by: str, max_workers: int, start_timeout_s: float
    ) -> int | None:
        """Reserve a fleet slot for a worker about to be spawned: the pool's live workers with it
        counted, or None when the pool already has `max_workers` (0: no cap). Exact with any
        number of provisioner instances: counted and written under the pool's fleet lock."""
        async with self.transaction() as conn:
            await conn.execute(Q["worker_fleet_lock"], pool)
            live = int(await conn.fetchval(Q["worker_count_live"], pool, start_timeout_s))
            if 0 < max_workers <= live:
                return None
            await conn.execute(Q["worker_insert"], runner_id, pool, spawned_by)
        return live + 1

    async def worker_count_live(self, pool: str, start_timeout_s: float) -> int:
        async with self._conn() as conn:
            await conn.execute(Q["worker_prune"], pool, start_timeout_s)
            return int(await conn.fetchval(Q["worker_count_live"], pool, start_timeout_s))

    async def worker_forget(self, runner_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q["worker_delete"], runner_id)

    async def dispatch_epoch_issue(self, shard: str, holder: str) -> int:
        """A new term for `holder`, newer than every earlier one of `shard`: its fencing epoch."""
        async with self._conn() as conn:
            return int(await conn.fetchval(Q["dispatch_epoch_issue"], shard, holder))

    async def dispatch_epoch_get(self, shard: str) -> dict[str, Any] | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(Q["dispatch_epoch_get"], shard)
        return dict(row) if row else None

    async def runner_mark_suspect(self, runner_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(Q["runner_mark_suspect"], runner_id)

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

    async def job_list_servo_live(self, unique_id: str) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["job_list_servo_live"], unique_id)]

    async def job_waiting(self, job: dict[str, Any]) -> dict[str, Any]:
        """The numbers behind a queued job's wait, read together: its pool's configuration, jobs in
        flight, the runners it could use, its position among the jobs competing for the same slots,
        its retry backoff left, and how many jobs the pool finished in the last minute."""
        async with self.transaction() as conn:
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

    async def pool_depth_list(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(Q["pool_depth_list"])]
