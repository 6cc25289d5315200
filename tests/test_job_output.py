"""Job output (issue 17): every byte a job prints is kept in the job-output stream, read whole
or from an offset over HTTP, followed live (text or Server-Sent Events), capped with its head and
tail and a marker between, and still there after the orchestrator restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest

from orchestrator.bus import Bus
from orchestrator.bus.job_logs import JobLogs, LogChunk, gap_note
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from tests.support import alive, eventually

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}
# 2,000 numbered lines on stdout, then one on stderr, then exit 3.
TWO_THOUSAND = (
    "import sys\nfor i in range(2000): print(f'line {i}')\nsys.stdout.flush()\nsys.stderr.write('oops\\n')\nsys.exit(3)"
)
EXPECTED = "".join(f"line {i}\n" for i in range(2000)) + "oops\n"


async def submit(http: aiohttp.ClientSession, command: list[str]) -> str:
    async with http.post("/v1/jobs", json={"pool": "default", "payload": {"command": command}}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def job(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    async with http.get(f"/v1/jobs/{job_id}") as resp:
        return dict(await resp.json())


async def ended(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        current = await job(http, job_id)
        return current if current["state"] in FINAL else None

    return await eventually(probe, timeout=30, what=f"job {job_id} to end")


async def text(http: aiohttp.ClientSession, job_id: str, query: str = "") -> str:
    async with http.get(f"/v1/jobs/{job_id}/logs{query}") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        return await resp.text()


async def test_the_whole_output_in_order_and_from_an_offset(system_http: aiohttp.ClientSession) -> None:
    job_id = await submit(system_http, [sys.executable, "-c", TWO_THOUSAND])
    done = await ended(system_http, job_id)
    assert (done["state"], done["exit_code"]) == ("failed", 3)
    assert await text(system_http, job_id) == EXPECTED
    assert await text(system_http, job_id, "?offset=12000") == EXPECTED[12000:]
    assert await text(system_http, job_id, f"?offset={len(EXPECTED)}") == ""


async def test_bad_reads_are_named_and_a_job_without_output_is_empty(system_http: aiohttp.ClientSession) -> None:
    async with system_http.get(f"/v1/jobs/{uuid4()}/logs") as resp:
        assert resp.status == 404
    job_id = await submit(system_http, ["true"])
    await ended(system_http, job_id)
    assert await text(system_http, job_id) == ""
    for query, field in (("?offset=-1", "offset"), ("?offset=abc", "offset"), ("?follow=maybe", "follow")):
        async with system_http.get(f"/v1/jobs/{job_id}/logs{query}") as resp:
            assert resp.status == 422
            assert (await resp.json())["error"]["field"] == field


async def test_a_follower_sees_the_first_line_while_the_job_runs_and_the_stream_ends_with_it(
    system_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)  # the job blocks reading it until the test writes
    script = f"print('first', flush=True)\nopen({str(go)!r}).read()\nprint('last')"
    job_id = await submit(system_http, [sys.executable, "-c", script])
    async with system_http.get(f"/v1/jobs/{job_id}/logs?follow=true") as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        assert first == b"first\n"
        assert (await job(system_http, job_id))["state"] == "running"  # live, not after the fact
        await asyncio.to_thread(go.write_text, "go")
        rest = await resp.content.read()  # the stream ends when the job has ended
    assert rest == b"last\n"
    assert (await job(system_http, job_id))["state"] == "succeeded"


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(id, data) of each Server-Sent Event until the stream ends."""
    event_id, data = "", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: ") or line == "data:":
            data.append(line[6:])
        elif not line and data:
            yield event_id, "\n".join(data)
            event_id, data = "", []


async def test_server_sent_events_name_offsets_and_resume_exactly(system_http: aiohttp.ClientSession) -> None:
    job_id = await submit(system_http, [sys.executable, "-c", TWO_THOUSAND])
    await ended(system_http, job_id)
    sse = {"Accept": "text/event-stream"}
    async with system_http.get(f"/v1/jobs/{job_id}/logs?follow=true", headers=sse) as resp:
        assert resp.content_type == "text/event-stream"
        events = [e async for e in sse_events(resp)]
    assert "".join(data for _, data in events).replace("\n", "") == EXPECTED.replace("\n", "")
    offsets = [int(i) for i, _ in events]
    assert offsets == sorted(offsets) and offsets[-1] == len(EXPECTED)
    # A browser reconnects with the last id it saw: the rest, from exactly there.
    after = offsets[0]
    async with system_http.get(f"/v1/jobs/{job_id}/logs", headers={**sse, "Last-Event-ID": str(after)}) as resp:
        resumed = [e async for e in sse_events(resp)]
    assert "".join(d for _, d in resumed).replace("\n", "") == EXPECTED[after:].replace("\n", "")


