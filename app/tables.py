"""Aligned columns for people, as `docker ps` and `kubectl get` print them: a header in capitals,
then a row per item, each column as wide as its widest cell, two spaces between.

Written here rather than taken from a library: this is all of it, and the CLI's start-up stays
free of a table library's import (tabulate, rich) for output this plain."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

NONE = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[h.upper() for h in headers]] + [[NONE if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def duration(seconds: float | None) -> str:
    """3s, 4m, 2h, 5d: the unit that says it in the fewest digits."""
    if seconds is None:
        return NONE
    s = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def age(at: datetime | None, now: datetime | None = None) -> str:
    return NONE if at is None else duration(((now or datetime.now(UTC)) - at).total_seconds())


def when(at: datetime | None) -> str | None:
    """A moment in UTC, to the second."""
    return None if at is None else f"{at:%Y-%m-%d %H:%M:%S}Z"


def cap(n: int) -> str:
    return "unlimited" if n < 0 else str(n)


def words(items: Iterable[str]) -> str:
    return ",".join(items)


def command_line(argv: object, width: int = 40) -> str:
    """A job's command as a shell would show it, cut to `width`."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "(reservation)"  # no command: a slot held for a take client
    line = shlex.join(argv)
    return line if len(line) <= width else line[: width - 3] + "..."
