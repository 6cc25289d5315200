"""The one way a pool's configuration changes, and the pools file.

A change is one transaction: lock the pool against admissions and dispatch, write the new
configuration, re-check the jobs it holds queued with the same rule admission uses
(`PoolConfig.unrunnable`) and fail those that can now never run (`unsatisfiable`: a job
transition, whose `finished` news the outbox carries). After the commit: `PoolUpdated`, which
services act on without a restart (the dispatcher wakes the pool: a raised cap or an unpause
frees capacity).

It lives in the core, not in a service, because two callers need it and neither may import a
service: the runtime applies `ORCH_POOLS_FILE` at start-up, the API applies `PUT`/`PATCH` at
run time.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.bus import Bus
from orchestrator.errors import ConfigurationError, NotFound
from orchestrator.store import Store
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
    store: Store, bus: Bus, name: str, *, config: PoolConfig | None = None, patch: dict[str, Any] | None = None
) -> PoolChange:
    """Replace the pool's configuration with `config` (creating it), or apply `patch` (only the
    given fields) to an existing pool. A patch that makes the configuration invalid raises
    pydantic's ValidationError and changes nothing; patching a missing pool raises NotFound."""
    if (config is None) == (patch is None):
        raise ValueError("give exactly one of config and patch")
    async with store.transitions.pool_change(name) as tx:
        previous = PoolConfig.from_row(tx.current) if tx.current else None
        if patch is not None:
            if previous is None:
                raise NotFound(f"pool {name!r} does not exist: create it with PUT first")
            config = PoolConfig.model_validate({**previous.model_dump(), **patch})
        assert config is not None
        if config == previous:
            return PoolChange(tx.current, created=False, changed=False, failed_jobs=0)  # type: ignore[arg-type]
        row = await tx.upsert(config.model_dump())
        failed = 0
        for labels, plan in await tx.queued_shapes():
            if config.unrunnable(name, labels, plan) is not None:
                failed += len(await tx.fail_unsatisfiable(labels, plan, UNSATISFIABLE))
    await bus.publish(
        bus.subjects.pool_updated(name),
        PoolUpdated(pool=name, config=config, previous=previous, failed_jobs=failed),
    )
    return PoolChange(row, created=previous is None, changed=True, failed_jobs=failed)


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
    """Apply each declared pool like a PUT (what the file omits takes its default)."""
    declared = load_pools_file(path)
    return [await change_pool(store, bus, name, config=config) for name, config in declared.pools.items()]
