"""The store: an asyncpg pool, migrations, the outbox relay's side, and (one module per table,
matching `queries/*.sql`, mixed in here) the reads and the writes that are not job transitions.
Only this package knows asyncpg.

Every change of a job's state is in the `transitions` package (`store.transitions`), which writes its
news to the outbox in the same transaction; the relay's side of the outbox is here. Connection
failures surface as `StoreUnavailable`, and as its `NothingApplied` where the work certainly left
nothing behind (no connection; a transaction that never reached its COMMIT; a statement Postgres
refused for now: read-only after a failover, a statement or lock timeout), so a caller knows what
it may run again. The pool replaces connections a restart of Postgres broke on their next use; one
that met a read-only refusal is closed, so the next connects afresh (to the new primary, with
`target_session_attrs=read-write` in a multi-host DSN).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from orchestrator.errors import ConfigurationError, InvalidInput, NothingApplied, StoreError, StoreUnavailable
from orchestrator.redact import redact_url
from orchestrator.store import migrate
from orchestrator.store.fleet import FleetRows
from orchestrator.store.flow import FlowRows
from orchestrator.store.jobs import JobReads
from orchestrator.store.pools import PoolReads
from orchestrator.store.queries import Q
from orchestrator.store.retention import RetentionRows
from orchestrator.store.runners import RunnerRows
from orchestrator.store.schedules import ScheduleRows
from orchestrator.store.statistics import FreshStatistics
from orchestrator.store.take import TakeReads
from orchestrator.store.transitions import Journal, Level, Transitions

if TYPE_CHECKING:
    from orchestrator.settings import Settings

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
# Refusals that leave nothing applied and pass with time, so they are "unavailable", never
# "invalid": a read-only transaction (25006: a standby, or a primary being demoted), a statement
# cancelled by statement_timeout (57014), a lock wait past lock_timeout (55P03).
_READ_ONLY = asyncpg.exceptions.ReadOnlySQLTransactionError
_NOT_NOW = (_READ_ONLY, asyncpg.exceptions.QueryCanceledError, asyncpg.exceptions.LockNotAvailableError)


def _translated(exc: BaseException) -> Exception | None:
    """The store's error for a driver's, or None for one that is not the driver's."""
    if isinstance(exc, asyncpg.exceptions.DataError | asyncpg.exceptions._base.DataError):
        # Server-side SQLSTATE class 22, and the client-side encoding error (an InterfaceError,
        # which must not read as "unreachable": a redelivered poison message would loop).
        return InvalidInput(f"Postgres cannot store a value: {exc}")
    if isinstance(exc, _NOT_NOW):
        return NothingApplied(f"Postgres cannot take it now: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"Postgres is unreachable: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"Postgres refused a query: {exc.__class__.__name__}: {exc}")
    return None


def _ms(seconds: float | None) -> str | None:
    return str(max(1, round(seconds * 1000))) if seconds else None


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


