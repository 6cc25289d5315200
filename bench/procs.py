"""Services as real OS processes of the `orchestrator` CLI, for failover tests and benchmarks.

Each process logs to its own file; readiness is the runtime's "serving ..." line, polled with a
deadline (a pipe nobody reads would block the child).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.settings import Settings


def service_env(settings: Settings) -> dict[str, str]:
    """What a service process needs to join the servers and namespace of `settings`."""
    return {
        "ORCH_NATS_URL": settings.nats_url or "",
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_NAMESPACE": settings.namespace,
        # Thousands of jobs a second: a log line per transition would cost more CPU than the job.
        "ORCH_LOG_TRANSITIONS": "debug",
    }


class ServiceProcess:
    def __init__(
        self,
        instance_id: str,
        services: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        args: list[str] | None = None,
        ready_text: str | None = None,
        own_group: bool = False,
    ) -> None:
        """`args` replace `serve <services>` (e.g. `runner --id ...`); `ready_text` is then the
        log line that means ready. `own_group`: it leads a process group of its own, which
        `signal_group` signals whole, as a terminal's Ctrl-C does its foreground group."""
        self.instance_id = instance_id
        self.services = services
        self.args = args or ["serve", *services]
        self.ready_text = ready_text or f"as {instance_id}"
        self.env = {**os.environ, **env, "ORCH_INSTANCE_ID": instance_id}
        self.log_path = log_dir / f"{instance_id}.log"
        self.own_group = own_group
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0  # where the current run's output starts: a restart appends to the log

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                process_group=0 if self.own_group else None,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _this_run(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ready_text not in self._this_run():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.instance_id} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.instance_id} not serving after {timeout}s:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def signal_group(self, sig: signal.Signals) -> None:
        """`sig` to every process of its group (it and the children that stayed in it)."""
        assert self.own_group, "only a process started with own_group leads a group of its own"
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.instance_id} still running after {timeout}s")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def close(self) -> None:
        """Stop it whatever state it is in (a SIGSTOPped process needs SIGCONT to die gracefully)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            await self.wait_exit(10)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.wait_exit(5)


async def start_all(procs: list[ServiceProcess], timeout: float = 60.0) -> None:
    """Start them all at once, then wait until every one is ready."""
    for proc in procs:
        proc.start()
    await asyncio.gather(*(proc.ready(timeout=timeout) for proc in procs))


@contextlib.asynccontextmanager
async def running(procs: list[ServiceProcess], timeout: float = 60.0) -> AsyncIterator[list[ServiceProcess]]:
    """`start_all`, and every one closed on the way out, whatever happened (one that failed to
    start included)."""
    try:
        await start_all(procs, timeout)
        yield procs
    finally:
        await asyncio.gather(*(proc.close() for proc in procs))
