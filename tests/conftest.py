"""Real servers for the whole session: one nats-server (JetStream) and one PostgreSQL.

Each test gets its own database, copied from a migrated template (fast, isolated), and its own
bus namespace (subjects and streams), so tests never hear one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from app.runtime import Runtime
from orchestrator.bus import Bus, Subjects
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.settings import Settings
from orchestrator.store import Store
from tests.nats_cluster import NatsCluster
from tests.support import Cli, cli_against

_counter = itertools.count(1)


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """The root logger as it was before the test: a test that configures logging (the CLI run
    in-process does) must not leave later tests writing to its captured, since closed, stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def tasks_shown_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Where every asyncio task waits, printed 3 s before pytest-timeout fails the test: its own
    dump shows only threads, and an async test's are all idle in `select`."""
    timeout = request.config.getoption("timeout", None) or request.config.getini("timeout")
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else timeout or 0)
    if timeout <= 0:
        yield
        return

    def show() -> None:
        print(f"--- asyncio tasks {timeout - 3:g} s into {request.node.nodeid} ---", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=sys.stderr)

    timer = asyncio.get_running_loop().call_later(max(1.0, timeout - 3), show)
    yield
    timer.cancel()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "tasks_shown_before_timeout")


def with_database(dsn: str, database: str) -> str:
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    """The session servers' data, outside pytest's numbered temp dirs: pytest prunes old ones,
    and a concurrent session (another checkout's tests) would delete a running server's files."""
    path = Path(tempfile.mkdtemp(prefix="orch-test-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def nats_url(servers_dir: Path) -> AsyncIterator[str]:
    server = EmbeddedNats(servers_dir / "nats")
    yield await server.start()
    await server.stop()


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A nats-server of this test's own, to pause (SIGSTOP), kill or restart without touching
    the session's: resumed before it is stopped, whatever the test left it in."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    yield server
    if server.pid is not None:  # still running (a test may have stopped it)
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)
    await server.stop()


@pytest.fixture
async def nats_cluster() -> AsyncIterator[NatsCluster]:
    """A NATS cluster of three of this test's own (tests/nats_cluster.py), healthy, with a meta
    leader. Outside pytest's temp root, like the session servers' data."""
    root = Path(tempfile.mkdtemp(prefix="orch-nats-cluster-"))
    cluster = NatsCluster(root)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_dsn(servers_dir: Path) -> AsyncIterator[str]:
    server = EmbeddedPostgres(servers_dir / "pg")
    dsn = await server.start()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP DATABASE IF EXISTS orch_template")
        await conn.execute("CREATE DATABASE orch_template")
    finally:
        await conn.close()
    template = Store(with_database(dsn, "orch_template"), max_size=1)
    await template.connect()
    await template.migrate()
    await template.close()
    yield dsn
    await server.stop()


@contextlib.asynccontextmanager
async def new_database(pg_dsn: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """A database of its own, dropped afterwards: a copy of the migrated template, or empty."""
    name = f"test_{next(_counter)}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}" + (" TEMPLATE orch_template" if migrated else ""))
    finally:
        await conn.close()
    try:
        yield with_database(pg_dsn, name)
    finally:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture
async def database_url(pg_dsn: str) -> AsyncIterator[str]:
    async with new_database(pg_dsn) as url:
        yield url


@pytest.fixture
async def empty_database_url(pg_dsn: str) -> AsyncIterator[str]:
    """A database with no schema at all, for what must migrate it first (`orchestrator migrate`)."""
    async with new_database(pg_dsn, migrated=False) as url:
        yield url


@pytest.fixture
def settings(nats_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=nats_url,
        database_url=database_url,
        namespace=f"t{next(_counter)}",
        data_dir=tmp_path / "data",
        http_port=0,
        heartbeat_interval_s=0.5,
        runner_ttl_s=3.0,
        sweep_interval_s=0.5,
        stop_timeout_s=2.0,
        runner_slots=4,
        runner_labels="linux,x86_64",
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = Store(settings.database_url or "", max_size=4)
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    b = Bus(settings.nats_url or "", Subjects(settings.namespace), name="test-client")
    await b.connect()
    yield b
    await b.close()


@pytest.fixture
async def front(settings: Settings) -> AsyncIterator[Runtime]:
    """Admission and the API only: admitted jobs stay queued, so counts are exact."""
    runtime = Runtime(settings, ["admission", "api"], migrate=True)
    await runtime.start()
    yield runtime
    await runtime.stop()


@pytest.fixture
async def http(front: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=front.http_url) as session:
        yield session


@pytest.fixture
async def system(settings: Settings) -> AsyncIterator[Runtime]:
    """Every service, the API and one local runner in this process, like `orchestrator up`."""
    runtime = Runtime(settings, migrate=True)
    await runtime.start()
    yield runtime
    await runtime.stop()


@pytest.fixture
async def system_http(system: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the whole system's HTTP API (`http` is the admission-only front's)."""
    async with aiohttp.ClientSession(base_url=system.http_url) as session:
        yield session


@pytest.fixture
def cli(system: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return cli_against(system, monkeypatch, capsys)


@pytest.fixture
def front_cli(front: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Against admission and the api only: submitted jobs stay queued."""
    return cli_against(front, monkeypatch, capsys)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def pytest_sessionstart(session: pytest.Session) -> None:
    """A session stopped by SIGTERM (a CI or `timeout` limit) unwinds as on Ctrl-C, so its servers
    are stopped: the session's Postgres daemonizes, and would outlive a pytest killed outright."""
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fuzz cases ran (tests/fuzz.py counts them), per door and in all."""
    from tests.fuzz import CASES

    if not CASES:
        return
    terminalreporter.section("fuzz cases")
    for name, n in sorted(CASES.items()):
        terminalreporter.write_line(f"{n:6d}  {name}")
    terminalreporter.write_line(f"{sum(CASES.values()):6d}  in all")
