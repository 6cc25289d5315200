"""A runner started on the side finds `orchestrator up` by its data dir, and finds it again after
`up` restarts (issue 20, point 3).

`up` writes its endpoints to `<data dir>/endpoints.json`; `orchestrator runner` with ORCH_NATS_URL
unset and the same ORCH_DATA_DIR joins that NATS, with the token the embedded NATS asks for
(issue 21, item 3), which the file carries (mode 0600) and the runner is not otherwise given. The
embedded NATS keeps its port and token across restarts of the data dir, so the runner,
reconnecting on its own, serves the restarted system.
"""

from __future__ import annotations

import signal
import stat
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
    for var in ("ORCH_NATS_URL", "ORCH_NATS_TOKEN"):
        runner.env.pop(var, None)
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        before = endpoints.read(data)
        assert before is not None and before.nats and before.nats_token
        token = before.nats_token.get_secret_value()
        assert token == (data / "nats.token").read_text().strip()
        assert stat.S_IMODE(endpoints.path(data).stat().st_mode) == 0o600
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
        # The same port and token: what the runner knows stays true.
        assert (after.nats, after.nats_token) == (before.nats, before.nats_token)
        await run_on_side(data, "after the restart")
    finally:
        await runner.close()
        await up.close()
