"""Which instance should lead which dispatch shard (orchestrator/shards.py), and the history
checks the shard tests rely on (tests/history.py) catching what they name."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from orchestrator.shards import preferred_holders, shard_names
from tests import history


def test_one_shard_keeps_its_old_name_and_more_are_numbered() -> None:
    assert shard_names(1) == ["all"]
    assert shard_names(3) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="at least one"):
        shard_names(0)


@pytest.mark.parametrize(("shards", "instances"), list(itertools.product([1, 2, 3, 4, 7, 16], [1, 2, 3, 5])))
def test_every_shard_has_one_preferred_holder_and_loads_differ_by_one_at_most(shards: int, instances: int) -> None:
    names = shard_names(shards)
    live = [f"host-{i}" for i in range(instances)]
    holders = preferred_holders(names, live)
    assert sorted(holders) == sorted(names)
    load = Counter(holders.values())
    loads = [load.get(i, 0) for i in live]
    assert max(loads) - min(loads) <= 1
    assert holders == preferred_holders(names, list(reversed(live)))  # every instance computes the same


def test_three_instances_over_three_shards_lead_one_each() -> None:
    for trial in range(50):
        live = [f"dispatch-{trial}-{i}" for i in range(3)]
        assert sorted(Counter(preferred_holders(shard_names(3), live).values()).values()) == [1, 1, 1]


def test_an_instance_leaving_moves_few_shards() -> None:
    names = shard_names(16)
    live = [f"host-{i}" for i in range(4)]
    before = preferred_holders(names, live)
    after = preferred_holders(names, live[:-1])
    moved = [s for s in names if before[s] != after[s]]
    # The leaver's shards must move; rendezvous hashing keeps most of the rest where they were.
    assert {s for s in names if before[s] == live[-1]} <= set(moved)
    assert len(moved) <= len(names) // 2
    assert preferred_holders(names, []) == {}


def claim(seq: int, pool: str, epoch: int, shard: str) -> dict[str, object]:
    edge = {"old_state": "queued", "new_state": "assigned"}
    return {"seq": seq, "pool": pool, **edge, "claim_epoch": epoch, "shard": shard}


def test_the_history_checks_catch_two_dispatchers_and_claims_outside_their_shard() -> None:
    terms = {5: ("0", "a"), 6: ("0", "b"), 7: ("1", "c")}
    one_at_a_time = [claim(1, "p", 5, "0"), claim(2, "p", 5, "0"), claim(3, "p", 6, "0"), claim(4, "q", 7, "1")]
    assert history.interleaved_terms(one_at_a_time) == {}
    assert history.claims_outside_their_shard(one_at_a_time, terms) == []

    late = [*one_at_a_time, claim(5, "p", 5, "0")]  # the deposed term claimed again
    assert history.interleaved_terms(late) == {"p": [5, 6, 5]}
    wrong = [claim(1, "q", 5, "1"), claim(2, "q", 99, "1")]  # another shard's term; a term never issued
    assert history.claims_outside_their_shard(wrong, terms) == wrong
