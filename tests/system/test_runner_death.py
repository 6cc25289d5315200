"""A runner killed by SIGKILL takes its jobs' processes with it.

Capacity requeues a dead runner's jobs to other runners; a job process that outlived its runner
would then run twice at once (Guarantee 2). The runner is a real `orchestrator runner` process,
the orchestrator's services run in this process.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator.bus import Bus
from orchestrator.settings import Settings
from tests import factories
from tests.support import alive, eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings, ["capacity", "admission", "dispatch"], migrate=True)
    await runtime.start()
    assert runtime.store is not None
    await factories.pool(runtime.store, "default", labels=settings.runner_label_list())
    yield runtime
    await runtime.stop()


async def test_a_job_dies_with_its_killed_runner(
    services: Runtime, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = {
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_NAMESPACE": settings.namespace,
    }
    runner = ServiceProcess(
        "doomed",
        [],
        env,
        tmp_path / "logs",
        args=["runner", "--pool", "default", "--labels", settings.runner_labels, "--slots", "1", "--id", "doomed"],
        ready_text="runner doomed serving",
    )
    runner.start()
    try:
        await runner.ready()
        pid_file = tmp_path / "job.pid"
        # The job writes its pid and then outlives any test: only its runner's death can end it.
        command = ["sh", "-c", f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && exec sleep 600"]
        await bus.submit(json.dumps({"pool": "default", "payload": {"command": command}}).encode(), key="long")

        async def started() -> int | None:
            return int(pid_file.read_text()) if pid_file.exists() else None

        pid = await eventually(started, timeout=30, what="the job to start")
        assert alive(pid)
        runner.signal(signal.SIGKILL)
        await runner.wait_exit()

        async def gone() -> bool:
            return not alive(pid)

        await eventually(gone, timeout=10, what=f"job process {pid} to die with its runner")
    finally:
        await runner.close()
