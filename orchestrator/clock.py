"""The clock services read time from, so a test can move it instead of waiting for it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for durations and deadlines in this process."""
        ...

    def time(self) -> float:
        """Seconds since the epoch: for times other processes stamped or will compare."""
        ...


class SystemClock:
    """The real clocks of `time`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
