"""A runner started on the side finds `orchestrator up` by its data dir, and finds it again after
`up` restarts (issue 20, point 3).

`up` writes its endpoints to `<data dir>/endpoints.json`; `orchestrator runner` with ORCH_NATS_URL
unset and the same ORCH_DATA_DIR joins that NATS. The embedded NATS keeps its port across
restarts of the data dir, so the runner, reconnecting on its own, serves the restarted system.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import endpoints
from bench.procs import ServiceProcess
from tests.support import FAST_FAILURE_ENV, call, submit
from tests.system import processes

pytestmark = pytest.mark.slow


@pytest.fixture
def data() -> Iterator[Path]:
    with processes.data_dir() as path:
        yield path


async def run_on_side(data: Path, name: str) -> None:
    """A job of pool `side` (only the side runner serves it) runs there and succeeds."""
    async with processes.api(data) as http:
        job = await submit(http, pool="side", payload={"command": ["echo", name]})
        done = await processes.ended(http, job["id"])
    assert (done["state"], done["runner_id"]) == ("succeeded", "side"), done


async def test_a_side_runner_finds_up_by_its_data_dir_and_again_after_a_restart(data: Path) -> None:
    up = processes.up(data)
    runner = ServiceProcess(
        "side",
        [],
        {**FAST_FAILURE_ENV, "ORCH_DATA_DIR": str(data)},
        data.parent,
        args=["runner", "--pool", "side", "--labels", "side", "--id", "side"],
        ready_text="runner side serving",
    )
    runner.env.pop("ORCH_NATS_URL", None)
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        before = endpoints.read(data)
        assert before is not None and before.nats
        async with processes.api(data) as http:
            status, body = await call(http, "PUT", "/v1/pools/side", json={"labels": ["side"]})
            assert status in (200, 201), body
        runner.start()
        await runner.ready()
        await run_on_side(data, "first")

        up.signal(signal.SIGTERM)
        assert await up.wait_exit(60) == 0
        up.start()
        await up.ready(processes.UP_READY_S)
        after = endpoints.read(data)
        assert after is not None
        assert after.nats == before.nats  # the same port: what the runner knows stays true
        await run_on_side(data, "after the restart")
    finally:
        await runner.close()
        await up.close()
