"""The runner's dead man's switch: a tiny process of its own that kills the runner's jobs when the
runner stops acknowledging heartbeats, even if the runner itself is hung or paused.

A job runs in a process group of its own, so it outlives a stalled runner: a runner stopped
(SIGSTOP, a stuck event loop, a debugger) past its TTL is declared lost and its jobs are given
to other runners, while its own jobs would keep running, and a job would run twice at once. The
runner's own fence (at half the TTL after its last answered heartbeat) cannot run while the
runner is stopped; this process can. It is the runner's child, started with the first job's
process, and reads lines on its stdin:

    ack        a heartbeat was answered (the runner is alive and not fenced)
    add <pgid> a job's process group to kill on fence
    del <pgid> that job has ended

When no `ack` came for `fence_after_s` (argv[1]), it SIGKILLs every group it knows and forgets
them; when its stdin closes (the runner exited, however it died) it does the same and exits.
It imports only the standard library and is run with `python -I -S` (fast to start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
import time


def _kill(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    groups.clear()


def main(fence_after_s: float) -> None:
    groups: set[int] = set()
    last_ack = time.monotonic()
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:  # the runner is gone: so are its jobs
                _kill(groups)
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                verb, _, arg = line.partition(b" ")
                if verb == b"ack":
                    last_ack = time.monotonic()
                elif verb == b"add":
                    groups.add(int(arg))
                elif verb == b"del":
                    groups.discard(int(arg))
        if groups and time.monotonic() - last_ack > fence_after_s:
            _kill(groups)


class Watchdog:
    """The runner's side: starts the watchdog (again if it died), tells it what to watch."""

    def __init__(self, fence_after_s: float) -> None:
        self.fence_after_s = fence_after_s
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                __file__,
                str(self.fence_after_s),
                stdin=asyncio.subprocess.PIPE,
                start_new_session=True,  # a stop of the runner's process group must not stop it too
            )

    async def watch(self, pgid: int) -> None:
        await self.start()
        self._send(f"add {pgid}")

    def unwatch(self, pgid: int) -> None:
        self._send(f"del {pgid}")

    def ack(self) -> None:
        self._send("ack")

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is not None and not stdin.is_closing():
            stdin.write(line.encode() + b"\n")

    async def close(self) -> None:
        """Stop it (it kills what it still watches: call once the jobs are gone)."""
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
            await self._proc.wait()


if __name__ == "__main__":
    main(float(sys.argv[1]))
