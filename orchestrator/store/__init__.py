"""The store: asyncpg pool, migrations, the queue's SQL (named queries in `queries/`), and the job
state machine's transitions with their outbox (the `transitions` package)."""

from orchestrator.store.fleet import PoolMove, ShardTerm
from orchestrator.store.rows import Job
from orchestrator.store.store import OutboxRow, Store
from orchestrator.store.transitions import (
    AdmissionTx,
    Cancel,
    ClaimStep,
    End,
    Fence,
    Handoff,
    Heartbeat,
    NewJob,
    PoolChangeTx,
    Reconciled,
    Rejection,
    RunnerSpec,
    Start,
    Stop,
)

__all__ = [
    "AdmissionTx",
    "Cancel",
    "ClaimStep",
    "End",
    "Fence",
    "Handoff",
    "Heartbeat",
    "Job",
    "NewJob",
    "OutboxRow",
    "PoolChangeTx",
    "PoolMove",
    "Reconciled",
    "Rejection",
    "RunnerSpec",
    "ShardTerm",
    "Start",
    "Stop",
    "Store",
]
