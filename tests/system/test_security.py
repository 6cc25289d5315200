"""Security: NATS credentials and TLS from settings, bearer auth on every route that is not public,
tokens stored only as hashes, secrets kept out of logs, SQL only through parameters."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from app.runtime import Runtime
from bench.procs import ServiceProcess
from orchestrator import logs
from orchestrator.bus import Bus
from orchestrator.embedded import EmbeddedNats
from orchestrator.errors import BusUnavailable
from orchestrator.redact import MASK, Redactor, redact_url, url_secrets
from orchestrator.settings import Settings
from orchestrator.store import Store
from services.api.routes import PUBLIC
from tests import factories
from tests.support import call, database_rows, with_tokens

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Secret-7f3a"
TOKEN = "tok-Secret-91c2"
TOKENS = {
    "producer_tokens": "prod-Secret-1a,prod-Secret-2b",
    "runner_tokens": "run-Secret-3c",
    "operator_tokens": "op-Secret-4d",
}
SECRETS = [PASSWORD, TOKEN, *(t for v in TOKENS.values() for t in v.split(","))]


@pytest.fixture
def nats_dir() -> Iterator[Path]:
    """Outside pytest's temp root, as conftest's servers_dir (a concurrent session resets its modes)."""
    path = Path(tempfile.mkdtemp(prefix="orch-test-nats-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def nats_server(store_dir: Path, *args: str) -> AsyncIterator[int]:
    """A nats-server of this test's own, started with `args`; yields its port."""
    server = EmbeddedNats(store_dir / "js", args=args)
    await server.start()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.stop()


async def round_trip(settings: Settings) -> None:
    """Connect as the orchestrator's processes do, and see a message come back."""
    bus = Bus.from_settings(settings, name="security-test")
    await bus.connect()
    try:
        sub = await bus.nc.subscribe("echo")
        await bus.nc.publish("echo", b"ping")
        assert (await sub.next_msg(timeout=5)).data == b"ping"
    finally:
        await bus.close()


async def test_nats_user_and_password(nats_dir: Path) -> None:
    async with nats_server(nats_dir, "--user", "orch", "--pass", PASSWORD) as port:
        url = f"nats://127.0.0.1:{port}"
        await round_trip(Settings(nats_url=url, nats_user="orch", nats_password=PASSWORD))
        await round_trip(Settings(nats_url=f"nats://orch:{PASSWORD}@127.0.0.1:{port}"))  # in the URL also works
        with pytest.raises(BusUnavailable, match="Authorization"):
            await round_trip(Settings(nats_url=url, nats_user="orch", nats_password="wrong"))
        with pytest.raises(BusUnavailable) as refused:
            await round_trip(Settings(nats_url=f"nats://orch:{PASSWORD}-x@127.0.0.1:{port}"))
        assert PASSWORD not in str(refused.value) and f"orch:{MASK}@" in str(refused.value)


async def test_nats_token(nats_dir: Path) -> None:
    async with nats_server(nats_dir, "--auth", TOKEN) as port:
        url = f"nats://127.0.0.1:{port}"
        await round_trip(Settings(nats_url=url, nats_token=TOKEN))
        with pytest.raises(BusUnavailable, match="Authorization"):
            await round_trip(Settings(nats_url=url))


