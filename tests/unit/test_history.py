"""The transition history's readings the system tests rely on: how long queued work waited for
dispatch with a slot free (a recovery's length), checked on hand-written histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.history import dispatch_stalls

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _history(*events: tuple[float, str, str | None, str]) -> list[dict[str, Any]]:
    """(seconds, job, old state, new state) in the order they happened."""
    return [
        {"seq": i, "at": T0 + timedelta(seconds=s), "job_id": job, "pool": "p", "old_state": old, "new_state": new}
        for i, (s, job, old, new) in enumerate(events)
    ]


def test_a_wait_with_a_free_slot_is_a_stall_until_the_next_assignment() -> None:
    transitions = _history(
        (0.0, "a", None, "queued"),
        (0.1, "a", "queued", "assigned"),
        (0.2, "b", None, "queued"),  # the cap (1) is taken: this wait is no stall
        (1.0, "a", "assigned", "running"),
        (2.0, "a", "running", "succeeded"),  # a slot is free: b waits from here...
        (9.5, "b", "queued", "assigned"),  # ...until dispatch takes it 7.5 s later
        (9.6, "c", None, "queued"),  # the cap is taken again
        (12.0, "b", "assigned", "queued"),  # a hand-off undone: c and b wait, a slot free
    )
    # The first: from admission to claim. The last never ended: left out.
    assert dispatch_stalls(transitions, {"p": 1}) == [(T0, 0.1), (T0 + timedelta(seconds=2), 7.5)]


def test_no_queued_job_no_stall_and_no_cap_no_limit() -> None:
    transitions = _history(
        (0.0, "a", None, "queued"),
        (3.0, "a", "queued", "assigned"),
        (4.0, "a", "assigned", "cancelled"),
        (9.0, "b", None, "queued"),
        (9.5, "b", "queued", "assigned"),
    )
    assert dispatch_stalls(transitions, {}) == [(T0, 3.0), (T0 + timedelta(seconds=9), 0.5)]
