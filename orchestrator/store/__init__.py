"""The store: asyncpg pool, migrations, and the queue's SQL (named queries in `queries/`)."""

from orchestrator.store.store import AdmissionTx, ClaimStep, Fence, NewJob, PoolChangeTx, Rejection, Store

__all__ = ["AdmissionTx", "ClaimStep", "Fence", "NewJob", "PoolChangeTx", "Rejection", "Store"]
