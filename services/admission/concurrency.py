"""Concurrency keys at the door: what a new job's `on_conflict` does to the other jobs of its key.

Admission decides a batch in one transaction holding the locks of the batch's keys (the claim
takes the same locks), so the key's live jobs it reads stay as read until the commit. `KeyBook`
replays the batch's jobs, in order, against them:

- `queue` (the default): nothing; the claim starts it when the key has room, oldest first.
- `cancel_pending`: the key's queued jobs (this batch's earlier ones too) are cancelled: it
  replaces them.
- `cancel_in_progress`: the key's assigned jobs are cancelled at once and its running ones told
  to stop (the cancel edge: their runners hear it); it starts once they have ended, as they hold
  the key until then.
- `reject`: refused (409 `concurrency_limit`, naming `concurrency_key`) when the key already has
  its limit of live jobs (queued, assigned or running): it would have to wait.

The limit is the key's (the least concurrency_limit of its live jobs, as the claim counts it) or
the new job's own, whichever is less. Pure: the transaction reads the keys and applies the
cancels it collects (`superseded`, `stopped`) after the batch's insert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from orchestrator.store import KeyLive, NewJob
from schemas.events import ErrorDetail
from schemas.jobs import JobSpec

# The modes that act on the key's other jobs, so admission must know which jobs they are.
ACTING = frozenset({"cancel_in_progress", "cancel_pending"})


def keys_of(specs: Iterable[JobSpec]) -> tuple[list[str], list[str]]:
    """The concurrency keys of `specs` (sorted), and those whose jobs must be named (a mode that
    cancels others)."""
    keyed = [s for s in specs if s.concurrency_key is not None]
    every = sorted({s.concurrency_key for s in keyed})  # type: ignore[misc]
    acting = sorted({s.concurrency_key for s in keyed if s.on_conflict in ACTING})  # type: ignore[misc]
    return every, acting


@dataclass
class _Key:
    """A key as the batch has left it so far."""

    queued: int
    held: int  # assigned or running (running ones told to stop still hold it until they end)
    limit: int | None
    queued_ids: list[UUID] = field(default_factory=list)
    assigned_ids: list[UUID] = field(default_factory=list)
    running_ids: list[UUID] = field(default_factory=list)


class KeyBook:
    def __init__(self, live: Mapping[str, KeyLive]) -> None:
        self._keys: dict[str, _Key] = {}
        for key, k in live.items():
            state = _Key(k.queued, k.held, k.lowest_limit)
            for job_id, job_state in k.members:
                {"queued": state.queued_ids, "assigned": state.assigned_ids, "running": state.running_ids}[
                    job_state
                ].append(job_id)
            self._keys[key] = state
        self.superseded: list[tuple[UUID, str]] = []  # (job, reason): to cancel, queued or assigned
        self.stopped: list[UUID] = []  # running: their runners are told to stop

    def admit(self, job: NewJob) -> ErrorDetail | None:
        """Apply `job`'s on_conflict to its key (it is being admitted), or say why it is refused."""
        if job.concurrency_key is None:
            return None
        name, mode, own = job.concurrency_key, job.on_conflict, job.concurrency_limit or 1
        key = self._keys.setdefault(name, _Key(0, 0, None))
        limit = own if key.limit is None else min(own, key.limit)
        if mode == "reject" and key.queued + key.held >= limit:
            message = (
                f"concurrency key {name!r} is at its limit: {key.queued + key.held} live jobs "
                f"({key.held} assigned or running, {key.queued} queued) of {limit}; on_conflict=reject does not wait"
            )
            return ErrorDetail(code="concurrency_limit", message=message, field="concurrency_key")
        why = f"superseded by job {job.id} (concurrency_key {name!r}, on_conflict={mode})"
        if mode == "cancel_pending":
            self.superseded += [(job_id, why) for job_id in key.queued_ids]
            key.queued, key.queued_ids = 0, []
        elif mode == "cancel_in_progress":
            self.superseded += [(job_id, why) for job_id in key.assigned_ids]
            self.stopped += key.running_ids
            key.held -= len(key.assigned_ids)  # ended at once; the running ones hold it until they end
            key.assigned_ids, key.running_ids = [], []
        key.queued += 1
        key.queued_ids.append(job.id)
        key.limit = limit
        return None
