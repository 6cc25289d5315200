"""A runner agent as a process of its own: `orchestrator runner`, and each worker the local
provisioner forks (started by this function call, not by an argv). Imports only the bus and the
runner service: a provisioned worker starts per job, and every other import costs it time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app import endpoints
from app.main_loop import Signals
from orchestrator import telemetry
from orchestrator.bus import Bus
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from services.runner import Runner


@dataclass(frozen=True)
class RunnerOptions:
    runner_id: str
    pool: str = "default"
    labels: list[str] | None = None  # None: the settings' (ORCH_RUNNER_LABELS)
    slots: int = 4
    taints: list[str] = field(default_factory=list)
    # Take exactly one job, report it and exit; give up if none came within the idle timeout.
    once: bool = False
    idle_timeout_s: float = 60.0


async def serve_runner(settings: Settings, options: RunnerOptions) -> int:
    """Serve the pool until SIGINT / SIGTERM (or, once, until the job has been reported)."""
    if not settings.nats_url:
        raise OrchestratorError(
            "set ORCH_NATS_URL to the NATS the orchestrator uses, or ORCH_DATA_DIR to the data dir of "
            f"a running `orchestrator up` (there is no {endpoints.path(settings.data_dir.absolute())})"
        )
    telemetry.setup("orchestrator-runner")
    bus = Bus.from_settings(settings, name=f"runner-{options.runner_id}")
    await bus.connect()
    runner = Runner(
        settings.timings,
        settings.log_limits,
        bus,
        runner_id=options.runner_id,
        pool=options.pool,
        labels=settings.runner_label_list() if options.labels is None else options.labels,
        slots=options.slots,
        taints=options.taints,
        once=options.once,
        idle_timeout_s=options.idle_timeout_s if options.once else None,
    )
    signals = None  # until started, Ctrl-C interrupts the start
    try:
        await runner.start()
        signals = Signals()
        print(f"runner {options.runner_id} serving pool {options.pool} with {options.slots} slots", flush=True)
        waits = [asyncio.ensure_future(signals.stop.wait()), asyncio.ensure_future(runner.finished.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        await (runner.stop() if signals is None else signals.stopping(runner.stop(), runner.hurry))
        await bus.close()
    return 0
