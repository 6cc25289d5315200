"""A job's process: run `payload.command` in a session of its own, with its env and cwd, until it
exits, times out or is cancelled; stop it SIGTERM first, then SIGKILL to the whole group.

The process dies with its runner (PR_SET_PDEATHSIG), and the runner's watchdog kills it when the
runner stops answering for itself; the runner's credentials never reach it (`SECRET_ENV`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from orchestrator.settings import secret_env_names
from schemas.events import JobAssigned
from schemas.jobs import JobState
from services.runner.job_output import JobOutput, pump_until
from services.runner.watchdog import Watchdog

Outcome = tuple[JobState, int | None, str | None]


# prctl(2): "signal me when my parent dies". Looked up here, in the parent: the forked child of a
# threaded process must not take the loader's lock (dlsym), which another thread may have held.
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_SIGKILL = int(signal.SIGKILL)


def _dies_with(parent: int) -> Callable[[], None] | None:
    """For the job's child process: SIGKILL it when the runner dies, however it dies.

    A job runs in a session of its own (so a timeout or cancel kills its whole group), and a
    session outlives its parent: a runner killed by SIGKILL or the OOM killer, or crashed, would
    leave its jobs running while capacity hands them to another runner, and a job would run on two
    runners at once. The runner's own fence covers a live runner cut off from NATS; this covers a
    dead one. The kernel signals on the death of the thread that forked, here the event loop's.
    Only the direct child is covered: a shell wrapper should `exec` its last command.
    """
    if _prctl is None:
        return None

    def arm() -> None:
        _prctl(_PR_SET_PDEATHSIG, _SIGKILL)
        if os.getppid() != parent:  # the runner died before the prctl: nobody will signal us
            os._exit(137)

    return arm


# The runner's own credentials are not its jobs' business: a job's command is any code at all.
# Everything else in the runner's environment (PATH, HOME, ORCH_URL ...) is passed on. The
# settings say which of their variables hold secrets; `ORCH_TOKEN` is the CLI's, not a setting.
SECRET_ENV = secret_env_names() | {"ORCH_TOKEN"}


class Held:
    """A job a runner holds, from its ack until its end is reported (or it is dropped)."""

    def __init__(self, event: JobAssigned, *, since: float) -> None:
        self.event = event
        self.task: asyncio.Task[None] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Future[int] | None = None  # the process's exit status, once it exits
        self.cancelled = asyncio.Event()
        # The command has ended and its slot is free; the report may still be on its way.
        self.ended = False
        self.since = since  # held since (the runner's monotonic clock)


async def run(
    job: Held, runner_id: str, kill_grace_s: float, watchdog: Watchdog, output: JobOutput | None = None
) -> Outcome:
    """Run the job's `payload.command` (or hold a reservation) until it ends, times out or is
    cancelled; its stdout and stderr go to `output` (none: discarded), complete before this
    returns."""
    payload: dict[str, Any] = job.event.payload
    command = payload.get("command")
    timeout = job.event.timeout_s
    if command is None:  # a reservation: hold the slot until cancelled or timed out
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await job.cancelled.wait()
        return (
            (JobState.cancelled, None, "cancelled")
            if job.cancelled.is_set()
            else (JobState.timed_out, None, f"reservation held past timeout_s={timeout}")
        )
    if output is None:
        return await _command(job, command, runner_id, kill_grace_s, watchdog, None)
    await output.open()
    try:
        outcome = await _command(job, command, runner_id, kill_grace_s, watchdog, output)
        await output.close()
    except BaseException:
        output.abort()
        raise
    return outcome


async def _command(
    job: Held, command: Any, runner_id: str, kill_grace_s: float, watchdog: Watchdog, output: JobOutput | None
) -> Outcome:
    payload: dict[str, Any] = job.event.payload
    if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
        return await _failed(output, "payload.command must be a non-empty list of strings")
    env = {
        **{k: v for k, v in os.environ.items() if k not in SECRET_ENV},
        **{str(k): str(v) for k, v in (payload.get("env") or {}).items()},
        # Which execution this is, for the command's own logs (and the chaos suite's checker).
        "ORCH_JOB_ID": str(job.event.job_id),
        "ORCH_JOB_ATTEMPT": str(job.event.attempt),
        "ORCH_RUNNER_ID": runner_id,
    }
    try:
        job.proc, job.exited = await spawn(
            command,
            env=env,
            cwd=payload.get("cwd"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL if output is None else asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL if output is None else asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_dies_with(os.getpid()),
        )
    except OSError as exc:
        return await _failed(output, _cannot_start(command[0], payload.get("cwd"), exc))
    pumps = []
    if output is not None:
        assert job.proc.stdout is not None and job.proc.stderr is not None
        pumps = [
            asyncio.create_task(output.pump("stdout", job.proc.stdout)),
            asyncio.create_task(output.pump("stderr", job.proc.stderr)),
        ]
    await watchdog.watch(job.proc.pid)
    try:
        outcome = await _wait(job, job.event.timeout_s, kill_grace_s)
    except BaseException:
        for pump in pumps:
            pump.cancel()
        raise
    finally:
        watchdog.unwatch(job.proc.pid)
    # What the job left running in its session is stopped, as CI runners do: SIGTERM now, and
    # SIGKILL once its output has drained (or DRAIN_AFTER_EXIT_S has passed).
    signal_group(job.proc, signal.SIGTERM)
    try:
        if output is not None:
            await pump_until(output, pumps)
    finally:  # also when the runner drops the job meanwhile
        for pump in pumps:
            pump.cancel()
        signal_group(job.proc, signal.SIGKILL)
    return outcome


def _cannot_start(program: str, cwd: str | None, exc: OSError) -> str:
    """Why the command could not start. A missing cwd fails the spawn with the same ENOENT as a
    missing program, so it is told apart here: the job's reason must name what is missing."""
    if cwd is not None and not os.path.isdir(cwd):
        why = "does not exist" if not os.path.exists(cwd) else "is not a directory"
        return f"cannot start {program!r}: its cwd {cwd!r} {why}"
    return f"cannot start {program!r}: {exc.strerror or exc}"


