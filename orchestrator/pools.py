"""The one way a pool's configuration changes, and the pools file.

A change is one transaction: lock the pool against admissions and dispatch, write the new
configuration, re-check the jobs it holds queued with the same rule admission uses
(`PoolConfig.unrunnable`) and fail those that can now never run (`unsatisfiable`: a job
transition, whose `finished` news the outbox carries). After the commit: `PoolUpdated`, which
services act on without a restart (the dispatcher wakes the pool: a raised cap or an unpause
frees capacity).

The pools file seeds and changes pools; the API changes them too, and neither undoes the other
behind its back. At every start each declared pool is created if absent; of an existing pool only
the fields the file changed since it was last applied are set (a three-way merge, as `kubectl
apply` does), so an operator's PATCH of another field survives a restart, and editing a field in
the file wins over an earlier PATCH of it. What the file said is kept with the pool
(`file_config`), in the change's transaction.

It lives in the core, not in a service, because two callers need it and neither may import a
service: the runtime applies `ORCH_POOLS_FILE` at start-up, the API applies `PUT`/`PATCH` at
run time.

A pool is deleted only while nothing uses it: no job queued, assigned or running, no runner
registered in it that is not lost (a live runner of a deleted pool would be refused at its next
registration and serve nothing, silently). Its ended jobs go with it: they refer to it. No
event: services read pools from Postgres, and the dispatcher's wake for a pool that is gone
finds `unknown_pool`. `default` is no exception: `up` creates it again at its next start, for
its local runner, and while that runner is alive it is in use like any other pool's.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError, NotFound, OrchestratorError
from orchestrator.store import Store
from orchestrator.store.pools import PoolUsage
from schemas.events import PoolUpdated, error_from_validation
from schemas.pools import PoolConfig, PoolsFile

UNSATISFIABLE = "unsatisfiable"


@dataclass(frozen=True)
class PoolChange:
    pool: dict[str, Any]  # the stored row after the change
    created: bool
    changed: bool
    failed_jobs: int


async def change_pool(
    store: Store,
    bus: Bus,
    name: str,
    *,
    config: PoolConfig | None = None,
    patch: dict[str, Any] | None = None,
    declared: PoolConfig | None = None,
) -> PoolChange:
    """Replace the pool's configuration with `config` (creating it), apply `patch` (only the
    given fields) to an existing pool, or apply what the pools file `declared` (see the module
    note). A configuration that is invalid (a patch's, or a `shard` past the number of dispatch
    shards) raises pydantic's ValidationError and changes nothing; patching a missing pool
    raises NotFound."""
    if sum(x is not None for x in (config, patch, declared)) != 1:
        raise ValueError("give exactly one of config, patch and declared")
    async with store.transitions.pool_change(name) as tx:
        previous = PoolConfig.from_row(tx.current) if tx.current else None
        if patch is not None:
            if previous is None:
                raise NotFound(f"pool {name!r} does not exist: create it with PUT first")
            config = PoolConfig.model_validate({**previous.model_dump(), **patch})
        if declared is not None:
            config = _merged(previous, tx.current["file_config"] if tx.current else None, declared)
        assert config is not None
        row, failed = tx.current, 0
        if config != previous:
            config = config.placed(await tx.dispatch_shards())
            row = await tx.upsert(config.model_dump())
            for labels, plan in await tx.queued_shapes():
                if config.unrunnable(name, labels, plan) is not None:
                    failed += len(await tx.fail_unsatisfiable(labels, plan, UNSATISFIABLE))
        said = declared.model_dump(mode="json") if declared is not None else None
        if said is not None and (tx.current is None or tx.current["file_config"] != said):
            await tx.record_file_config(said)
        if config == previous:
            return PoolChange(row, created=False, changed=False, failed_jobs=0)  # type: ignore[arg-type]
    await bus.publish(
        bus.subjects.pool_updated.at(name),
        PoolUpdated(pool=name, config=config, previous=previous, failed_jobs=failed),
    )
    return PoolChange(row, created=previous is None, changed=True, failed_jobs=failed)


class PoolInUse(OrchestratorError):
    """The pool still has live jobs or live runners (the message says how many)."""

    code = "in_use"


async def delete_pool(store: Store, name: str) -> dict[str, Any]:
    """Delete an unused pool (see the module note): the deleted row, with `deleted_jobs` (its
    ended jobs, deleted with it). NotFound, or PoolInUse saying what uses it; both change nothing."""
    deleted = await store.pool_delete(name)
    if deleted is None:
        raise NotFound(f"no pool {name!r}")
    if isinstance(deleted, PoolUsage):
        raise PoolInUse(_in_use(name, deleted))
    return deleted


def _in_use(name: str, usage: PoolUsage) -> str:
    held = []
    if usage.jobs:
        states = f"{usage.queued} queued, {usage.assigned} assigned, {usage.running} running"
        held.append(f"{usage.jobs} live job{'s' * (usage.jobs != 1)} ({states}): cancel them or let them end")
    if usage.runners:
        n = len(usage.runners)
        shown = ", ".join(usage.runners[:5]) + (", ..." if n > 5 else "")
        held.append(
            f"{n} live runner{'s' * (n != 1)} ({shown}): stop {'them' if n != 1 else 'it'} first "
            "(a stopped runner counts until it is declared lost, a runner TTL after its last heartbeat)"
        )
    return f"pool {name!r} is in use: {'; '.join(held)}"


def _merged(current: PoolConfig | None, last_said: dict[str, Any] | None, declared: PoolConfig) -> PoolConfig:
    """The pool after applying the file: all of it to a new pool; to an existing one, the fields
    the file changed since it last said anything (the first time: the fields it sets)."""
    if current is None:
        return declared
    said = declared.model_dump(mode="json")
    if last_said is None:
        changed = declared.model_fields_set
    else:
        changed = {field for field, value in said.items() if last_said.get(field) != value}
    return PoolConfig.model_validate({**current.model_dump(mode="json"), **{f: said[f] for f in changed}})


def load_pools_file(path: Path) -> PoolsFile:
    """Parse a pools file, JSON or TOML by its extension; errors name the file and the field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the pools file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigurationError(f"pools file {path}: name it *.json or *.toml")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"pools file {path} does not parse: {exc}") from exc
    try:
        return PoolsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"pools file {path}: {error_from_validation(exc).message}") from exc


async def apply_pools_file(store: Store, bus: Bus, path: Path) -> list[PoolChange]:
    """Apply each declared pool (see the module note): a new pool as declared (what the file
    omits takes its default); of an existing one, what the file changed since last applied."""
    declared = load_pools_file(path)
    changes = []
    for name, config in declared.pools.items():
        try:
            changes.append(await change_pool(store, bus, name, declared=config))
        except ValidationError as exc:
            why = error_from_validation(exc).message
            raise ConfigurationError(f"pools file {path}: pool {name!r}: {why}") from None
    return changes
