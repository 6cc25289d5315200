"""`blocked_by`'s rule (services/api/blocked.py) for a case Postgres shows only for an instant:
tests/integration/test_blocked_by.py sees every other reason through the API."""

from __future__ import annotations

import pytest

from services.api.blocked import blocked_by


@pytest.mark.parametrize(
    ("ahead", "drained", "reason", "wait"),
    [(0, 0, "dispatching", 0.0), (3, 12, "queued_behind", 20.0), (3, 0, "queued_behind", None)],
)
def test_nothing_holds_it_but_the_jobs_ahead(ahead: int, drained: int, reason: str, wait: float | None) -> None:
    # Caught in Postgres only for an instant (the dispatcher takes such a job at once): the rule itself.
    numbers = {
        "pool": {"paused": False, "max_concurrent": 20},
        "in_flight": 1,
        "runners": 1,
        "matching": 1,
        "matching_slots": 4,
        "matching_busy": 1,
        "competing": ahead + 1,
        "ahead": ahead,
        "backoff_s": 0.0,
        "drained_last_minute": drained,
    }
    b = blocked_by({"pool": "default", "labels": []}, numbers, leader=True, shard="all", unknown=None)
    assert (b.reason, b.constraints, b.position, b.estimated_wait_s) == (reason, [], ahead, wait)