async def test_what_a_job_leaves_running_is_stopped_when_it_exits(
    system_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A background child left in the job's session (holding its stdout) is stopped when the
    job's process exits, as CI runners do: the job ends at once, with its output."""
    pidfile = tmp_path / "child"
    job_id = await submit(system_http, ["sh", "-c", f"echo before; sleep 60 & echo $! > {pidfile}; exit 0"])
    done = await ended(system_http, job_id)
    assert done["state"] == "succeeded"
    assert await text(system_http, job_id) == "before\n"
    child = int(pidfile.read_text())
    await eventually(lambda: _gone(child), timeout=10, what="the job's leftover child to be stopped")


async def _gone(pid: int) -> bool:
    return not alive(pid)


async def test_a_pipe_held_past_the_drain_does_not_hold_the_job(
    system_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A child that left the job's session keeps its stdout open far longer than the runner
    drains a job's pipes after its exit: the job ends all the same, its output until then is
    kept, and the log says why the rest is not."""
    pidfile = tmp_path / "escaped"
    # It exits once the child has left its session (the child wrote its pid from the new one).
    script = f"echo before; setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & until [ -s {pidfile} ]; do :; done"
    job_id = await submit(system_http, ["sh", "-c", script])
    try:
        done = await ended(system_http, job_id)
        assert done["state"] == "succeeded"
        output = await text(system_http, job_id)
        assert output.startswith("before\n") and "is not kept" in output
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def small_cap(settings: Settings) -> Settings:
    return settings.model_copy(update={"log_max_bytes": 128 * 1024})


async def test_a_long_output_keeps_its_head_and_tail_with_a_marker_between(small_cap: Settings) -> None:
    # ~5 MB against a 128 KiB cap, printed faster than the tail is shown live (1 MiB/s).
    lines = 400_000
    script = f"for i in range({lines}): print(f'{{i:07d}} ' + 'x' * 4)"
    full = "".join(f"{i:07d} xxxx\n" for i in range(lines))
    runtime = Runtime(small_cap, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            job_id = await submit(http, [sys.executable, "-c", script])
            await ended(http, job_id)
            output = await text(http, job_id)
    finally:
        await runtime.stop()
    half = small_cap.log_max_bytes // 2
    dropped = len(full) - 2 * half
    assert output == full[:half] + gap_note(dropped).decode() + full[-half:]  # head, marker, exact tail


async def test_output_survives_a_restart_of_the_orchestrator(settings: Settings) -> None:
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            job_id = await submit(http, [sys.executable, "-c", TWO_THOUSAND])
            await ended(http, job_id)
    finally:
        await runtime.stop()
    again = Runtime(settings, migrate=True)
    await again.start()
    try:
        async with aiohttp.ClientSession(base_url=again.http_url) as http:
            assert await text(http, job_id) == EXPECTED
    finally:
        await again.stop()


async def test_a_chunk_sent_again_is_stored_once(bus: Bus, settings: Settings) -> None:
    logs = JobLogs(bus)
    await logs.ensure_stream(settings.log_retention_s)
    job_id = uuid4()
    chunk = LogChunk(0, 1, "stdout", b"hello\n")
    first = await logs.append(job_id, chunk, {})
    assert await logs.append(job_id, chunk, {}) == first  # a resend after a lost acknowledgement
    assert [c.data for c in [c async for c in logs.chunks(job_id)]] == [b"hello\n"]


async def test_the_log_names_the_jobs_trace_and_each_chunk_carries_it(
    system_http: aiohttp.ClientSession, bus: Bus
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with system_http.post(
        "/v1/jobs",
        json={"pool": "default", "payload": {"command": ["echo", "traced"]}},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    ) as resp:
        job_id = (await resp.json())["id"]
    await ended(system_http, job_id)
    async with system_http.get(f"/v1/jobs/{job_id}/logs") as resp:
        assert await resp.text() == "traced\n"
        assert resp.headers["Orch-Trace-Id"] == trace_id
    stored = await bus.js.get_msg(bus.subjects.job_logs_stream, seq=1, subject=bus.subjects.job_log(job_id), next=True)
    assert stored.headers is not None and stored.headers["traceparent"].split("-")[1] == trace_id
