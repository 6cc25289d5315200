"""A runner whose NATS goes away rides it out quietly and still stops cleanly (issue 20).

A real `orchestrator runner` process on a NATS server of the test's own, stopped and started
again on the same port; capacity runs in this process. Per outage the runner says one WARNING
when it loses the connection and one INFO when it is back, not a line per reconnect attempt
(four a second); SIGINT during an outage stops it with exit code 0 and no traceback.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator.embedded import EmbeddedNats
from orchestrator.settings import Settings
from tests import factories
from tests.support import eventually
from tests.system.processes import count, records

pytestmark = pytest.mark.slow


@pytest.fixture
async def capacity(settings: Settings, own_nats: EmbeddedNats) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings.model_copy(update={"nats_url": own_nats.url}), ["capacity"])
    await runtime.start()
    assert runtime.store is not None
    await factories.pool(runtime.store, "default", labels=settings.runner_label_list())
    yield runtime
    await runtime.stop()


async def test_a_runner_rides_out_nats_outages_quietly_and_stops_during_one(
    settings: Settings, own_nats: EmbeddedNats, capacity: Runtime, tmp_path: Path
) -> None:
    env = {
        "ORCH_NATS_URL": own_nats.url,
        "ORCH_NAMESPACE": settings.namespace,
        "ORCH_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "ORCH_RUNNER_TTL_S": str(settings.runner_ttl_s),
        "ORCH_LOG_LEVEL": "DEBUG",  # to see the attempts it makes, each at DEBUG
    }
    args = ["runner", "--pool", "default", "--labels", settings.runner_labels, "--id", "side"]
    runner = ServiceProcess("side", [], env, tmp_path / "logs", args=args, ready_text="runner side serving")
    runner.start()

    async def outage(n: int) -> None:
        """Stop NATS: the runner tries again and again, and says so once (this is outage `n`)."""
        attempts = count(runner, None, "ConnectionRefusedError", "orchestrator.bus")
        await own_nats.stop()

        async def retried() -> bool:
            return count(runner, None, "ConnectionRefusedError", "orchestrator.bus") >= attempts + 3

        await eventually(retried, timeout=30, what="the runner to try to reconnect three times")
        assert count(runner, "warning") == n, [r for r in records(runner) if r["level"] == "warning"]
        assert count(runner, "warning", "lost the connection", "orchestrator.bus") == n

    async def last_seen() -> Any:
        assert capacity.store is not None
        runner_row = await capacity.store.runner_get("side")
        assert runner_row is not None
        return runner_row.last_seen_at

    try:
        await runner.ready()
        await outage(1)
        seen = await last_seen()
        await own_nats.start()  # the same port and store

        async def back() -> bool:
            return count(runner, "info", "reconnected to", "orchestrator.bus") == 1

        await eventually(back, timeout=30, what="the runner to say it reconnected")

        async def heard_again() -> bool:
            return await last_seen() > seen

        await eventually(heard_again, timeout=30, what="capacity to hear the runner again")

        await outage(2)
        runner.signal(signal.SIGINT)  # while NATS is away
        assert await runner.wait_exit(30) == 0, runner.log()[-3000:]
        assert "Traceback" not in runner.log(), runner.log()[-3000:]
        assert count(runner, "error") == 0
        assert count(runner, "info", "reconnected to", "orchestrator.bus") == 1
    finally:
        await runner.close()
