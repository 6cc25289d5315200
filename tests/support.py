"""Helpers the tests share: deadlines instead of sleeps, a way to hear bus events, HTTP calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest

from app.cli import main
from app.runtime import Runtime
from orchestrator.bus import Bus, Topic
from orchestrator.settings import Settings
from orchestrator.store import Store
from services.runner import Runner
from tests import history

T = TypeVar("T")


def with_tokens(settings: Settings, **tokens: str) -> Settings:
    """`settings` with API tokens set (`operator_tokens="o1"` ...), validated: `model_copy` does
    not validate, and a token must become a SecretStr."""
    return Settings.model_validate({**settings.model_dump(), **tokens})


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def agent(settings: Settings, bus: Bus, runner_id: str, **options: Any) -> Runner:
    """A runner agent on `settings`' timings and log limits (the rest: `Runner`'s own options)."""
    return Runner(settings.timings, settings.log_limits, bus, runner_id=runner_id, **options)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an orchestrator process joining the servers and namespace of
    `settings`, with `extra` settings (ORCH_... names)."""
    return {
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_NAMESPACE": settings.namespace,
        **extra,
    }


# The timings of the dispatch processes the failover tests kill: stale hand-offs requeued, idle
# transactions of a frozen process ended, and stops, all within a short test.
DISPATCH_FAILOVER_ENV = {
    "ORCH_SWEEP_INTERVAL_S": "0.5",
    "ORCH_DISPATCH__ASSIGNED_STALE_S": "3",
    "ORCH_DB_IDLE_IN_TRANSACTION_S": "1",
    "ORCH_STOP_TIMEOUT_S": "2",
}

# The environment of a system test's orchestrator processes: failures detected fast, so a short
# test sees every recovery through.
FAST_FAILURE_ENV = {
    "ORCH_DB_POOL_SIZE": "4",
    "ORCH_HEARTBEAT_INTERVAL_S": "0.5",
    "ORCH_RUNNER_TTL_S": "3",
    "ORCH_SWEEP_INTERVAL_S": "0.5",
    "ORCH_DISPATCH__ASSIGNED_STALE_S": "5",
    "ORCH_STOP_TIMEOUT_S": "2",
}


async def record_history(store: Store) -> None:
    """Record every job transition of the store's database from now on (`tests/history.py`)."""
    async with store.connection() as conn:
        await history.record(conn)


async def in_flight_peak(store: Store, pool: str) -> int:
    """The most jobs of `pool` that ever held a slot at once, from the transition history (the
    test called `record_history` before its jobs were admitted)."""
    async with store.connection() as conn:
        return history.in_flight_peaks(await history.read(conn)).get(pool, 0)


