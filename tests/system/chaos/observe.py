"""What the chaos run watches besides the recorded history: in-flight per pool against its cap,
sampled from Postgres while the faults go on (the history shows only what was committed), and
job processes still alive once every job ended (what no table shows)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import asyncpg

IN_FLIGHT_SQL = """
SELECT p.name, p.max_concurrent, count(j.id) AS in_flight
FROM pools p LEFT JOIN jobs j ON j.pool = p.name AND j.state IN ('assigned', 'running')
GROUP BY p.name, p.max_concurrent
"""


async def fetch(dsn: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def sample_in_flight(dsn: str, peak: dict[str, int], over_cap: list[str], stop: asyncio.Event) -> None:
    """In-flight per pool against its cap, from Postgres, every 50 ms (while it is up): the peak
    per pool into `peak`, each sample past the cap into `over_cap`."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            conn = conn if conn is not None and not conn.is_closed() else await asyncpg.connect(dsn)
            rows = await conn.fetch(IN_FLIGHT_SQL)
            for r in rows:
                peak[r["name"]] = max(peak.get(r["name"], 0), r["in_flight"])
                if 0 <= r["max_concurrent"] < r["in_flight"]:
                    over_cap.append(f"{r['name']}: {r['in_flight']} in flight")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError):
            conn = None  # Postgres is restarting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    if conn is not None:
        await conn.close()


def orphans(job: Path, exec_log: Path) -> list[str]:
    """Processes of `job` logging to `exec_log` still alive once every job has ended: a stuck or
    fenced job left running."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if str(job).encode() in args and str(exec_log).encode() in args:
                found.append(f"pid {cmdline.parent.name} still runs {b' '.join(args[-3:]).decode()}")
    return found
