"""The store: asyncpg pool, migrations, the queue's SQL (named queries in `queries/`), and the job
state machine's transitions with their outbox (the `transitions` package)."""

from orchestrator.store.fleet import PoolMove, ShardTerm
from orchestrator.store.flow import FlowWait, RateLimit
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
    KeyLive,
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
    "FlowWait",
    "Handoff",
    "Heartbeat",
    "Job",
    "KeyLive",
    "NewJob",
    "OutboxRow",
    "PoolChangeTx",
    "PoolMove",
    "RateLimit",
    "Reconciled",
    "Rejection",
    "RunnerSpec",
    "ShardTerm",
    "Start",
    "Stop",
    "Store",
]
