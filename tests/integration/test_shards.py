"""Dispatch shards in Postgres: where a pool goes (a stable hash of its name, or its explicit
`shard`), what a change of the number of shards moves, the `shard` field at every door, and the
claim's check that a pool is its fence's shard's."""

from __future__ import annotations

import zlib
from pathlib import Path

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings
from orchestrator.shards import shard_names
from orchestrator.store import Fence, RunnerSpec, Store
from tests import factories
from tests.support import call, database_rows

NAMES = [f"pool-{i}" for i in range(24)] + ["default", "gpu", "ünïcode"]


def by_hash(name: str, shards: int) -> str:
    """The documented rule (README, migration 0015): CRC-32 of the UTF-8 name, modulo the count."""
    return shard_names(shards)[zlib.crc32(name.encode()) % shards]


async def shards_of(store: Store) -> dict[str, str]:
    return await store.pool_shards()


async def test_pools_map_to_shards_by_a_stable_hash_of_their_name(store: Store) -> None:
    for name in NAMES:
        await factories.pool(store, name)
    assert set((await shards_of(store)).values()) == {"all"}  # one shard: every pool, as always

    moved = await store.dispatch_shards_set(3)
    assert await shards_of(store) == {name: by_hash(name, 3) for name in NAMES}
    assert {m.pool for m in moved} == set(NAMES) and {m.before for m in moved} == {"all"}
    assert set((await shards_of(store)).values()) == {"0", "1", "2"}  # spread, not piled up
    assert await store.dispatch_shards_set(3) == []  # the same number moves nothing

    # A pool created now lands where the same rule says, and stays there across changes.
    await factories.pool(store, "late")
    await factories.pool(store, "late", max_concurrent=5)
    assert (await store.pool_shards("late")) == {"late": by_hash("late", 3)}

    moved = await store.dispatch_shards_set(4)
    assert await shards_of(store) == {name: by_hash(name, 4) for name in [*NAMES, "late"]}
    assert all(m.before == by_hash(m.pool, 3) and m.after == by_hash(m.pool, 4) for m in moved)
    assert {m.pool for m in moved} == {n for n in [*NAMES, "late"] if by_hash(n, 3) != by_hash(n, 4)}

    await store.dispatch_shards_set(1)
    assert set((await shards_of(store)).values()) == {"all"}


async def test_an_explicit_shard_wins_over_the_hash_while_it_exists(store: Store) -> None:
    await store.dispatch_shards_set(4)
    name = next(n for n in NAMES if by_hash(n, 4) != "3" and by_hash(n, 2) != by_hash(n, 4))
    await factories.pool(store, name, shard=3)
    assert await store.pool_shards(name) == {name: "3"}
    await store.dispatch_shards_set(2)  # shard 3 is gone: by the hash until it exists again
    assert await store.pool_shards(name) == {name: by_hash(name, 2)}
    await store.dispatch_shards_set(4)
    assert await store.pool_shards(name) == {name: "3"}
    await store.dispatch_shards_set(1)
    assert await store.pool_shards(name) == {name: "all"}


@pytest.fixture
async def two_shards(store: Store) -> Store:
    """Pool `p` in shard 0 and `q` in shard 1, each with a runner and queued jobs."""
    await store.dispatch_shards_set(2)
    for pool, shard in (("p", 0), ("q", 1)):
        await factories.pool(store, pool, max_concurrent=10, max_active=-1, shard=shard)
        await store.transitions.register_runner(RunnerSpec(f"r-{pool}", pool, [], 10), [])
        await factories.queue(store, 3, pool)
    return store


async def assigned(store: Store, pool: str) -> int:
    jobs = await store.job_list(pool=pool, state="assigned", key=None, limit=100)
    return len(jobs)


async def jobs(store: Store) -> list[tuple[object, ...]]:
    listed = await store.job_list(pool=None, state=None, key=None, limit=100)
    return sorted((j["id"], j["state"], j["runner_id"], j["claim_epoch"], j["attempt"]) for j in listed)