@contextlib.contextmanager
def _told_as_the_stores() -> Iterator[None]:
    """A driver's error raised as the store's (`_translated`); any other as it is."""
    try:
        yield
    except Exception as exc:
        translated = _translated(exc)
        if translated is None:
            raise
        raise translated from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection given back to the pool keeps its session: asyncpg's reset (RESET ALL,
    UNLISTEN, advisory unlock, CLOSE ALL) would cost a round trip at every release, for state
    the store never leaves (SET LOCAL, transaction locks; LISTEN and migrations have connections
    of their own). asyncpg still rolls back a transaction left open."""


class Store(JobReads, PoolReads, RunnerRows, TakeReads, FleetRows, FlowRows, RetentionRows, ScheduleRows):
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        idle_in_transaction_s: float | None = None,
        statement_timeout_s: float | None = None,
        lock_timeout_s: float | None = None,
        statement_cache_size: int = 100,
        log_transitions: Level = "info",
        analyze_bursts: bool = True,
    ) -> None:
        self.dsn = dsn
        self._min_size, self._max_size = min_size, max_size
        # Set on every connection (None or 0: Postgres's default, none). Postgres ends our
        # session if it idles inside a transaction this long (a paused process must not keep the
        # locks a successor needs); a statement, or a wait for a lock, past its timeout fails
        # rather than hang the step (a stalled server, a stuck lock holder).
        timeouts = {
            "idle_in_transaction_session_timeout": _ms(idle_in_transaction_s),
            "statement_timeout": _ms(statement_timeout_s),
            "lock_timeout": _ms(lock_timeout_s),
        }
        self._server_settings = {name: ms for name, ms in timeouts.items() if ms is not None} or None
        self._statement_cache_size = statement_cache_size
        self._pool: asyncpg.Pool | None = None
        self._releasing: set[asyncio.Task[None]] = set()  # connections on their way back to the pool
        self.transitions = Transitions(self, Journal(log_transitions))
        # Analyzes what a burst of admissions grew (off: a test of plans on statistics older than the data).
        self.statistics = FreshStatistics(self, enabled=analyze_bursts)

    @classmethod
    def from_settings(cls, settings: Settings, *, dsn: str | None = None, max_size: int | None = None) -> Store:
        """The store of a process of the orchestrator: the Postgres at `dsn` (default: the
        settings'), with the settings' pool size, timeouts and statement cache."""
        dsn = dsn or settings.database_url
        if not dsn:
            raise ConfigurationError("no Postgres: set ORCH_DATABASE_URL")
        return cls(
            dsn,
            max_size=max_size or settings.db_pool_size,
            idle_in_transaction_s=settings.db_idle_in_transaction_s,
            statement_timeout_s=settings.db_statement_timeout_s,
            lock_timeout_s=settings.db_lock_timeout_s,
            statement_cache_size=settings.db_statement_cache_size,
            log_transitions=settings.log_transitions,
        )

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                init=_init_connection,
                reset=_keep_session,
                server_settings=self._server_settings,
                statement_cache_size=self._statement_cache_size,
            )
        except (*_UNAVAILABLE, *_NOT_NOW) as exc:
            raise StoreUnavailable(f"cannot connect to Postgres at {redact_url(self.dsn)}: {exc}") from exc

    async def close(self) -> None:
        await self.statistics.close()
        await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection outside any transaction, its errors told as the store's: a
        transition that is one statement is atomic without BEGIN and COMMIT round trips."""
        if self._pool is None:
            raise NothingApplied("the store is not connected")
        try:
            conn = await self._pool.acquire()
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:  # any failure to connect at all
            raise NothingApplied(f"Postgres is unreachable: {exc}") from exc
        try:
            with _told_as_the_stores():
                try:
                    yield conn
                except _READ_ONLY:  # a demoted primary: the next use connects afresh
                    conn.terminate()
                    raise
        finally:
            # Returned in the background: a connection given back inside a transaction (an
            # error) is rolled back first, a round trip that is not the caller's wait, and a
            # caller cancelled meanwhile does not cut the return short.
            releasing = asyncio.create_task(self._release(self._pool, conn))
            self._releasing.add(releasing)
            releasing.add_done_callback(self._releasing.discard)

    @staticmethod
    async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        # Rolling back a connection that died meanwhile fails, and the pool closes it: what the
        # work did (or the error it raised) stands, and the next acquire connects anew.
        with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError, TimeoutError):
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction, for this package's modules (the transitions). A
        connection lost before the COMMIT left nothing applied (`NothingApplied`); one lost
        during the COMMIT may have (`StoreUnavailable`)."""
        async with self.connection() as conn:
            tx = conn.transaction()
            started = False
            try:
                await tx.start()
                started = True
                yield conn
            except BaseException as exc:
                if started:
                    with contextlib.suppress(Exception):  # a lost connection rolled it back already
                        await tx.rollback()
                if type(_translated(exc)) is StoreUnavailable:  # lost before its COMMIT: nothing applied
                    raise NothingApplied(f"Postgres is unreachable: {exc}") from exc
                raise
            await tx.commit()

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

    async def outbox_handover(self) -> None:
        async with self.connection() as conn:
            await conn.execute(Q["outbox_handover"])

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], Any]:
        """Call `callback(payload)` on every NOTIFY on `channel`, on a connection of its own (the
        pool drops a connection's callbacks when it takes it back); returns the coroutine
        function that closes it. A hint only: the listener may miss notifications while
        reconnecting, so its user also polls."""
        conn = await self._connection_of_its_own("listen on")
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))

        async def close() -> None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

        close.is_alive = lambda: not conn.is_closed()  # type: ignore[attr-defined]
        return close

    async def migrate(self) -> list[int]:
        """On a connection of its own: the pool does not reset the session a migration changes."""
        conn = await self._connection_of_its_own("migrate")
        try:
            with _told_as_the_stores():
                return await migrate.apply(conn)
        finally:
            await conn.close()

    async def _connection_of_its_own(self, purpose: str) -> asyncpg.Connection:
        """A connection outside the pool, with the pool's session settings and statement cache."""
        try:
            return await asyncpg.connect(
                self.dsn, server_settings=self._server_settings, statement_cache_size=self._statement_cache_size
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot {purpose} Postgres at {redact_url(self.dsn)}: {exc}") from exc
