"""`orchestrator submit`: what its options give the job; what it refuses before it sends anything
(`--timeout 0` is not "no timeout", omitting the option is, as `timeout_s: 0` is a 422 at every
other door); and `--wait`, telling on stderr why its job waits (a real `orchestrator` process,
its stderr a pipe), and Ctrl-C, which stops the waiting, not the job."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from app.cli import main
from app.progress import CLEAR_LINE, Progress
from app.runtime import Runtime
from orchestrator.pools import change_pool
from orchestrator.store import Store
from schemas.api import BlockedBy, JobDetail
from schemas.pools import PoolConfig
from tests.support import Cli, call


async def test_submit_refuses_a_timeout_of_zero_naming_the_option(
    front: Runtime, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCH_URL", front.http_url or "")

    async def submit(*args: str) -> int:
        try:  # the CLI blocks; the API runs on this loop
            return await asyncio.to_thread(main, ["submit", *args, "--", "true"])
        except SystemExit as exc:  # argparse's own errors
            return int(exc.code or 0)

    for timeout in ("0", "-1", "nan", "soon"):
        assert await submit("--timeout", timeout) == 2, timeout
        assert "argument --timeout:" in capsys.readouterr().err
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []
    assert front.store is not None and front.bus is not None
    await change_pool(front.store, front.bus, "default", config=PoolConfig())
    assert await submit("--timeout", "0.5") == 0
    [job] = await store.job_list(pool=None, state=None, key=None, limit=10)
    assert job["timeout_s"] == 0.5


ROOT = Path(__file__).resolve().parents[2]  # `python -m app.cli` here: the CLI of this tree


async def test_submit_wait_tells_on_stderr_why_the_job_waits(front: Runtime, http: aiohttp.ClientSession) -> None:
    """No dispatcher runs (admission and the api only): the job waits, and says why; stdout
    stays for the job's output. Cancelled, it ends the command with its state."""
    await call(http, "PUT", "/v1/pools/default", json={})
    env = {**os.environ, "ORCH_URL": front.http_url or ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "submit", "--wait", "--", "echo", "never", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stderr.readline()).decode()
        assert line.startswith("orchestrator: job ") and " queued: no dispatcher holds the lease" in line, line
        job_id = line.split()[2]
        assert (await call(http, "DELETE", f"/v1/jobs/{job_id}"))[0] == 200
        async with asyncio.timeout(30):
            out, rest = await proc.communicate()
    finally:
        if proc.returncode is None:  # failed before its job ended: it would wait for ever
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert out == b""
    assert rest.decode().splitlines()[-1] == f"orchestrator: job {job_id} cancelled"


# The CLI as a terminal starts it, with Ctrl-C's default handling. A process started in the
# background (`nohup make test &`, a CI runner) ignores SIGINT, its children inherit that, and a
# Python that starts with SIGINT ignored never turns it into KeyboardInterrupt: the CLI would not
# hear the test's Ctrl-C at all.
AS_ON_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('app.cli', run_name='__main__')"
)


async def test_ctrl_c_stops_the_wait_not_the_job_and_says_so(front: Runtime, http: aiohttp.ClientSession) -> None:
    """`submit --wait` interrupted (SIGINT) exits 130 and says how to stop the job, which it leaves be."""
    await call(http, "PUT", "/v1/pools/default", json={})
    env = {**os.environ, "ORCH_URL": front.http_url or ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AS_ON_A_TERMINAL, "submit", "--wait", "--", "echo", "never", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            first = await proc.stderr.readline()  # it waits: "orchestrator: job <id> ..."
            assert first.startswith(b"orchestrator: job "), first
            job_id = first.decode().split()[2]
            proc.send_signal(signal.SIGINT)
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    assert err.decode().splitlines() == [
        f"orchestrator: job {job_id} goes on without you: orchestrator cancel {job_id}"
    ]
    assert (await call(http, "GET", f"/v1/jobs/{job_id}"))[1]["state"] == "queued"


def test_on_a_terminal_the_progress_line_is_rewritten_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def job(state: str, reason: str | None = None, position: int = 0) -> JobDetail:
        why = None
        if reason is not None:
            why = BlockedBy(
                reason=reason, message=f"it is {reason}", constraints=[], position=position, competing=3,
                drained_last_minute=0, estimated_wait_s=None,
            )  # fmt: skip
        return JobDetail.model_validate(
            {
                "id": "0190c9d2-1111-7000-8000-000000000000", "key": "k", "state": state, "pool": "p", "labels": [],
                "plan": None, "tenant": None, "priority": 0, "payload": {}, "timeout_s": None, "max_attempts": 3,
                "abandon_after_s": None, "tolerations": [], "attempt": 0, "runner_id": "r1", "exit_code": None,
                "reason": None, "created_at": "2026-01-01T00:00:00Z", "assigned_at": None, "started_at": None,
                "finished_at": None, "blocked_by": why, "retry": {}, "attempts": [],
            }
        )  # fmt: skip

    screen = Terminal()
    progress = Progress(screen)
    progress.show(job("queued", "paused", 2))
    progress.show(job("queued", "paused", 2))  # no change: nothing written
    progress.show(job("assigned"))
    progress.show(job("running"))
    prefix = "orchestrator: job 0190c9d2-1111-7000-8000-000000000000"
    assert screen.getvalue() == (
        f"{CLEAR_LINE}{prefix} queued: it is paused (2 of 3 competing go first)"
        f"{CLEAR_LINE}{prefix} assigned to runner r1: starting"
        f"{CLEAR_LINE}"
    )
    assert "\n" not in screen.getvalue()

    monkeypatch.setenv("COLUMNS", "40")  # never wider than the terminal: a wrapped line stays on screen
    progress.show(job("queued", "paused", 1))
    assert screen.getvalue().endswith(CLEAR_LINE + prefix[:39])


async def test_submit_sets_env_cwd_retries_and_delay(
    cli: Cli, system_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The job spec's fields a command line most needs, as options: what `--env`, `--cwd`,
    `--retry`, `--max-attempts` and `--delay` give is what the job runs with."""
    command = 'echo "$GREETING from $(pwd)"; exit 4'
    args = ("--env", "GREETING=a=b", "--cwd", str(tmp_path), "--retry", "failed", "--max-attempts", "2")
    status, out, _ = await cli("submit", "--wait", *args, "--delay", "0.2", "--", "sh", "-c", command)
    assert status == 4
    first, marker, second = out.splitlines()
    assert first == second == f"a=b from {tmp_path}"  # each attempt ran with the job's env and cwd
    assert marker.startswith("[orchestrator: attempt 2, on runner ")
    _, listed = await call(system_http, "GET", "/v1/jobs?limit=1")
    [job] = listed["jobs"]
    _, detail = await call(system_http, "GET", f"/v1/jobs/{job['id']}")
    assert detail["payload"]["env"] == {"GREETING": "a=b"} and detail["payload"]["cwd"] == str(tmp_path)
    assert (detail["retry"]["on"], detail["max_attempts"]) == (["failed"], 2)
    assert [a["outcome"] for a in detail["attempts"]] == ["failed", "failed"]
    assert detail["run_at"] is not None


async def test_submit_refuses_an_env_without_a_name_and_sends_nothing(
    front_cli: Cli, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("NOVALUE", "=1"):
        with pytest.raises(SystemExit) as refused:  # argparse's own error
            await front_cli("submit", "--env", bad, "--", "true")
        assert refused.value.code == 2
        assert f"argument --env: give NAME=VALUE, not {bad!r}" in capsys.readouterr().err
    assert await store.job_list(pool=None, state=None, key=None, limit=10) == []
