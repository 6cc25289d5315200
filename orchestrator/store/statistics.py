"""Planner statistics brought up to date after a burst of admissions, not a minute later.

Postgres plans from the statistics of the last ANALYZE, which autovacuum runs once a table has
changed enough, looked at every `autovacuum_naptime` (a minute by default). Until then a burst of
new rows is invisible to the planner: 100,000 new tenants' shapes, planned as the few shapes the
statistics knew, made the claim's search for the shapes free runners can take AND the pool's
whole index into its label lookup (12 ms a step instead of 4, the head-of-line figure 8.5 times
the empty queue's). So admission counts what it adds, and once a table has grown by half of what
its statistics know (and by at least `FLOOR` rows; until this process's first ANALYZE of it, by
`FLOOR`), this process analyzes it in the background: a burst costs a few ANALYZEs (each samples
at most 30,000 rows), steady growth leaves it to autovacuum. Best effort: a failed or cut-short
ANALYZE changes nothing but how fresh the statistics are, and the next burst tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Literal

from orchestrator.store.queries import Q

if TYPE_CHECKING:
    from orchestrator.store.store import Store

Table = Literal["jobs", "job_shapes"]
# Rows a table must gain before it is analyzed, whatever its size.
FLOOR: dict[Table, int] = {"jobs": 10_000, "job_shapes": 1_000}
# ... and this share of the rows its statistics know.
SHARE = 0.5

log = logging.getLogger("orchestrator.store")


class FreshStatistics:
    """Rows added per table since this process last analyzed it; an ANALYZE when a burst grew it."""

    def __init__(self, store: Store, *, enabled: bool = True) -> None:
        self._store = store
        self.enabled = enabled
        self._added: dict[Table, int] = dict.fromkeys(FLOOR, 0)
        self._threshold: dict[Table, int] = dict(FLOOR)
        self._running: dict[Table, asyncio.Task[None]] = {}

    def added(self, table: Table, rows: int) -> None:
        """`rows` committed to `table`; analyzes it (in the background) once they make a burst."""
        if not self.enabled:
            return
        self._added[table] += rows
        if self._added[table] < self._threshold[table] or table in self._running:
            return
        self._added[table] = 0
        task = asyncio.create_task(self._analyze(table), name=f"store.analyze.{table}")
        self._running[table] = task
        task.add_done_callback(lambda _: self._running.pop(table, None))

    async def _analyze(self, table: Table) -> None:
        try:
            async with self._store.connection() as conn:
                await conn.execute(Q[f"{table}_analyze"])
                known = await conn.fetchval(Q["table_rows_known"], table)
            self._threshold[table] = max(FLOOR[table], int(max(known or 0, 0) * SHARE))
        except Exception as exc:  # best effort: autovacuum analyzes it later anyway
            log.debug("analyzing %s after a burst failed: %s", table, exc)

    async def close(self) -> None:
        self.enabled = False  # no ANALYZE begins on a store being closed
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
