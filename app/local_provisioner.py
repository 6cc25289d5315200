"""`local`: the bundled provisioner, a one-shot runner process per job on this machine, forked
from a fork server that has already imported what a worker runs."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path

from app.main_loop import run, setup_logging
from app.runner_agent import RunnerOptions, serve_runner
from orchestrator import telemetry
from orchestrator.errors import OrchestratorError
from orchestrator.provisioning import ProvisionerContext, WorkerRequest
from orchestrator.settings import Settings

_log = telemetry.get_logger("provisioning")

# What a local worker imports (this module imports the runner agent, the bus and the runner
# service), loaded once into the fork server: a worker forked from it starts in milliseconds
# instead of spending ~1 s of CPU importing them itself.
WORKER_MODULES = ["app.local_provisioner"]
# A local worker's name in the process table (`ps`, `top`, /proc/<pid>/comm).
WORKER_NAME = "orch-worker"
# Workers' log files older than the retention are deleted at a spawn, at most this often.
LOG_PRUNE_INTERVAL_S = 60.0
_FORK_SERVER = multiprocessing.get_context("forkserver")


def prune_logs(folder: Path, older_than_s: float, keep: Iterable[str] = (), now: float | None = None) -> int:
    """Delete the worker logs (`<runner id>.log`) in `folder` last written over `older_than_s`
    ago, except those of the workers named in `keep` (live ones); how many were deleted."""
    cutoff = (time.time() if now is None else now) - older_than_s
    spared = {f"{worker}.log" for worker in keep}
    deleted = 0
    for path in folder.glob("*.log"):
        try:
            if path.name not in spared and path.stat().st_mtime < cutoff:
                path.unlink()
                deleted += 1
        except FileNotFoundError:  # another process pruned it first
            continue
    return deleted


def _worker_main(options: RunnerOptions, env: dict[str, str], log_path: str) -> None:
    """A local worker, in the process the fork server made for it: its environment, its log and
    its name, then a one-shot runner agent."""
    os.environ.update(env)
    # A job's output may hold its secrets: the worker's own user only (the data dir is searchable
    # by all when the embedded Postgres runs as another user).
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    with contextlib.suppress(OSError):  # Linux only; elsewhere it keeps the server's name
        Path("/proc/self/comm").write_text(WORKER_NAME)
    try:
        settings = Settings.from_env()
        setup_logging(settings)
        code = run(serve_runner(settings, options))
    except OrchestratorError as exc:
        _log.error("worker %s cannot serve: %s", options.runner_id, exc)
        code = 2
    finally:
        telemetry.shutdown()  # a forked process ends without running exit handlers
    sys.exit(code)


class LocalProvisioner:
    """A one-shot runner process per job, on this machine (as `orchestrator runner --once`).

    Workers are forked from a fork server (`multiprocessing`'s, started on the first spawn) that
    has already imported what a worker runs, so the fleet turns over at the pace of its jobs,
    not of Python's start-up. They are this process's to count: the live ones are those whose
    exit the fork server has not reported yet. Output goes to `<data dir>/workers/<id>.log`,
    deleted once older than the retention (looked at on a spawn, at most once a minute: only a
    spawn adds a file)."""

    def __init__(self, ctx: ProvisionerContext, *, idle_timeout_s: float = 60.0) -> None:
        self.ctx = ctx
        self.idle_timeout_s = idle_timeout_s
        self._procs: dict[str, tuple[BaseProcess, asyncio.Future[None]]] = {}
        self._pruned_at: float | None = None  # monotonic

    async def spawn(self, request: WorkerRequest) -> str:
        logs = self.ctx.data_dir / "workers"
        await asyncio.to_thread(logs.mkdir, mode=0o700, parents=True, exist_ok=True)
        await self._prune_logs(logs)
        # Once per process, off the loop: starting the server imports WORKER_MODULES (~1 s).
        await asyncio.to_thread(_start_fork_server)
        options = RunnerOptions(
            runner_id=request.runner_id,
            pool=request.pool,
            labels=request.labels,
            slots=1,
            once=True,
            idle_timeout_s=self.idle_timeout_s,
        )
        env = {**self.ctx.env, "ORCH_NATS_URL": self.ctx.nats_url, "ORCH_NAMESPACE": self.ctx.namespace}
        log = str(logs / f"{request.runner_id}.log")
        proc = _FORK_SERVER.Process(target=_worker_main, args=(options, env, log), name=request.runner_id, daemon=True)
        proc.start()  # a round trip to the running server (it forks and answers the pid)
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        self._procs[request.runner_id] = (proc, exited)
        loop.add_reader(proc.sentinel, self._exited, request.runner_id)
        return request.runner_id

    async def _prune_logs(self, logs: Path) -> None:
        if self._pruned_at is not None and time.monotonic() - self._pruned_at < LOG_PRUNE_INTERVAL_S:
            return
        self._pruned_at = time.monotonic()
        try:
            deleted = await asyncio.to_thread(prune_logs, logs, self.ctx.retention_s, list(self._procs))
        except OSError as exc:  # a log kept longer is no reason to fail a spawn
            _log.warning("pruning worker logs in %s failed: %s", logs, exc)
            return
        if deleted:
            _log.info("deleted %d worker logs older than %g s", deleted, self.ctx.retention_s)

    def _exited(self, worker: str) -> None:
        """The fork server reported the worker's exit on its sentinel: it is no longer live."""
        proc, exited = self._procs.pop(worker)
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        proc.join(0)  # reads the exit code the server sent
        if proc.exitcode:
            _log.warning("worker %s exited with %s", worker, proc.exitcode)
        proc.close()
        exited.set_result(None)
        self.ctx.worker_exited(worker)

    async def count_live(self) -> int:
        return len(self._procs)

    async def stop(self, worker: str) -> None:
        held = self._procs.get(worker)
        if held is not None:
            held[0].terminate()  # SIGTERM: the runner drains, its job gets the stop timeout
            await asyncio.shield(held[1])

    async def close(self) -> None:
        """Stop every worker this process started."""
        await asyncio.gather(*(self.stop(worker) for worker in list(self._procs)))


def _start_fork_server() -> None:
    _FORK_SERVER.set_forkserver_preload(WORKER_MODULES)  # only read when the server starts
    forkserver.ensure_running()