async def test_nats_tls_and_mutual_tls(nats_dir: Path) -> None:
    ca = trustme.CA()
    files = {name: nats_dir / f"{name}.pem" for name in ("ca", "server", "server-key", "client", "client-key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, cert in (("server", ca.issue_cert("127.0.0.1")), ("client", ca.issue_cert("orchestrator-client"))):
        cert.cert_chain_pems[0].write_to_path(str(files[name]))
        cert.private_key_pem.write_to_path(str(files[f"{name}-key"]))
    server_tls = ["--tls", "--tlscert", str(files["server"]), "--tlskey", str(files["server-key"])]

    async with nats_server(nats_dir, *server_tls) as port:
        url = f"tls://127.0.0.1:{port}"
        await round_trip(Settings(nats_url=url, nats_tls_ca_file=files["ca"]))
        with pytest.raises(BusUnavailable, match="CERTIFICATE_VERIFY_FAILED"):  # verification stays on
            await round_trip(Settings(nats_url=url))

    async with nats_server(nats_dir, *server_tls, "--tlsverify", "--tlscacert", str(files["ca"])) as port:
        url = f"tls://127.0.0.1:{port}"
        client = {"nats_tls_cert_file": files["client"], "nats_tls_key_file": files["client-key"]}
        await round_trip(Settings(nats_url=url, nats_tls_ca_file=files["ca"], **client))
        with pytest.raises(BusUnavailable):  # the server wants a client certificate
            await round_trip(Settings(nats_url=url, nats_tls_ca_file=files["ca"]))


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="nats_tls_key_file"):
        Settings(nats_tls_cert_file=Path("client.pem"))


def test_urls_are_shown_without_credentials() -> None:
    assert redact_url(f"postgresql://orch:{PASSWORD}@db:5432/orch?sslmode=require") == (
        f"postgresql://orch:{MASK}@db:5432/orch?sslmode=require"
    )
    assert redact_url(f"postgresql://orch@db/orch?password={PASSWORD}") == f"postgresql://orch@db/orch?password={MASK}"
    for shown in ("postgresql://orch@db/orch", "postgresql://postgres:@/postgres?host=/tmp/a%20b"):
        assert redact_url(shown) == shown  # a user name is no secret; nor is an empty password
    assert (
        redact_url(f"nats://{TOKEN}@a:4222,nats://u:{PASSWORD}@b:4222")
        == f"nats://{MASK}@a:4222,nats://u:{MASK}@b:4222"
    )


def test_log_lines_mask_every_configured_secret() -> None:
    settings = Settings(
        **TOKENS,
        nats_url=f"nats://{TOKEN}@127.0.0.1:4222",
        database_url=f"postgresql://orch:{PASSWORD}@db/orch",
        nats_password="nats-Secret-5e",
    )
    secrets = [*SECRETS, "nats-Secret-5e"]
    out = io.StringIO()
    logs.configure("INFO", out, secrets=settings.secret_values())  # the root_logger fixture restores it
    log = logging.getLogger("security-test")
    log.warning("tried %s", " ".join(secrets))
    try:
        raise RuntimeError(f"connect failed: {settings.database_url}")
    except RuntimeError:
        log.exception("the store is down")
    text = out.getvalue()
    assert "the store is down" in text and text.count(MASK) >= len(secrets) + 1
    assert [s for s in secrets if s in text] == []
    # Too short to mask safely ("p1" would mask every "p1" in every line); real tokens are long.
    assert Redactor(["p1"])("p1 ready") == "p1 ready"


async def test_every_route_but_the_public_ones_needs_a_token(settings: Settings, store: Store) -> None:
    """With auth on, each route of the table that is not public answers 401 without a token and 403
    with a wrong one, whatever its method, and changes nothing. The public routes that change
    state are exactly the two takes, which check the job's own token."""
    runtime = Runtime(with_tokens(settings, **TOKENS), ["admission", "api"], migrate=True)
    await runtime.start()
    try:
        async with aiohttp.ClientSession(base_url=runtime.http_url) as http:
            operator = {"Authorization": "Bearer op-Secret-4d"}
            pool = {"max_concurrent": 2}
            assert (await call(http, "PUT", "/v1/pools/default", json=pool, headers=operator))[0] == 201
            status, job = await call(http, "POST", "/v1/jobs", json={"pool": "default"}, headers=operator)
            assert status == 201
            before = await database_rows(store)
            values = {"id": job["id"], "name": "default", "pool": "default", "unique_id": "u-1", "key": "deploys"}
            routes = runtime.services["api"].routes  # type: ignore[attr-defined]
            public_writes = set()
            for route in routes:
                path = route.path.format(**values)
                if route.roles == PUBLIC:
                    if route.method != "GET":
                        public_writes.add(route.path)
                        async with http.request(route.method, path, params={"token": "wrong"}) as resp:
                            assert resp.status in (403, 404), (route.key, resp.status)
                    continue
                for headers, status in (({}, 401), ({"Authorization": "Bearer wrong-token"}, 403)):
                    async with http.request(route.method, path, json={}, headers=headers) as resp:
                        assert resp.status == status, (route.key, headers, resp.status)
            assert public_writes == {"/v1/jobs/{id}/take", "/take/{unique_id}"}
            assert await database_rows(store) == before
    finally:
        await runtime.stop()


async def test_take_tokens_are_stored_only_as_hashes(
    settings: Settings, store: Store, http: aiohttp.ClientSession
) -> None:
    await factories.pool(store)
    status, job = await call(http, "POST", "/v1/jobs", json={"pool": "default"})
    assert status == 201 and len(job["token"]) >= 32
    rows = await database_rows(store)
    assert any(job["id"] in row for table in rows.values() for row in table)
    assert [table for table, found in rows.items() if any(job["token"] in row for row in found)] == []


async def test_a_served_process_logs_no_secret(settings: Settings, tmp_path: Path) -> None:
    """The real CLI at DEBUG, with a password in its database URL, a token in its NATS URL and
    bearer tokens, is called with right and wrong tokens; its whole log holds none of them. A
    process that cannot reach its database says where, with the password masked."""
    nats_url = (settings.nats_url or "").replace("nats://", f"nats://{TOKEN}@")  # this server takes any
    database_url = settings.database_url or ""  # the session's embedded Postgres: its password in it
    secrets = [*SECRETS, *url_secrets(database_url)]
    assert len(secrets) > len(SECRETS)
    env = {
        "ORCH_NATS_URL": nats_url,
        "ORCH_DATABASE_URL": database_url,
        "ORCH_NAMESPACE": settings.namespace,
        "ORCH_HTTP_PORT": "0",  # any free port, announced: one picked beforehand may be taken meanwhile
        "ORCH_LOG_LEVEL": "DEBUG",
        **{f"ORCH_{name.upper()}": value for name, value in TOKENS.items()},
    }
    served = ServiceProcess("secure-api", ["admission", "api"], env, tmp_path, ready_text="orchestrator ready http=")
    served.start()
    try:
        await served.ready()
        announced = re.search(r"^orchestrator ready http=(\S+) ", served.log(), re.M)
        assert announced, served.log()
        async with aiohttp.ClientSession(base_url=announced.group(1)) as http:
            producer = {"Authorization": "Bearer prod-Secret-2b"}
            assert (await call(http, "POST", "/v1/jobs", json={"pool": "nowhere"}, headers=producer))[0] == 422
            for token in ("prod-Secret-1a", "run-Secret-3c", "not-a-token"):
                await call(http, "GET", "/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    finally:
        await served.close()

    unreachable = f"postgresql://postgres:{PASSWORD}@/orch?host={tmp_path / 'no-such-socket-dir'}"
    failing = ServiceProcess("no-db", ["admission"], {**env, "ORCH_DATABASE_URL": unreachable}, tmp_path)
    failing.start()
    assert await failing.wait_exit(30) != 0
    assert f"postgres:{MASK}@" in failing.log()

    for proc in (served, failing):
        assert [s for s in secrets if s in proc.log()] == [], proc.instance_id


# asyncpg calls that take SQL text first.
_SQL_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor", "copy_from_query"}


def _runs_built_sql(node: ast.AST) -> bool:
    """Whether `node` is a query call whose SQL is built at run time: an f-string, `+`/`%`, or
    `.format()`."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SQL_CALLS):
        return False
    sql = node.args[0] if node.args else None
    if isinstance(sql, ast.JoinedStr | ast.BinOp):
        return True
    return isinstance(sql, ast.Call) and isinstance(sql.func, ast.Attribute) and sql.func.attr == "format"


def test_sql_is_only_run_with_parameters() -> None:
    """No SQL in the product is built from strings at run time: values only ever travel as
    parameters ($1, $2 ...), so no input can become SQL."""
    built: list[str] = []
    for package in ("orchestrator", "services", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if _runs_built_sql(node):
                    built.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert built == []
    # The check itself sees what it looks for.
    assert _runs_built_sql(ast.parse('conn.execute(f"DELETE FROM jobs WHERE id = {x}")', mode="eval").body)
    assert not _runs_built_sql(ast.parse('conn.execute("DELETE FROM jobs WHERE id = $1", x)', mode="eval").body)
