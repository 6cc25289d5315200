"""The runner's own fence, on its own clock: at half the TTL after the last heartbeat capacity
answered, it kills its jobs, well before capacity (a full TTL after the last heartbeat it
received) can give them to another runner. No job runs on two at once. Until a heartbeat is
answered again the runner takes no job (`silent`), and a job held across such a silence is not
its to report (`fenced`): it may have been killed by the fence or the watchdog."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from orchestrator.clock import Clock
from services.runner.job_process import Held
from services.runner.watchdog import Watchdog


class Liveness:
    """What the runner knows of its own heartbeats' answers: `acknowledged()` at each one, and
    `kill(why)` (every job, at once) when the silence lasted half the TTL (`watch()`)."""

    def __init__(self, ttl_s: float, clock: Clock, watchdog: Watchdog, kill: Callable[[str], None]) -> None:
        self._ttl_half = ttl_s / 2
        self.clock = clock
        self._watchdog = watchdog
        self._kill = kill
        # `acked_seq`: the newest heartbeat answered; `_acked_at`: when (monotonic), for the fence.
        self.acked_seq = 0
        self._acked_at = clock.monotonic()
        # When the latest silence long enough to be fenced ended (monotonic): a job held across
        # it may have been killed by the fence or the watchdog, and is not this runner's to report.
        self._silence_ended = float("-inf")
        self._answered = asyncio.Event()  # a heartbeat was answered (wakes the watch)

    def acknowledged(self, seq: int | None = None) -> None:
        # A job held across a silence long enough may have been fenced: not reported, it is
        # released and runs again; reported, a job the watchdog killed would end `failed`.
        if self.silent():
            self._silence_ended = self.clock.monotonic()
        self._acked_at = self.clock.monotonic()
        self._answered.set()
        self._watchdog.ack()
        if seq is not None:
            self.acked_seq = seq

    async def watch(self) -> None:
        """Kill the jobs once per silence of half the TTL (see the module note)."""
        fenced_after = None  # the answered heartbeat whose silence was fenced
        while True:
            acked_at = self._acked_at
            wait = acked_at + self._ttl_half - self.clock.monotonic()
            if wait <= 0 and fenced_after != acked_at:
                self._kill(f"no heartbeat answered for {self.clock.monotonic() - acked_at:.1f}s")
                fenced_after = acked_at
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), wait if wait > 0 else None)

    def silent(self) -> bool:
        """No heartbeat answered for long enough to be fenced (the watchdog measures the same
        silence on its own clock: err towards "fenced")."""
        return self.clock.monotonic() - self._acked_at >= 0.9 * self._ttl_half

    def fenced(self, job: Held) -> bool:
        """Whether `job` may have been killed by the fence or the watchdog: a silence long enough
        is under way, or ended while the runner held it."""
        return self.silent() or job.since < self._silence_ended
