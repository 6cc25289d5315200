"""The real CLI refuses to serve the api beyond loopback with no token (issue 21, point 1): it
exits with status 2 and one paragraph naming the token variables and ORCH_ALLOW_INSECURE, before
it starts anything; with ORCH_ALLOW_INSECURE=true it serves, and says at start that the api is
open. The rule itself (which hosts are loopback) is tests/unit/test_exposure.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.procs import ServiceProcess, service_env
from orchestrator.settings import Settings
from tests.system import processes

pytestmark = pytest.mark.slow

VARIABLES = ("ORCH_PRODUCER_TOKENS", "ORCH_RUNNER_TOKENS", "ORCH_OPERATOR_TOKENS", "ORCH_ALLOW_INSECURE")


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "host"),
    [(["serve", "api"], "0.0.0.0"), (["serve", "all"], "::"), (["up"], "10.1.2.3")],
)
def test_an_open_door_is_refused_at_start(args: list[str], host: str, settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "data"
    servers = {} if args == ["up"] else service_env(settings)
    result = cli(args, {**servers, "ORCH_DATA_DIR": str(data), "ORCH_HTTP_HOST": host, "ORCH_HTTP_PORT": "0"})
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith(f"orchestrator: refusing to serve the api on {host}:0 with no token"), message
    assert "\n" not in message  # one paragraph, nothing else said
    assert [v for v in VARIABLES if v not in message] == []
    assert result.stdout == ""
    assert not data.exists()  # refused before anything started: `up` made no data dir


async def test_allow_insecure_serves_and_warns_at_every_start(settings: Settings, tmp_path: Path) -> None:
    env = {**service_env(settings), "ORCH_HTTP_HOST": "0.0.0.0", "ORCH_HTTP_PORT": "0", "ORCH_ALLOW_INSECURE": "true"}
    for var in ("ORCH_PRODUCER_TOKENS", "ORCH_RUNNER_TOKENS", "ORCH_OPERATOR_TOKENS"):
        env[var] = ""
    served = ServiceProcess("open-api", ["admission", "api"], env, tmp_path, ready_text="orchestrator ready http=")
    for start in (1, 2):
        served.start()
        try:
            await served.ready()
            announced = served.log().rsplit("orchestrator ready http=", 1)[1].split()[0]
            port = announced.rsplit(":", 1)[1]
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v1/pools") as resp:
                assert resp.status == 200  # open: no token asked
            served.signal(signal.SIGTERM)
            assert await served.wait_exit(30) == 0
        finally:
            await served.close()
        warnings = [r for r in processes.records(served) if r["level"] == "warning" and "INSECURE" in r["message"]]
        assert len(warnings) == start, processes.records(served)
        assert "open to anyone who reaches the address" in warnings[-1]["message"]
        assert "0.0.0.0:0" in warnings[-1]["message"]
