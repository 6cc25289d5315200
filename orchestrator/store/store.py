"""The store: an asyncpg pool, migrations, the outbox relay's side, and (one module per table,
matching `queries/*.sql`, mixed in here) the reads and the writes that are not job transitions.
Only this package knows asyncpg.

Every change of a job's state is in the `transitions` package (`store.transitions`), which writes its
news to the outbox in the same transaction; the relay's side of the outbox is here. Connection
failures surface as `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.errors import InvalidInput, StoreError, StoreUnavailable
from orchestrator.redact import redact_url
from orchestrator.store import migrate
from orchestrator.store.fleet import FleetRows
from orchestrator.store.flow import FlowRows
from orchestrator.store.jobs import JobReads
from orchestrator.store.pools import PoolReads
from orchestrator.store.queries import Q
from orchestrator.store.retention import RetentionRows
from orchestrator.store.runners import RunnerRows
from orchestrator.store.take import TakeReads
from orchestrator.store.transitions import Journal, Level, Transitions

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


class Store(JobReads, PoolReads, RunnerRows, TakeReads, FleetRows, FlowRows, RetentionRows):
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        idle_in_transaction_s: float | None = None,
        log_transitions: Level = "info",
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
        self.transitions = Transitions(self, Journal(log_transitions))

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
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection outside any transaction, its errors told as the store's: a
        transition that is one statement is atomic without BEGIN and COMMIT round trips."""
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
        async with self.connection() as conn, conn.transaction():
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
        async with self.connection() as conn:
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
        async with self.connection() as conn:
            return await migrate.apply(conn)
