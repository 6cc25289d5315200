"""Real `orchestrator` processes for the system tests of what an operator sees: `up` on a data dir
of its own, its log records, its signals and restarts; and jobs followed over its HTTP API."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from app import endpoints
from bench.procs import ServiceProcess
from tests.support import FAST_FAILURE_ENV, call, eventually

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}
UP_READY_S = 60.0


@contextlib.contextmanager
def data_dir() -> Iterator[Path]:
    """A data dir for `up`. Not under pytest's temp root: embedded Postgres runs as another user
    and must traverse the parents, and a concurrent pytest session resets that root to 0700."""
    parent = Path(tempfile.mkdtemp(prefix="orch-up-"))
    try:
        yield parent / "orch"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def up(data: Path, *, own_group: bool = False, **env: str) -> ServiceProcess:
    """`orchestrator up` on `data` (not started yet: `start()`, then `await ready(UP_READY_S)`),
    on the embedded servers whatever this process's environment says, with fast failure
    detection; `env` on top. Its output (stdout and stderr) goes to `<data>/../up.log`.
    `own_group`: in a process group of its own, as a shell runs a command in the foreground."""
    proc = ServiceProcess(
        "up",
        [],
        {**FAST_FAILURE_ENV, "ORCH_DATA_DIR": str(data), "ORCH_HTTP_PORT": "0", **env},
        data.parent,
        args=["up"],
        ready_text="orchestrator ready",
        own_group=own_group,
    )
    for var in ("ORCH_NATS_URL", "ORCH_DATABASE_URL", "ORCH_URL"):
        proc.env.pop(var, None)
    return proc


def api(data: Path) -> aiohttp.ClientSession:
    """A client of the API of the `up` running on `data` (from its endpoints file)."""
    found = endpoints.read(data)
    assert found is not None and found.http, f"no endpoints file in {data}"
    return aiohttp.ClientSession(base_url=found.http)


def records(proc: ServiceProcess) -> list[dict[str, Any]]:
    """The process's log records (its JSON lines; what it printed is not a record)."""
    return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


def count(proc: ServiceProcess, level: str | None, text: str = "", logger: str | None = None) -> int:
    """Its records at `level` (None: any) holding `text`, of `logger` (None: any)."""
    return sum(
        1
        for r in records(proc)
        if level in (None, r["level"]) and text in r["message"] and logger in (None, r["logger"])
    )


async def job(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"/v1/jobs/{job_id}")
    assert status == 200, body
    return body


async def ended(http: aiohttp.ClientSession, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job once it has ended."""

    async def final() -> dict[str, Any] | None:
        found = await job(http, job_id)
        return found if found["state"] in FINAL else None

    return await eventually(final, timeout=timeout, what=f"job {job_id} to end")
