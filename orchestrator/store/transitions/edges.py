"""How an edge runs: in one transaction, run again where that is safe (a deadlock; Postgres
unavailable, when nothing was applied or the edge is idempotent), its news counted and its jobs
logged once it committed. `Transitions` (this package) builds every edge on these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from orchestrator.errors import NothingApplied, StoreError, StoreUnavailable
from orchestrator.retrying import Backoff
from orchestrator.store.rows import Job
from orchestrator.store.transitions import news
from orchestrator.store.transitions.journal import Journal

if TYPE_CHECKING:
    from orchestrator.store.store import Store

T = TypeVar("T")

# How long an edge is retried while Postgres is unavailable (a restart, a failover, a lock held
# past lock_timeout), when running it again is safe: a runner's request waits 5 s for its answer.
UNAVAILABLE_RETRY_S = 5.0


class Edges:
    """The store and the journal every edge uses, and the two ways an edge runs."""

    def __init__(self, store: Store, journal: Journal | None = None) -> None:
        self._store = store
        self._journal = journal or Journal()  # a log line per job per committed edge

    async def _transact(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        one_statement: bool = False,
        idempotent: bool = False,
    ) -> T:
        """`work` in one transaction (one statement is one by itself: no BEGIN and COMMIT round
        trips). Batched edges lock their rows in job id order (the callers sort), but a batch of
        one edge can still meet another's rows in a different order: Postgres then aborts one
        transaction, and the edge, run again, re-checks its legality.

        Postgres unavailable (restarting, failing over, a lock held past lock_timeout): run
        again with a backoff, within `UNAVAILABLE_RETRY_S`, when that is safe: nothing was applied
        (`NothingApplied`), or the edge is `idempotent`: run again after a COMMIT whose answer
        was lost, its WHERE finds the edge taken and it changes nothing (the edges below say
        why each is, or is not)."""
        deadlocks = 0
        backoff = Backoff(UNAVAILABLE_RETRY_S)
        while True:
            try:
                if one_statement:
                    async with self._store.connection() as conn:
                        return await work(conn)
                async with self._store.transaction() as conn:
                    return await work(conn)
            except StoreUnavailable as exc:
                if not (idempotent or isinstance(exc, NothingApplied)):
                    raise
                await backoff.wait_or_raise(exc)
            except StoreError as exc:
                deadlocks += 1
                if not isinstance(exc.__cause__, asyncpg.DeadlockDetectedError) or deadlocks == news.DEADLOCK_RETRIES:
                    raise

    async def _edge(
        self,
        query: str,
        args: Sequence[Any],
        *,
        verb: str | None = None,
        why: str | None = None,
        logged: bool = True,
        idempotent: bool = False,
    ) -> list[Job]:
        """An edge that is one statement, writing its own news; logged (see journal.py) unless
        the caller logs it."""
        jobs = await self._transact(
            lambda conn: news.apply(conn, query, args), one_statement=True, idempotent=idempotent
        )
        if jobs:
            news.committed()
            if logged:
                self._journal.record(jobs, verb=verb, why=why)
        return jobs
