"""The README's Python examples, run as a reader copies them, against `orchestrator up`: the
client's over HTTP and the job-events stream's over JetStream (issue 20, point 2). Only the API's
address is changed: the README's `up` serves on 8080, the test's on a free port. Each runs from a
directory whose `.orchestrator` is `up`'s data dir, as from a clone where `make up` runs."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import endpoints
from tests.system import processes

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"
README_API = "http://127.0.0.1:8080"


def example(section: str) -> str:
    """The first Python block of the README's section `## <section>`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, f"no Python example under '## {section}'"
    return found[1]


@pytest.fixture
def clone() -> Iterator[Path]:
    """A directory as a clone is to `make up`: `.orchestrator` will be its data dir."""
    with processes.data_dir() as data:
        yield data.parent


async def run(code: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_the_client_and_the_job_events_examples_run_as_written(clone: Path) -> None:
    up = processes.up(clone / ".orchestrator")
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        found = endpoints.read(clone / ".orchestrator")
        assert found is not None and found.http
        client = example("The Python client")
        assert README_API in client
        proc = await run(client.replace(README_API, found.http), clone)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        printed, ended, refused = out.decode().splitlines()
        assert (printed, ended) == ("hello", "succeeded 0")  # its output, then how it ended
        cancel = re.fullmatch(r"409 final id job (\S+) already ended: succeeded", refused)
        assert cancel is not None, refused

        # The durable consumer hears every job's end, the one above included, from the stream.
        follower = await run(example("Following your jobs: the job-events stream"), clone)
        assert follower.stdout is not None and follower.stderr is not None
        try:
            async with asyncio.timeout(30):
                while (line := (await follower.stdout.readline()).decode()) and cancel[1] not in line:
                    pass  # earlier jobs' ends: none here, but a reader's stream may hold some
        finally:
            with contextlib.suppress(ProcessLookupError):
                follower.kill()  # it follows for ever
            await follower.wait()
        assert line == f"{cancel[1]} succeeded 0\n", (await follower.stderr.read()).decode()
    finally:
        await up.close()
