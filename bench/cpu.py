"""CPU time (user + system) of the processes a run is made of, from /proc (Linux only; elsewhere
every figure is None), for "CPU per job": what a job costs the whole machine, not only us.

A kind of process ("python", "nats", "postgres", "node") is a sampler: a function giving
{pid: CPU seconds so far} for its processes now. Postgres forks a backend per connection, and a
backend that exits during the run takes its time with it; the postmaster reaps it, so the
postmaster's own figure includes its reaped children's (cutime + cstime) and nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Sampler = Callable[[], dict[int, float]]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, reaped_children: bool = False) -> float | None:
    """utime + stime of `pid` (plus its reaped children's), or None when it is gone or there is
    no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    # Field 3 (state) is fields[0]: utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def available() -> bool:
    return cpu_seconds(os.getpid()) is not None


def process(pid: int | None) -> Sampler:
    """One process, its threads included (this one's: `process(os.getpid())`)."""

    def sample() -> dict[int, float]:
        seconds = cpu_seconds(pid) if pid is not None else None
        return {} if pid is None or seconds is None else {pid: seconds}

    return sample


def postgres(pids: Callable[[], list[int]]) -> Sampler:
    """A Postgres server from `pids()`: the postmaster first (with what it reaped), then its
    children alive now (`EmbeddedPostgres.pids`)."""

    def sample() -> dict[int, float]:
        found = pids()
        out = {}
        for i, pid in enumerate(found):
            seconds = cpu_seconds(pid, reaped_children=i == 0)
            if seconds is not None:
                out[pid] = seconds
        return out

    return sample


class Meter:
    """CPU used by each kind of process between `start()` and `stop()`."""

    def __init__(self, kinds: dict[str, Sampler]) -> None:
        self.kinds = kinds
        self._before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self._before = {kind: sample() for kind, sample in self.kinds.items()}

    def stop(self) -> dict[str, float]:
        """Seconds used per kind. A process born meanwhile counts from zero."""
        used = {}
        for kind, sample in self.kinds.items():
            before, after = self._before.get(kind, {}), sample()
            used[kind] = sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())
        return used


def per_job(used: dict[str, float], jobs: int, complete: bool = True) -> dict[str, object]:
    """`cpu_ms_per_job` (None unless every process of the run was measured: `complete`, and
    /proc there) and its split by kind of process."""
    if not available() or jobs <= 0:
        return {"cpu_ms_per_job": None, "cpu_ms_per_job_by_process": None}
    split = {kind: round(seconds * 1000 / jobs, 4) for kind, seconds in used.items()}
    total = round(sum(used.values()) * 1000 / jobs, 4) if complete else None
    return {"cpu_ms_per_job": total, "cpu_ms_per_job_by_process": split}
