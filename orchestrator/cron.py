"""Fire times of a schedule: its cron expression in its time zone, read by `cronsim` (the parser
Healthchecks runs, which matches Debian's cron, DST included), and which of the times due now
to fire after a gap (`catch_up`). Pure: the caller says what time it is, so tests move a clock
instead of waiting.

Time zones and DST, as Debian's cron (and so cronsim) has them, for expressions that name a
time of day (not every minute or hour):
- a time in a spring-forward gap (02:30 on Europe/Berlin's 2026-03-29) fires at the first
  instant after the gap (03:00 CEST), once;
- a time in a fall-back repeat (02:30 on Europe/Berlin's 2026-10-25, which happens twice) fires
  once, at its first occurrence (02:30 CEST).
Expressions that fire every hour or more often run on the real clock: each of their minutes
that exists, once per time it happens.

A schedule's times are computed from the last time it handled (fired or skipped), never from
now, so a late or restarted scheduler neither skips a time nor fires one twice; what it does with
the times it missed is `catch_up`:
- `none`: none of them; the latest fires only if it is at most `on_time_s` late (a timer's or a
  failover's lateness, not an outage's);
- `latest`: the latest of them, once;
- `all`: each of them, oldest first, up to `MAX_CATCH_UP` (the most recent ones).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

CatchUp = Literal["none", "latest", "all"]
# `catch_up: all` fires at most this many missed times (the most recent), as Kubernetes CronJob
# gives up at 100 missed schedules; the rest are skipped and counted.
MAX_CATCH_UP = 100
# Times counted through in one pass when looking for the ones due: a schedule firing every
# second that was stopped for a day has 86,400. Past this many, the older ones are only counted
# as missed, in bulk, not one by one.
_SCAN = 10_000


class BadCron(ValueError):
    """A cron expression or time zone that cannot be used: `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Cron:
    expression: str
    timezone: ZoneInfo

    @classmethod
    def parse(cls, expression: str, timezone: str) -> Cron:
        """The schedule, or BadCron naming the field: an unknown zone, an expression cronsim
        refuses, or one that never fires."""
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadCron("timezone", f"{timezone[:64]!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        cron = cls(expression, zone)
        try:
            first = next(cron.after(datetime.now(UTC)), None)
        except CronSimError as exc:
            raise BadCron("cron", f"{expression[:64]!r} is not a cron expression: {exc}") from None
        if first is None:
            raise BadCron("cron", f"{expression[:64]!r} never fires (not within 50 years)")
        return cron

    def after(self, t: datetime) -> Iterator[datetime]:
        """Fire times strictly after `t`, in UTC, oldest first (fire times are whole seconds:
        those after `t`'s whole second are those after `t`)."""
        start = t.astimezone(self.timezone).replace(microsecond=0)
        for at in CronSim(self.expression, start):
            yield at.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime | None:
        return next(self.after(t), None)

    def explain(self) -> str:
        return CronSim(self.expression, datetime.now(UTC).astimezone(self.timezone)).explain()


@dataclass(frozen=True)
class Plan:
    """What to do with the times due: `fire` them (oldest first), count `missed` others (skipped),
    and treat every time up to `through` as handled (None: nothing was due)."""

    fire: list[datetime]
    missed: int
    through: datetime | None


def plan(cron: Cron, handled: datetime, now: datetime, catch_up: CatchUp, on_time_s: float) -> Plan:
    """The times after `handled` and up to `now`, and what `catch_up` does with them. `missed`
    is exact up to `_SCAN` times in a gap; past that a lower bound (the rest are not gone
    through one by one)."""
    keep = MAX_CATCH_UP if catch_up == "all" else 1
    due, missed = _latest_due(cron, handled, now, keep)
    if not due:
        return Plan([], 0, None)
    latest = due[-1]
    if catch_up == "none" and (now - latest).total_seconds() > on_time_s:
        return Plan([], missed + len(due), latest)
    return Plan(due, missed, latest)


def _latest_due(cron: Cron, handled: datetime, now: datetime, keep: int) -> tuple[list[datetime], int]:
    """The `keep` latest fire times in (handled, now], and how many before them."""
    start, skipped = handled, 0
    while True:
        kept: deque[datetime] = deque(maxlen=keep)
        seen = 0
        for at in cron.after(start):
            if at > now:
                return list(kept), skipped + seen - len(kept)
            seen += 1
            kept.append(at)
            if seen > _SCAN:
                break
        # Too many to go through: count this stretch as missed and look at the later half.
        skipped += seen
        start = max(kept[-1], start + (now - start) / 2)
