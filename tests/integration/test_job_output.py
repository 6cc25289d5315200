"""Job output (issue 17): every byte a job prints is kept in the job-output stream, read whole
or from an offset over HTTP, followed live (text or Server-Sent Events), capped with its head and
tail and a marker between, and still there after the orchestrator restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus
from orchestrator.bus.job_logs import Assembly, JobLogs, LogChunk, gap_note
from orchestrator.settings import Settings
from services.runner import job_output
from tests.support import alive, eventually

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "expired"}
# 2,000 numbered lines on stdout, then one on stderr, then exit 3.
TWO_THOUSAND = (
    "import sys\nfor i in range(2000): print(f'line {i}')\nsys.stdout.flush()\nsys.stderr.write('oops\\n')\nsys.exit(3)"
)
EXPECTED = "".join(f"line {i}\n" for i in range(2000)) + "oops\n"


def interleaved(output: str) -> bool:
    """The 2,000 stdout lines in order and the stderr line once: between the two pipes the order
    is the order the runner read them, which may put the stderr line among the last stdout ones."""
    return output.count("oops\n") == 1 and output.replace("oops\n", "") == EXPECTED.replace("oops\n", "")


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
    whole = await text(system_http, job_id)
    assert interleaved(whole)
    assert await text(system_http, job_id, "?offset=12000") == whole[12000:]
    assert await text(system_http, job_id, f"?offset={len(whole)}") == ""


async def test_bad_reads_are_named_and_a_job_without_output_is_empty(system_http: aiohttp.ClientSession) -> None:
    async with system_http.get(f"/v1/jobs/{uuid4()}/logs") as resp:
        assert resp.status == 404
    job_id = await submit(system_http, ["true"])
    await ended(system_http, job_id)
    assert await text(system_http, job_id) == ""
    bad = (
        ("?offset=-1", "offset"),
        ("?offset=abc", "offset"),
        ("?offset=%C2%B2", "offset"),
        ("?follow=maybe", "follow"),
    )
    for query, field in bad:
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


async def test_a_follower_that_leaves_is_no_error(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower that goes away (a `logs -f` stopped, a dashboard tab closed) while the job runs
    is nothing wrong: the output written after it left, the job's end and the server's stop log
    no error (each once logged aiohttp's "Error handling request" with a traceback)."""
    go = tmp_path / "go"
    os.mkfifo(go)  # the job blocks reading it until the test writes
    script = f"print('first', flush=True)\nopen({str(go)!r}).read()\nprint('more', flush=True)"
    async with running(settings) as http:
        job_id = await submit(http, [sys.executable, "-c", script])
        for headers in ({}, {"Accept": "text/event-stream"}):
            async with (
                aiohttp.ClientSession(base_url=http._base_url) as follower,  # its own connection, closed after
                follower.get(f"/v1/jobs/{job_id}/logs?follow=true", headers=headers) as resp,
            ):
                assert (await resp.content.readuntil(b"first")).endswith(b"first")
        await asyncio.to_thread(go.write_text, "go")  # more output, then the end, with no one following
        assert (await ended(http, job_id))["state"] == "succeeded"
    # The runtime has stopped: every request's handler has returned.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) of each Server-Sent Event until the stream ends."""
    event, event_id, data = "message", "", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: ") or line == "data:":
            data.append(line[6:])
        elif not line and data:
            yield event, event_id, "\n".join(data)
            event, event_id, data = "message", "", []


async def test_server_sent_events_name_offsets_and_resume_exactly(system_http: aiohttp.ClientSession) -> None:
    job_id = await submit(system_http, [sys.executable, "-c", TWO_THOUSAND])
    await ended(system_http, job_id)
    whole = await text(system_http, job_id)
    sse = {"Accept": "text/event-stream"}
    async with system_http.get(f"/v1/jobs/{job_id}/logs?follow=true", headers=sse) as resp:
        assert resp.content_type == "text/event-stream"
        *events, last = [e async for e in sse_events(resp)]
    assert last[0] == "end"  # complete: a browser stops reconnecting
    assert "".join(data for _, _, data in events).replace("\n", "") == whole.replace("\n", "")
    offsets = [int(i) for _, i, _ in events]
    assert offsets == sorted(offsets) and offsets[-1] == len(whole)
    # A browser reconnects with the last id it saw: the rest, from exactly there (the id wins
    # over the URL's offset, which EventSource sends again).
    after = offsets[0]
    resume = {**sse, "Last-Event-ID": str(after)}
    async with system_http.get(f"/v1/jobs/{job_id}/logs?offset=0", headers=resume) as resp:
        *resumed, _ = [e async for e in sse_events(resp)]
    assert "".join(d for _, _, d in resumed).replace("\n", "") == whole[after:].replace("\n", "")
    async with system_http.get(f"/v1/jobs/{job_id}/logs", headers={**sse, "Last-Event-ID": "x"}) as resp:
        assert resp.status == 422 and (await resp.json())["error"]["field"] == "Last-Event-ID"


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


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """The whole system with `settings`, and a client of its API."""
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            yield http
    finally:
        await runtime.stop()


