"""The take protocol's rule for who holds a job (services/api/take.py): what every take answers
from, on every API process; the protocol itself is tests/integration/test_take.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.api.take import held_by


def test_an_assignment_is_held_once_acknowledged() -> None:
    """An `assigned` row alone may be a hand-off still in flight; once its runner acknowledged it
    (recorded in Postgres, so every take on every API process sees it, a retried one too), or
    started it, the runner holds it. A requeue clears the acknowledgement with the assignment."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assigned = {"state": "assigned", "runner_id": "r-1", "assigned_at": t0, "acked_at": None}
    assert held_by(assigned) is None
    assert held_by({**assigned, "acked_at": t0 + timedelta(seconds=1)}) == "r-1"
    assert held_by({**assigned, "state": "running"}) == "r-1"
    assert held_by({**assigned, "state": "queued", "runner_id": None}) is None