async def test_a_claim_for_a_pool_of_another_shard_is_refused_and_changes_nothing(two_shards: Store) -> None:
    store = two_shards
    zero = Fence("0", await store.dispatch_epoch_issue("0", "a"), "a")
    one = Fence("1", await store.dispatch_epoch_issue("1", "b"), "b")
    before = await jobs(store)
    refused = await store.transitions.claim("q", 10, zero)  # a valid term, of the other shard
    assert (refused.status, refused.assignments) == ("wrong_shard", [])
    assert await jobs(store) == before
    assert (await store.transitions.claim("q", 10, one)).status == "dispatched"
    assert (await store.transitions.claim("p", 10, zero)).status == "dispatched"
    assert (await assigned(store, "p"), await assigned(store, "q")) == (3, 3)


async def test_moving_a_pool_to_another_shard_fences_its_former_holder(two_shards: Store) -> None:
    store = two_shards
    zero = Fence("0", await store.dispatch_epoch_issue("0", "a"), "a")
    one = Fence("1", await store.dispatch_epoch_issue("1", "b"), "b")
    assert (await store.transitions.claim("p", 1, zero)).status == "dispatched"
    await factories.pool(store, "p", max_concurrent=10, max_active=-1, shard=1)  # p moves to shard 1
    assert (await store.transitions.claim("p", 1, zero)).status == "wrong_shard"
    assert (await store.transitions.claim("p", 1, one)).status == "dispatched"


async def test_a_changed_shard_count_fences_the_old_holders(store: Store) -> None:
    await factories.pool(store, "p", max_concurrent=10, max_active=-1)
    await store.transitions.register_runner(RunnerSpec("r", "p", [], 10), [])
    await factories.queue(store, 4, "p")
    old = Fence("all", await store.dispatch_epoch_issue("all", "old"), "old")  # one shard: every pool
    assert (await store.transitions.claim("p", 1, old)).status == "dispatched"

    await store.dispatch_shards_set(3)  # a dispatch instance started with ORCH_DISPATCH_SHARDS=3
    assert (await store.transitions.claim("p", 1, old)).status == "wrong_shard"
    shard = by_hash("p", 3)
    new = Fence(shard, await store.dispatch_epoch_issue(shard, "new"), "new")
    assert (await store.transitions.claim("p", 1, new)).status == "dispatched"
    # Epochs come from one sequence: the new shard's first term is newer than the old one's.
    assert new.epoch > old.epoch


@pytest.mark.parametrize(("method", "body"), [("PUT", {"shard": 3}), ("PATCH", {"shard": 7}), ("PUT", {"shard": -1})])
async def test_a_shard_that_does_not_exist_is_422_naming_shard_and_changes_nothing(
    http: aiohttp.ClientSession, store: Store, method: str, body: dict[str, int]
) -> None:
    await store.dispatch_shards_set(3)
    status, pool = await call(http, "PUT", "/v1/pools/gpu", json={"shard": 2})
    assert (status, pool["shard"], pool["dispatch_shard"]) == (201, 2, "2")
    before = await database_rows(store)
    status, answer = await call(http, method, "/v1/pools/gpu", json=body)
    assert status == 422, answer
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid", "shard")
    assert "shard" in answer["error"]["message"]
    assert await database_rows(store) == before


async def test_the_pools_file_names_a_shard_out_of_range(settings: Settings, store: Store, tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text('[pools.gpu]\nshard = 1\nlabels = ["gpu"]\n')
    runtime = Runtime(settings.model_copy(update={"pools_file": path}), ["admission"])
    with pytest.raises(ConfigurationError, match=r"pools\.toml: pool 'gpu': shard: .*dispatch shards, 1"):
        await runtime.start()
    assert await store.pool_get("gpu") is None

    await store.dispatch_shards_set(2)
    runtime = Runtime(settings.model_copy(update={"pools_file": path}), ["admission"])
    await runtime.start()
    await runtime.stop()
    assert await store.pool_shards("gpu") == {"gpu": "1"}
