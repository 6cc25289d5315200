"""deploy/nats.conf's roles for tests/system/test_nats_roles.py: the passwords its variables are
given, each role's settings and process as its compose container has them, and a raw nats-py
client as any of its users that collects what the server reports (a permissions violation comes
asynchronously, through the error callback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.procs import ServiceProcess
from orchestrator.settings import Settings
from tests.support import FAST_FAILURE_ENV

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nats.conf"
PASSWORDS = {"services": "svc-7d1e0a", "producer": "prod-2b9c4f", "runner-1": "run1-5a8e3d", "runner-2": "run2-9f0b6c"}
# The variables nats.conf reads the passwords from, as compose sets them in the nats container.
PASSWORD_VARIABLES = {f"NATS_{user.upper().replace('-', '_')}_PASSWORD": pw for user, pw in PASSWORDS.items()}
JS_API = "$JS.ORCH.API"  # the JetStream API as runners and producers import it
EVENTS, LOGS = "ORCH_JOB_EVENTS", "ORCH_JOB_LOGS"
# The timings of the test's services (conftest's `settings`), so the runner process agrees with them.
FAST_SETTINGS = {"heartbeat_interval_s", "runner_ttl_s", "sweep_interval_s", "stop_timeout_s"}
FORGED = json.dumps({"type": "JobFinished", "job_id": "00000000-0000-0000-0000-000000000001", "state": "succeeded"})


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}" if user.startswith("runner-") else "_INBOX"


def settings_of(user: str, url: str, **more: Any) -> Settings:
    """A process's settings as its container has them (compose.yaml)."""
    nats_settings: dict[str, Any] = {"nats_url": url, "nats_user": user, "nats_password": PASSWORDS[user]}
    if user.startswith("runner-"):
        nats_settings |= {"nats_inbox_prefix": inbox_prefix(user), "nats_js_api_prefix": JS_API}
    return Settings.model_validate({"namespace": "orch", **nats_settings, **more})


class Client:
    """A nats-py client as one of nats.conf's users, collecting what the server reports."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.errors: list[str] = []
        self._reported = asyncio.Event()

    async def connect(self, url: str) -> Client:
        self.nc = await nats.connect(
            url,
            user=self.user,
            password=PASSWORDS[self.user],
            inbox_prefix=inbox_prefix(self.user),
            error_cb=self._error,
            allow_reconnect=False,
        )
        return self

    async def _error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._reported.set()

    async def refused(self, verb: str, subject: str, timeout: float = 5.0) -> None:
        """Wait for the server's permissions violation for `verb` (Publish, Subscription) to `subject`."""
        wanted = f'permissions violation for {verb} to "{subject}"'.lower()  # nats-py lowercases it
        async with asyncio.timeout(timeout):
            while not any(wanted in error for error in self.errors):
                self._reported.clear()
                await self._reported.wait()

    async def settle(self) -> None:
        """Once a message to its own inbox is back, the server has every SUB it sent before."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        await self.nc.publish(inbox, b"")
        await sub.next_msg(timeout=5)

    async def heard(self, subject: str) -> list[Msg]:
        """Every message on `subject` from now on (the list fills as they come)."""
        got: list[Msg] = []

        async def on(msg: Msg) -> None:
            got.append(msg)

        await self.nc.subscribe(subject, cb=on)
        return got

    async def answer(self, subject: str, reply: bytes) -> list[Msg]:
        """Answer every request on `subject` with `reply`; the requests, as they come."""
        got: list[Msg] = []

        async def on(msg: Msg) -> None:
            got.append(msg)
            await msg.respond(reply)

        await self.nc.subscribe(subject, cb=on)
        return got


def arrived(messages: list[Msg]) -> Callable[[], Awaitable[list[Msg]]]:
    """A probe for `eventually`: the messages, once there is one."""

    async def probe() -> list[Msg]:
        return messages

    return probe


def runner_process(url: str, log_dir: Path) -> ServiceProcess:
    """`orchestrator runner` as compose's runner-1 runs it: its NATS user, inbox and API prefix
    from the environment, and a small log cap (so a long output is trimmed: deletes) that gives
    up storing quickly (so a refused store shows as missing output, not as a slow test)."""
    env = {
        **FAST_FAILURE_ENV,
        "ORCH_NATS_URL": url,
        "ORCH_NATS_USER": "runner-1",
        "ORCH_NATS_PASSWORD": PASSWORDS["runner-1"],
        "ORCH_NATS_INBOX_PREFIX": inbox_prefix("runner-1"),
        "ORCH_NATS_JS_API_PREFIX": JS_API,
        "ORCH_LOG_MAX_BYTES": str(128 * 1024),
        "ORCH_LOG_SHIP_TIMEOUT_S": "5",
    }
    args = ["runner", "--id", "runner-1", "--pool", "default", "--labels", "linux,x86_64", "--slots", "2"]
    proc = ServiceProcess("runner-1", [], env, log_dir, args=args, ready_text="runner runner-1 serving")
    for var in ("ORCH_DATABASE_URL", "ORCH_NAMESPACE", "ORCH_NATS_TOKEN", "ORCH_NATS_CREDS_FILE"):
        proc.env.pop(var, None)  # a runner in compose has none of these
    return proc