async def _failed(output: JobOutput | None, reason: str) -> Outcome:
    """The command could not run: the reason is the job's, and its log says it too."""
    if output is not None:
        await output.note(f"[orchestrator: {reason}]\n")
    return JobState.failed, None, reason


async def _wait(job: Held, timeout: float | None, kill_grace_s: float) -> Outcome:
    """The end of the job's process: its exit, its timeout, or its cancel."""
    assert job.proc is not None and job.exited is not None
    exited = job.exited
    cancelled = asyncio.ensure_future(job.cancelled.wait())
    try:
        await asyncio.wait({exited, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if not exited.done():
        await terminate(job.proc, exited, kill_grace_s)
        if job.cancelled.is_set():
            return JobState.cancelled, exited.result(), "cancelled"
        return JobState.timed_out, None, f"stopped after timeout_s={timeout}"
    code = exited.result()
    if job.cancelled.is_set():
        return JobState.cancelled, code, "cancelled"
    return (JobState.succeeded if code == 0 else JobState.failed), code, None


async def terminate(proc: asyncio.subprocess.Process, exited: asyncio.Future[int], kill_grace_s: float) -> None:
    """SIGTERM to the job's process group, so its cleanup traps run; SIGKILL to the group
    when its leader has exited or the kill grace has passed, so no grandchild survives."""
    signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(exited), kill_grace_s)
    signal_group(proc, signal.SIGKILL)
    await exited


class _Process(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol for a process with pipes, plus `exited`: its exit status, as soon
    as it exits. Python 3.11's `Process.wait()` waits for stdout and stderr to close as well, so
    a background child holding them would hold the job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[int] = loop.create_future()
        self._process: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._process = transport  # type: ignore[assignment]  # uvloop's is not a registered subclass
        super().connection_made(transport)

    def process_exited(self) -> None:
        super().process_exited()
        assert self._process is not None
        code = self._process.get_returncode()
        if not self.exited.done() and code is not None:
            self.exited.set_result(code)


async def spawn(command: list[str], **options: Any) -> tuple[asyncio.subprocess.Process, asyncio.Future[int]]:
    """`asyncio.create_subprocess_exec`, and a future of the exit status (see `_Process`)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(lambda: _Process(loop), *command, **options)
    return asyncio.subprocess.Process(transport, protocol, loop), protocol.exited


def signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # The command may have children (a shell script): signal its whole session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
