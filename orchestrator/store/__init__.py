"""The store: asyncpg pool, migrations, and the queue's SQL (named queries in `queries/`)."""

from orchestrator.store.store import AdmitOutcome, ClaimStep, Fence, NewJob, Store

__all__ = ["AdmitOutcome", "ClaimStep", "Fence", "NewJob", "Store"]
