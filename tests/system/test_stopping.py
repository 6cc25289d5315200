"""Ctrl-C on `orchestrator up` with a job running (issue 20, point 6).

The first SIGINT drains: the log says how many running jobs it waits for and for how long, no
new job starts, and the running one finishes. A second SIGINT stops at once: the running job is
killed, and run again after the next start.

Ctrl-C on a terminal signals the whole foreground process group, not `up` alone: the embedded
nats-server must not stop with it (it once did, and the drain went on without NATS: warnings, the
running job killed by the runner's fence and run again).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import alive, eventually, submit, until_exists
from tests.system import processes

pytestmark = pytest.mark.slow

STOP_TIMEOUT_S = 60  # longer than either test waits: a stop that sits it out fails


@pytest.fixture
def data() -> Iterator[Path]:
    with processes.data_dir() as path:
        yield path


@pytest.mark.parametrize("to", ["the process", "its process group"])
async def test_the_first_sigint_waits_for_running_jobs_and_starts_none(data: Path, to: str) -> None:
    terminal = to == "its process group"  # as a terminal's Ctrl-C: every process of the group
    up = processes.up(data, own_group=terminal, ORCH_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S))
    started, release, late = data.parent / "started", data.parent / "release", data.parent / "late"
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        async with processes.api(data) as http:
            wait_for_release = f"touch {started}; while [ ! -f {release} ]; do sleep 0.05; done"
            running = await submit(http, payload={"command": ["sh", "-c", wait_for_release]})
            await until_exists(started, "the job to start", timeout=30)

            (up.signal_group if terminal else up.signal)(signal.SIGINT)

            async def draining() -> bool:
                text = f"draining: waiting up to {STOP_TIMEOUT_S} s for 1 running jobs to finish"
                return processes.count(up, "info", text, "orchestrator.runner") == 1

            await eventually(draining, timeout=30, what="the log to say what the stop waits for")
            queued = await submit(http, payload={"command": ["touch", str(late)]})  # the api still answers
            release.touch()
        assert await up.wait_exit(30) == 0
        assert not late.exists()  # nothing started while it drained
        warnings = [r["message"] for r in processes.records(up) if r["level"] in ("warning", "error")]
        assert warnings == []  # a drain with NATS and Postgres there to the end

        up.start()
        await up.ready(processes.UP_READY_S)
        async with processes.api(data) as http:
            done = await processes.job(http, running["id"])
            assert (done["state"], done["attempt"]) == ("succeeded", 1), done
            after = await processes.ended(http, queued["id"])  # it waited for the next start
            assert after["state"] == "succeeded", after
    finally:
        await up.close()


async def test_a_second_sigint_stops_at_once_and_the_job_runs_after_the_next_start(data: Path) -> None:
    up = processes.up(data, ORCH_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S))
    pid_file = data.parent / "job.pid"
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        async with processes.api(data) as http:
            # Its first attempt writes its pid and hangs; the one after the restart succeeds.
            script = f"test -f {pid_file} && exit 0; echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 600"
            job = await submit(http, payload={"command": ["sh", "-c", script]})

        async def started() -> int | None:
            return int(pid_file.read_text()) if pid_file.exists() else None

        pid = await eventually(started, timeout=30, what="the job to start")

        up.signal(signal.SIGINT)

        async def draining() -> bool:
            return processes.count(up, "info", "draining", "orchestrator.runner") == 1

        await eventually(draining, timeout=30, what="the stop to wait for the job")
        up.signal(signal.SIGINT)
        assert await up.wait_exit(20) == 0  # well inside the stop timeout
        assert not alive(pid)
        assert "Traceback" not in up.log()

        up.start()
        await up.ready(processes.UP_READY_S)
        async with processes.api(data) as http:
            again = await processes.ended(http, job["id"])
        assert (again["state"], again["attempt"]) == ("succeeded", 2), again
    finally:
        await up.close()


def nats_servers_of(data: Path) -> list[int]:
    """The pids of the nats-servers `up` started on `data` (their store is under it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if args and args[0].endswith(b"nats-server") and any(str(data).encode() in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


async def test_a_hang_up_stops_gracefully_with_the_embedded_nats(data: Path) -> None:
    """A closed terminal sends its session SIGHUP. The embedded nats-server is in a session of its
    own (so a Ctrl-C does not stop it under the drain): SIGHUP must stop `up` as SIGTERM does, or
    `up` died at once and left nats-server running, holding its port and its store."""
    up = processes.up(data, own_group=True)
    up.start()
    try:
        await up.ready(processes.UP_READY_S)
        assert nats_servers_of(data)
        up.signal_group(signal.SIGHUP)
        assert await up.wait_exit(30) == 0

        async def nats_gone() -> bool:
            return not nats_servers_of(data)

        await eventually(nats_gone, timeout=10, what="the embedded nats-server to stop with up")
    finally:
        await up.close()
        for pid in nats_servers_of(data):  # what the old code left behind
            os.kill(pid, signal.SIGKILL)
