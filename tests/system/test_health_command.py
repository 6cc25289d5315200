"""`orchestrator health`, the image's HEALTHCHECK (tests/unit/test_deploy_files.py checks the
Dockerfile names it), run as the container runs it: a process of the CLI against the session's
servers, healthy when what its roles need answers and naming what does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.settings import Settings

BIN = Path(sys.executable).parent


def health(env: dict[str, str], *roles: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "orchestrator"), "health", *roles],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_health_passes_when_what_the_roles_need_answers(settings: Settings) -> None:
    env = {"ORCH_NATS_URL": settings.nats_url or "", "ORCH_DATABASE_URL": settings.database_url or ""}
    result = health(env, "admission", "capacity", "dispatch", "runner")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "healthy: jetstream, nats, postgres"


def test_health_fails_and_says_why(settings: Settings) -> None:
    env = {"ORCH_NATS_URL": settings.nats_url or "", "ORCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = health(env, "runner")  # a runner never needs Postgres
    assert result.returncode == 0, result.stderr
    result = health(env, "capacity")
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: postgres:"), result.stderr
    result = health({**env, "ORCH_HTTP_PORT": "9"}, "api")
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: http:"), result.stderr
