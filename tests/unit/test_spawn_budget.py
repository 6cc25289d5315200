"""How many workers a provisioned pool starts now (orchestrator/provisioning.py `spawn_budget`):
one per queued job that no free or starting runner will take, within the fleet cap and the pool's
max_concurrent headroom, and never fewer than none. Off by one here is a worker too many past a
cap, or a job left waiting; the fleets themselves are tests/integration/test_fleets_provisioned.py."""

from __future__ import annotations

import pytest

from orchestrator.provisioning import spawn_budget

# A pool with neither cap: every figure below changes one thing from this.
UNCAPPED = {
    "queued": 5,
    "free_slots": 0,
    "starting": 0,
    "live": 0,
    "max_workers": 0,  # 0 = no fleet cap
    "max_concurrent": -1,  # negative = unlimited
    "in_flight": 0,
}


@pytest.mark.parametrize(
    ("change", "budget"),
    [
        ({}, 5),
        ({"queued": 0}, 0),
        # Free slots and runners still starting take queued jobs first.
        ({"free_slots": 2}, 3),
        ({"starting": 2}, 3),
        ({"free_slots": 2, "starting": 3}, 0),
        ({"free_slots": 9}, 0),  # more room than jobs: none, not a negative number
        # The fleet cap counts live workers, busy or not.
        ({"max_workers": 4, "live": 1}, 3),
        ({"max_workers": 4, "live": 3}, 1),
        ({"max_workers": 4, "live": 4}, 0),
        ({"max_workers": 4, "live": 6}, 0),  # the cap lowered under a running fleet
        ({"max_workers": 0, "live": 1000}, 5),
        # max_concurrent: a worker past the headroom would only wait, and free or starting
        # runners use the headroom first.
        ({"max_concurrent": 3}, 3),
        ({"max_concurrent": 3, "in_flight": 2}, 1),
        ({"max_concurrent": 3, "in_flight": 3}, 0),
        ({"max_concurrent": 3, "in_flight": 1, "free_slots": 1}, 1),
        ({"max_concurrent": 3, "in_flight": 1, "starting": 2}, 0),
        ({"max_concurrent": 0}, 0),
        ({"max_concurrent": 2, "in_flight": 5}, 0),  # the cap lowered under running jobs
        # Both caps: the tighter one binds.
        ({"max_workers": 10, "live": 8, "max_concurrent": 20}, 2),
        ({"max_workers": 10, "live": 2, "max_concurrent": 4, "in_flight": 1}, 3),
    ],
)
def test_spawn_budget(change: dict[str, int], budget: int) -> None:
    assert spawn_budget(**{**UNCAPPED, **change}) == budget
