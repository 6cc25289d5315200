"""Provisioners: how a pool gets an ephemeral worker per job (seed 001): the contract a plugin
implements, how a pool's provisioner is found, and how many workers to start. The bundled `local`
one is in `app/local_provisioner.py`.

A provisioned worker is a one-shot runner: it registers into the pool under the runner id it was
given, the dispatcher hands it one job like any runner, it reports the job and exits. So its job
counts against the pool's `max_concurrent` exactly like a pull runner's; what a provisioner adds
is the fleet cap (`max_workers`), counted from the provisioner itself before every spawn.

A provisioner is any object with the four methods of `Provisioner`, made by a factory
`factory(ctx: ProvisionerContext) -> Provisioner`, one instance per pool. A pool names its
provisioner (`pools.provisioner`), resolved in this order:
1. a name given to the runtime (`Runtime(provisioners={...})`; bundled: `local`);
2. an installed entry point in the group `orchestrator.provisioners` (a package ships
   `[project.entry-points."orchestrator.provisioners"] k8s = "acme_k8s:make"`);
3. an import path `package.module:factory`.
A Kubernetes Jobs provisioner, say, creates a Job per `spawn` whose pod runs
`orchestrator runner --once --pool <pool> --id <request.runner_id> --labels ...` with
`ORCH_NATS_URL` / `ORCH_NAMESPACE` from the context and its `env` (timings, and the `ORCH_NATS_*`
credentials: those belong in a Secret), labels it with the pool, and counts live
workers with a label-selected list of Jobs that are not finished (raising when the API call
fails); `stop` deletes the Job. ECS is the same with RunTask / ListTasks / StopTask.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from orchestrator.errors import ConfigurationError
from orchestrator.settings import Retention

ENTRY_POINT_GROUP = "orchestrator.provisioners"


@dataclass(frozen=True)
class WorkerRequest:
    """One worker for one queued job of `pool`: it must register as `runner_id` with `labels`."""

    pool: str
    runner_id: str
    labels: list[str]


@runtime_checkable
class Provisioner(Protocol):
    """A pool's source of one-shot workers: the whole interface a plugin implements.

    - Every method runs on the orchestrator's event loop: never block it (an async client, or
      `asyncio.to_thread` around a blocking one).
    - One process calls it at a time (the dispatch lease holder), one reconcile at a time per
      pool: count, then spawn. No locking is needed against a second caller.
    - `spawn` returns once the start is requested, not when the worker has registered; a worker
      that has not registered within the start timeout is given to `stop`. A raised error fails
      that spawn only; the next wake tries again.
    - `count_live` is the fleet cap's truth (seed 001): count from what the provisioner itself
      sees (its child processes, the cluster's API), including workers still starting.
    - Calling `ProvisionerContext.worker_exited` when a worker ends is optional (it re-counts at
      once rather than at the next sweep).
    """

    async def spawn(self, request: WorkerRequest) -> str:
        """Start a worker; return the provisioner's handle for it (given to `stop`)."""

    async def count_live(self) -> int:
        """Workers of this pool starting or running now. Raise when they cannot be counted: the
        caller then spawns nothing (never blind past the cap) and retries later."""

    async def stop(self, worker: str) -> None:
        """Stop a worker, given the handle `spawn` returned (one that never registered, or at
        shutdown). Stopping one that has already ended is not an error."""

    async def close(self) -> None:
        """At shutdown: release what this process holds. Workers of a remote fleet keep running
        their jobs; a local provisioner stops its child processes."""


@dataclass(frozen=True)
class ProvisionerContext:
    """What a factory gets: the pool, how its workers reach the orchestrator (`env`: variables
    a worker must have, its NATS credentials among them), a callback to call when a worker exits
    (optional to use: the caller also re-counts on a timer), and how long what a worker leaves
    behind (its log) is kept (`ORCH_RETENTION_S`)."""

    pool: str
    nats_url: str
    namespace: str
    data_dir: Path
    worker_exited: Callable[[str], None] = lambda worker: None
    env: Mapping[str, str] = field(default_factory=dict)
    retention_s: float = Retention().retention_s


ProvisionerFactory = Callable[[ProvisionerContext], Provisioner]


def resolve(name: str, registry: Mapping[str, ProvisionerFactory]) -> ProvisionerFactory:
    """The factory `name` refers to (see the module docstring), or a ConfigurationError saying why not."""
    if name in registry:
        return registry[name]
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    factory: Any = None
    try:
        if found:
            factory = next(iter(found)).load()
        elif ":" in name:
            module, _, attr = name.partition(":")
            factory = getattr(importlib.import_module(module), attr)
    except (Exception, SystemExit) as exc:  # anything a module's import may raise, not only ImportError
        raise ConfigurationError(f"provisioner {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if factory is not None:
        if not callable(factory):
            raise ConfigurationError(f"provisioner {name!r} is not a factory: it is a {type(factory).__name__}")
        return factory  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"provisioner {name!r} is not known: use one of {sorted(registry)}, an entry point in the group "
        f"{ENTRY_POINT_GROUP!r}, or an import path 'package.module:factory'"
    )


def spawn_budget(
    *,
    queued: int,
    free_slots: int,
    starting: int,
    live: int,
    max_workers: int,
    max_concurrent: int,
    in_flight: int,
) -> int:
    """How many workers to start now: one per queued job no free or starting runner will take,
    within the fleet cap (`max_workers`, 0 = none) and the pool's `max_concurrent` headroom (a
    worker past it would only wait)."""
    budget = queued - free_slots - starting
    if max_workers > 0:
        budget = min(budget, max_workers - live)
    if max_concurrent >= 0:
        budget = min(budget, max_concurrent - in_flight - free_slots - starting)
    return max(budget, 0)
