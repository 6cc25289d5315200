"""The real CLI as a subprocess: `orchestrator up` in a temp data dir, submit, see `succeeded`,
SIGTERM, restart on the same data dir — the jobs are still there, and a job interrupted by the
stop is run again after the restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.redact import redact_url

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "orchestrator"
READY_TIMEOUT_S = 60


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "ORCH_DATA_DIR": str(data_dir),
            "ORCH_HTTP_PORT": "0",
            "ORCH_STOP_TIMEOUT_S": "0.5",
        }
        for var in ("ORCH_NATS_URL", "ORCH_DATABASE_URL", "ORCH_URL"):
            self.env.pop(var, None)
        self.log = data_dir.parent / "up.log"
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([str(BIN), "up"], env=self.env, stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()  # blocks until the ready line, or EOF if it died
        assert time.monotonic() < deadline
        assert self.line.startswith("orchestrator ready http="), (
            f"not ready: {self.line!r}; its log ends:\n{self.log.read_text()[-3000:]}"
        )

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's temp root: embedded Postgres runs as another user and must traverse the
    # parents, and a concurrent pytest session resets that root to mode 0700.
    parent = Path(tempfile.mkdtemp(prefix="orch-cli-"))
    yield parent / "orch"
    shutil.rmtree(parent, ignore_errors=True)


def test_up_submit_stop_restart(data_dir: Path) -> None:
    up = Up(data_dir)
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        # The endpoints file has them whole; the line shows the database's password masked.
        assert up.line.strip() == (
            f"orchestrator ready http={endpoints['http']} nats={endpoints['nats']} "
            f"database={redact_url(endpoints['database'])}"
        )
        secrets = [(data_dir / name).read_text().strip() for name in ("nats.token", "postgres.password")]
        assert all(secret and secret not in up.line for secret in secrets)
        done = up.cli("submit", "--wait", "--json", "--", "echo", "hi")
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["state"] == "succeeded" and job["exit_code"] == 0

        # As `docker run` does: the job's output as it runs, then its exit code.
        script = "for i in $(seq 2000); do echo line $i; done; echo oops >&2; exit 3"
        failing = up.cli("submit", "--wait", "--", "sh", "-c", script)
        # Between stdout and stderr, the order the runner read them: `oops` may come among the last lines.
        assert failing.returncode == 3, failing.stderr
        lines = failing.stdout.splitlines()
        lines.remove("oops")
        assert lines == [f"line {i}" for i in range(1, 2001)]
        assert "failed (exit code 3)" in failing.stderr
        job_id = failing.stderr.split("job ")[1].split()[0]
        assert up.cli("logs", job_id).stdout == failing.stdout

        # A job that is running when the system stops: its first attempt leaves a marker and
        # hangs; the attempt after the restart sees the marker and succeeds.
        marker = data_dir / "marker"
        script = f"test -f {marker} && exit 0; touch {marker}; sleep 60"
        interrupted = json.loads(up.cli("submit", "--key", "interrupted", "--", "sh", "-c", script).stdout)
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
    finally:
        assert up.stop() == 0

    up = Up(data_dir)
    try:
        listed = json.loads(up.cli("jobs", "--json", "--limit", "10").stdout)["jobs"]
        assert job["id"] in {j["id"] for j in listed}
        final = up.cli("submit", "--wait", "--json", "--key", "interrupted", "--", "sh", "-c", script)
        resumed = json.loads(final.stdout)
        assert resumed["id"] == interrupted["id"]
        assert resumed["state"] == "succeeded"
        assert resumed["attempt"] == 2
    finally:
        assert up.stop() == 0


def test_client_commands_explain_a_missing_server(tmp_path: Path) -> None:
    env = {**os.environ, "ORCH_DATA_DIR": str(tmp_path), "ORCH_HTTP_PORT": "9"}
    env.pop("ORCH_URL", None)
    result = subprocess.run([str(BIN), "jobs"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "cannot reach the orchestrator" in result.stderr