@pytest.fixture
def small_cap(settings: Settings) -> Settings:
    return settings.model_copy(update={"log_max_bytes": 128 * 1024})


async def test_a_long_output_keeps_its_head_and_tail_with_a_marker_between(small_cap: Settings) -> None:
    # ~5 MB against a 128 KiB cap, printed faster than the tail is shown live (1 MiB/s).
    lines = 400_000
    script = f"for i in range({lines}): print(f'{{i:07d}} ' + 'x' * 4)"
    full = "".join(f"{i:07d} xxxx\n" for i in range(lines))
    async with running(small_cap) as http:
        job_id = await submit(http, [sys.executable, "-c", script])
        await ended(http, job_id)
        output = await text(http, job_id)
    half = small_cap.log_max_bytes // 2
    dropped = len(full) - 2 * half
    assert output == full[:half] + gap_note(dropped).decode() + full[-half:]  # head, marker, exact tail


async def test_output_survives_a_restart_of_the_orchestrator(settings: Settings) -> None:
    async with running(settings) as http:
        job_id = await submit(http, [sys.executable, "-c", TWO_THOUSAND])
        await ended(http, job_id)
        before = await text(http, job_id)
    async with running(settings) as http:  # the same stream, the orchestrator started again
        assert await text(http, job_id) == before and interleaved(before)


async def test_a_chunk_sent_again_is_stored_once(bus: Bus, settings: Settings) -> None:
    logs = JobLogs(bus)
    await logs.ensure_stream(settings.log_retention_s, settings.log_store_max_bytes)
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


async def test_the_exact_tail_replaces_what_was_shown_of_it_live(
    bus: Bus, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the head, four chunks are shown live and the fifth is not (over the live rate): at
    the end the exact tail (the last four) replaces the live ones, three of which it overlaps."""
    chunk = job_output.CHUNK_BYTES
    monkeypatch.setattr(job_output, "TAIL_LIVE_BYTES_PER_S", 4 * chunk)
    logs = JobLogs(bus)
    await logs.ensure_stream(settings.log_retention_s, settings.log_store_max_bytes)
    job_id = uuid4()
    output = job_output.JobOutput(logs, job_id, 1, "r1", max_bytes=8 * chunk, ship_timeout_s=10)
    data = b"".join(b"%07d\n" % i for i in range(9 * chunk // 8))[: 9 * chunk]
    pipe = asyncio.StreamReader()
    pipe.feed_data(data)
    pipe.feed_eof()
    await output.open()
    await output.pump("stdout", pipe)
    await output.close()
    assembly = Assembly()
    text = b"".join([assembly.add(c) async for c in logs.chunks(job_id)])
    assert text == data[: 4 * chunk] + gap_note(chunk) + data[-4 * chunk :]


async def test_a_stream_that_stops_storing_does_not_hold_the_jobs_end(
    settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    """The job-output stream goes away while a job prints (deleted, or its disk full): the
    runner gives its output up after ORCH_LOG_SHIP_TIMEOUT_S, and the job ends all the same."""
    quick = settings.model_copy(update={"log_ship_timeout_s": 1.0})
    go = tmp_path / "go"
    os.mkfifo(go)
    script = f"print('first', flush=True)\nopen({str(go)!r}).read()\nprint('x' * 200_000)"
    async with running(quick) as http:
        job_id = await submit(http, [sys.executable, "-c", script])

        async def printed() -> bool:
            return await text(http, job_id) == "first\n"

        await eventually(printed, timeout=20, what="the first line to be stored")
        await bus.js.delete_stream(bus.subjects.job_logs_stream)
        await asyncio.to_thread(go.write_text, "go")
        done = await ended(http, job_id)
        assert (done["state"], done["exit_code"]) == ("succeeded", 0)


async def test_all_output_together_is_bounded_the_oldest_going_first(bus: Bus, settings: Settings) -> None:
    logs = JobLogs(bus)
    await logs.ensure_stream(settings.log_retention_s, max_bytes=256 * 1024)
    jobs = [uuid4() for _ in range(6)]
    for job_id in jobs:  # 6 x 64 KiB into 256 KiB
        await logs.append(job_id, LogChunk(0, 1, "stdout", b"x" * 64 * 1024), {})
    kept = [bool([c async for c in logs.chunks(job_id)]) for job_id in jobs]
    assert kept[-1] and not kept[0]  # the newest kept, the oldest gone
    assert sum(kept) <= 4