class Listener:
    """Collects every event published on a topic; `wait` blocks until a match."""

    def __init__(self, bus: Bus, topic: Topic[Any]) -> None:
        self.bus, self.topic = bus, topic
        self.events: list[Any] = []
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Listener:
        self._sub = await self.bus.subscribe(self.topic, self._on)
        await self.bus.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def _on(self, event: Any) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait(self, match: Callable[[Any], bool] = lambda e: True, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                await self._changed.wait()


async def submit(http: aiohttp.ClientSession, **spec: Any) -> dict[str, Any]:
    """`POST /v1/jobs` (pool `default` unless given), which must admit it: the job and its token."""
    async with http.post("/v1/jobs", json={"pool": "default", **spec}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return body


# A command that ignores SIGTERM (a job whose cleanup runs long): a cancel of it stays pending
# until its runner's kill grace ends. It touches the file argv[1] once the signal is ignored.
_STUBBORN = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
)


def stubborn_command(ready: Path) -> list[str]:
    """A command that ignores SIGTERM, and says so by creating `ready`."""
    return [sys.executable, "-c", _STUBBORN, str(ready)]


async def stubborn_job(http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, Any]:
    """A job (pool `default`) running a command that ignores SIGTERM from now on."""
    ready = tmp_path / "ignoring-sigterm"
    job = await submit(http, payload={"command": stubborn_command(ready)})
    await until_exists(ready, "the job to ignore SIGTERM")
    return job


async def until_exists(path: Path, what: str, *, timeout: float = 10.0) -> None:
    """Poll until a job has created `path` (its way of saying it got that far)."""

    async def exists() -> bool:
        return path.exists()  # noqa: ASYNC240 (a stat, polled)

    await eventually(exists, timeout=timeout, what=what)


async def call(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


# Columns that move on their own while nothing is submitted (heartbeats).
_VOLATILE = {"runners": ("last_seen_at", "heartbeat_seq")}


async def outbox_empty(store: Store) -> bool:
    return await store.outbox_depth() == 0


async def outbox_rows(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM outbox ORDER BY seq")]


async def stream_events(bus: Bus, verb: str | None = None) -> list[dict[str, Any]]:
    """Every event the job-events stream holds (on `verb`, or all), in stream order, each with
    its Nats-Msg-Id."""
    stream = bus.subjects.job_events_stream
    state = (await bus.js.stream_info(stream)).state
    events = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        msg = await bus.js.get_msg(stream, seq)
        if verb is None or msg.subject.split(".")[3] == verb:
            events.append({**json.loads(msg.data or b"{}"), "msg_id": (msg.headers or {}).get("Nats-Msg-Id")})
    return events


async def database_rows(store: Store) -> dict[str, list[str]]:
    """Every row of every table, as text, by table: to see that bad input changed nothing, or to
    search the whole database for a value. Taken once the outbox is empty: its rows are news in
    transit (a refusal's `rejected` event), relayed and deleted within moments."""
    await eventually(lambda: outbox_empty(store), what="the outbox to be relayed")
    async with store.connection() as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        rows: dict[str, list[str]] = {}
        for (table,) in tables:
            drop = "".join(f" - '{c}'" for c in _VOLATILE.get(table, ()))
            rows[table] = await conn.fetchval(
                f"SELECT coalesce(array_agg(r ORDER BY r), '{{}}') "
                f'FROM (SELECT (to_jsonb(t){drop})::text AS r FROM "{table}" t) s'
            )
        return rows


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet (its parent may be stopped, or
    an orphan's new parent may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _states(pid: int) -> dict[str, str]:
    """Each thread's scheduler state (R, S, D, T ...), by thread id."""
    states = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            states[task.name] = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    return states


def listener_of(port: int) -> int | None:
    """The pid of the process listening on TCP `port` (IPv4 or IPv6), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and any(_readlink(fd) in inodes for fd in _fds(proc)):
            return int(proc.name)
    return None


def _fds(proc: Path) -> list[Path]:
    try:
        return list((proc / "fd").iterdir())
    except OSError:  # gone, or not ours to read
        return []


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return None


def stop(pid: int) -> None:
    """SIGSTOP `pid`, returning once every thread of it has stopped: a stop is delivered thread
    by thread, and one in the middle of a system call stops only when the call returns."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while set((states := _states(pid)).values()) - {"T"}:
        assert time.monotonic() < deadline, f"pid {pid} did not stop within 10 s: {states}"
        time.sleep(0.001)  # polled: no signal says a stop has taken


@contextlib.contextmanager
def paused(pid: int, port: int) -> Iterator[None]:
    """The server `pid`, checked to be the one listening on `port`, stopped until the block ends."""
    assert listener_of(port) == pid, f"port {port} is not served by pid {pid} but by {listener_of(port)}"
    try:
        stop(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def wal_held_back(dsn: str) -> None:
    """A Postgres (a test's own) that writes its WAL out only when a commit waits for it: the WAL
    writer asleep past the test (10 s, its longest sleep), no background writer, no autovacuum.
    A commit that does not wait is then lost to a crash until a commit that waits comes."""
    conn = await asyncpg.connect(dsn)
    try:
        for setting in ("wal_writer_delay = '10s'", "bgwriter_lru_maxpages = 0", "autovacuum = off"):
            await conn.execute(f"ALTER SYSTEM SET {setting}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def wal_unwritten(dsn: str) -> bool:
    """Whether some WAL is not written out yet (a crash of the server would lose it)."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT pg_current_wal_lsn() < pg_current_wal_insert_lsn()"))
    finally:
        await conn.close()


# A CLI command as a user runs it: (exit status, stdout, stderr).
Cli = Callable[..., Awaitable[tuple[int, str, str]]]


def cli_against(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("ORCH_URL", runtime.http_url or "")
    capsys.readouterr()

    root = logging.getLogger()

    async def cli(*args: str) -> tuple[int, str, str]:
        handlers = root.handlers[:]
        try:
            status = await asyncio.to_thread(main, list(args))  # the CLI blocks; the API runs on this loop
        finally:
            root.handlers[:] = handlers  # not the CLI's, which write to this call's captured output
        out, err = capsys.readouterr()
        return status, out, err

    return cli
