"""The api against its own `/openapi.json`, by schemathesis with every check on: every operation,
with generated valid and invalid parameters and bodies, on the real server (a real port, real NATS
and Postgres), through the coverage, fuzzing and stateful phases (the last follows links: submit
a job, then read, take, finish and cancel it).

Valid input must be accepted and invalid input refused, every answer must be one the document
declares (status, content type, schema, headers), a 405 must say `Allow`, no answer may be a 5xx,
and with auth on, a route that needs a token must refuse a request without one or with a wrong
one. The document is generated from the route table, so this is what keeps the two exact. The
exceptions that are so by design are named, with their reasons, in `schemathesis.toml`.

The run is schemathesis's own CLI (its phases and its report), against an api on the test's
servers with a database and namespace of its own: what it creates (pools, jobs) goes with them.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.runtime import Runtime
from orchestrator.pools import change_pool
from orchestrator.settings import Settings
from schemas.pools import PoolConfig
from tests import factories
from tests.fuzz import CASES
from tests.support import with_tokens

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CONFIG = HERE / "schemathesis.toml"
OPERATOR_TOKEN = "schemathesis-operator"
RUN_TIMEOUT_S = 240


@pytest.fixture(params=["auth off", "auth on"])
async def api(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Runtime]:
    """Admission and the api (jobs stay queued: no dispatcher, no runner process), a pool to submit
    to and a registered runner to drain and taint. Auth off, as the embedded default runs, and on."""
    if request.param == "auth on":
        settings = with_tokens(settings, operator_tokens=OPERATOR_TOKEN)
    runtime = Runtime(settings, ["admission", "api"], migrate=True)
    await runtime.start()
    assert runtime.store is not None and runtime.bus is not None
    await change_pool(runtime.store, runtime.bus, "default", config=PoolConfig(labels=["linux"]))
    await factories.runner(runtime.store, "r1", labels=["linux"], slots=2)
    try:
        yield runtime
    finally:
        await runtime.stop()


async def schemathesis(url: str, *options: str) -> tuple[int, str]:
    """`schemathesis run` against the api at `url`, as a child process (the api answers from this
    test's event loop meanwhile): its exit code and its report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        *options, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def test_every_operation_answers_exactly_as_documented(api: Runtime) -> None:
    assert api.http_url is not None
    auth = ["--header", f"Authorization: Bearer {OPERATOR_TOKEN}"] if api.settings.api_tokens() else []
    code, report = await schemathesis(api.http_url, "--checks", "all", *auth)
    if generated := re.search(r"(\d+) generated", report):
        CASES["openapi (schemathesis, every check)"] += int(generated[1])
    assert code == 0, report
    assert "No issues found" in report or "passed" in report, report
