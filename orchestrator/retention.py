"""Retention (issue 21): nothing the orchestrator keeps in Postgres grows for ever.

What goes, and when (`ORCH_RETENTION_S`, default 7 days):
- jobs that ended (succeeded, failed, timed_out, cancelled, expired) longer ago than the
  retention, and their idempotency keys with them: the same key after that admits a new job.
  A queued, assigned or running job is never deleted, whatever its age. (Their output is in
  JetStream, aged out there by `ORCH_LOG_RETENTION_S`.)
- rejections older than the retention;
- runners lost (or drained, then silent) for the retention, unless a pool's leader or holding a
  job; records of provisioned workers whose runner is gone for as long;
- job shapes as soon as no live job uses them, at every pass: a claim visits the shapes its
  runners match, so shapes left behind by finished jobs would make matching slower for good
  (a producer varying `tenant` makes a shape per job). A finished job does not pin its shape
  (migration 0012).
Elsewhere: the outbox deletes its rows once published (orchestrator/outbox.py); the local
provisioner deletes its workers' log files past the retention (app/local_provisioner.py).

How: pool by pool (its finished jobs, then its empty shapes), then table by table, in batches of
`batch` rows, each batch one statement and one short
transaction (queries/retention.sql), repeated until a batch comes back short: no lock is held
long and no single delete writes a table's worth of WAL.

Where it runs: in every capacity instance, every `ORCH_CAPACITY__PRUNE_INTERVAL_S` (the first
pass one interval after start), like capacity's sweeps. Not under the dispatch lease, because it
is safe in any number: batches take their rows `FOR UPDATE SKIP LOCKED`, so two pruners share
the work rather than wait for each other or delete a row twice, and a pool's shapes are deleted
under the pool's admission lock, one pruner at a time per pool and never between an admission's
shape look-up and its insert. A second pruner costs a few index probes a minute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from orchestrator import telemetry
from orchestrator.metrics import Metrics
from orchestrator.settings import Retention
from orchestrator.store import Store

# Rows per statement: small enough that a batch is milliseconds, large enough that a backlog goes quickly.
BATCH = 500

Table = Literal["jobs", "job_shapes", "rejections", "workers", "runners"]
TABLES: tuple[Table, ...] = get_args(Table)

_log = telemetry.get_logger("retention")


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted: rows per table, in how many statements."""

    rows: dict[Table, int]
    statements: int

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class Pruner:
    def __init__(
        self, retention: Retention, store: Store, *, batch: int = BATCH, metrics: Metrics | None = None
    ) -> None:
        self.retention_s = retention.retention_s
        self.store = store
        self.batch = batch
        self.metrics = metrics or Metrics()
        for table in TABLES:  # every table's series from the start, at 0
            self.metrics.pruned.labels(table)

    async def prune(self, now: datetime | None = None) -> Pruned:
        """One pass over every table; `now`: the time to judge ages by (the server's clock when
        None; tests pass one)."""
        rows: dict[Table, int] = dict.fromkeys(TABLES, 0)
        statements = 0

        async def drain(table: Table, delete: Callable[[], Awaitable[int]]) -> None:
            nonlocal statements
            while True:
                n = await delete()
                statements += 1
                rows[table] += n
                if n:
                    self.metrics.pruned.labels(table).inc(n)
                if n < self.batch:
                    return

        s, keep, batch = self.store, self.retention_s, self.batch
        for pool in [p["name"] for p in await s.pool_list()]:
            await drain("jobs", lambda pool=pool: s.prune_finished_jobs(pool, keep, batch, now))
            await drain("job_shapes", lambda pool=pool: s.prune_shapes(pool, batch))
        await drain("rejections", lambda: s.prune_rejections(keep, batch, now))
        await drain("workers", lambda: s.prune_workers(keep, batch, now))
        await drain("runners", lambda: s.prune_runners(keep, batch, now))
        pruned = Pruned(rows, statements)
        if pruned.total:
            counts = ", ".join(f"{n} {table}" for table, n in rows.items() if n)
            _log.info("pruned %s in %d statements", counts, statements, extra={"action": "prune"})
        return pruned
